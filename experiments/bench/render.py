"""Walls pair throughput: procedural renders per second, in memory and written to disk.

    OMP_WAIT_POLICY=PASSIVE python -m experiments.bench.render   # 256x256, 64 pairs per timing
    python -m experiments.bench.render --write-n 2000        # also time a 2000-pair write
    python -m experiments.bench.render --device cuda --threads 8

Times `render_pairs` (scene sampling + ray casting + shading, every pass) with 1 and with 2
torch threads, interleaved over several rounds so load from other programs on a shared machine
hits both alike; prints median and best round, the process CPU seconds per pair (a figure the
load barely moves), and the load average before and after. `--write-n` then times one
`write_pairs` run (PNG files + manifest, `--workers` processes, spawn time included). On a
shared machine keep OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads otherwise lose ~10x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from experiments.bench.common import count, device_name, format_table
from pilot.data.walls import render_pairs, write_pairs

# Options `python -m experiments.bench` passes on to this benchmark (--threads N: N only).
SHARED_OPTIONS = ("size", "device", "threads")


def _time(fn, threads: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call with `threads` torch threads."""
    torch.set_num_threads(threads)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> None:
    """Parse arguments, time the paths round by round, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n", type=int, default=64, help="pairs per timed render call")
    parser.add_argument("--batch", type=int, default=16, help="scenes rendered together")
    parser.add_argument("--rounds", type=count, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--write-n", type=int, default=0, help="pairs for the write timing")
    parser.add_argument("--workers", type=int, default=2, help="write_pairs processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]

    def run():
        render_pairs(args.n, args.size, seed=0, batch=args.batch, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    _time(run, args.threads[0])  # warm-up
    times = {t: [] for t in args.threads}
    for _ in range(args.rounds):
        for t in args.threads:
            times[t].append(_time(run, t))
    rows = []
    for t, ts in times.items():
        walls = [w for w, _ in ts]
        cpu_ms = statistics.median(c for _, c in ts) / args.n * 1e3
        rate, best = args.n / statistics.median(walls), args.n / min(walls)
        rows.append([f"render_pairs, {t} thread(s)", f"{rate:.1f}", f"{best:.1f}", f"{cpu_ms:.0f}"])
    if args.write_n:
        with tempfile.TemporaryDirectory() as tmp:
            wall = time.perf_counter()
            write_pairs(tmp, args.write_n, args.size, 0, batch=args.batch, workers=args.workers)
            rate = args.write_n / (time.perf_counter() - wall)
        rows.append([f"write_pairs {args.write_n}, {args.workers} workers", f"{rate:.1f}", "", ""])
    print(
        f"Walls pairs, {args.size}x{args.size}, {args.n} pairs per call, batch {args.batch}, "
        f"{args.rounds} rounds, {device_name(device).split(' (')[0]} ({os.cpu_count()} cores), "
        f"torch {torch.__version__}, "
        f"load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    header = ["path", "pairs/s (median)", "pairs/s (best round)", "CPU ms / pair"]
    print(format_table(header, rows))


if __name__ == "__main__":
    main()
