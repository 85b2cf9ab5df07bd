"""Walls pair throughput: procedural renders per second, in memory and written to disk.

    python -m experiments.bench.render                        # 256x256, 64 pairs per timing
    python -m experiments.bench.render --size 512 --device cuda

Times `render_pairs` (scene sampling + ray casting + shading, all passes) and `write_pairs`
(the same plus PNG encoding of hatched/textured/fog and atomic writes) interleaved over several
rounds, so load from other processes on a shared machine hits both alike. Prints the median and
the best round; the load average before and after says how busy the machine was.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch

from experiments.bench.common import device_name, format_table, time_ms
from pilot.data.walls import render_pairs, write_pairs


def main(argv=None) -> None:
    """Parse arguments, time both paths round by round, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n", type=int, default=64, help="pairs per timed call")
    parser.add_argument("--batch", type=int, default=16, help="scenes rendered together")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        fns = {
            "render_pairs (memory)": lambda: render_pairs(
                args.n, args.size, seed=0, batch=args.batch, device=device
            ),
            "write_pairs (PNG on disk)": lambda: write_pairs(
                tmp, args.n, args.size, seed=0, batch=args.batch, device=device
            ),
        }
        times: dict[str, list[float]] = {k: [] for k in fns}
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(args.rounds):
            for name, fn in fns.items():
                times[name].append(time_ms(fn, device, warmup=0, iters=1))
    rows = []
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        rows.append([name, f"{args.n / med * 1e3:.1f}", f"{args.n / best * 1e3:.1f}"])
    print(
        f"Walls pairs, {args.size}x{args.size}, {args.n} pairs per call, batch {args.batch}, "
        f"{args.rounds} rounds, {device_name(device)}, torch {torch.__version__}, "
        f"load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(format_table(["path", "pairs/s (median)", "pairs/s (best round)"], rows))


if __name__ == "__main__":
    main()
