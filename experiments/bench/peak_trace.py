"""What is allocated at the peak of an SD 1.5 VAE decode on a GPU, pilot vs diffusers.

    python -m experiments.bench.peak_trace --size 512 --dtype fp16        # CUDA only

Replays the CUDA caching allocator's event trace of one decode (weights already resident) and
prints, per variant, the blocks live at the peak, grouped by the innermost Python line of the
model's code that allocated them: where a peak memory figure of `experiments.bench.vae` comes
from, and what to shrink next.
"""

from __future__ import annotations

import argparse
import collections
import copy
import re

import torch

from experiments.bench.common import DTYPES, cuda_index, format_table
from experiments.bench.vae import build_pair

# Options `python -m experiments.bench` passes on to this benchmark.
SHARED_OPTIONS = ("preset", "size", "dtype", "device")


def live_at_peak(fn, device: torch.device) -> tuple[int, list[dict]]:
    """Peak bytes allocated during `fn()` above before, and the trace entries live then."""
    index = cuda_index(device)
    torch.cuda.synchronize(device)
    memory = torch.cuda.memory
    memory._record_memory_history("all", context="alloc", stacks="python", clear_history=True)
    try:
        fn()
        torch.cuda.synchronize(device)
        trace = memory._snapshot()["device_traces"][index]
    finally:
        memory._record_memory_history(None)
    live: dict[int, dict] = {}
    held = peak = 0
    best: list[dict] = []
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            held += event["size"]
        elif event["action"] == "free_requested" and live.pop(event["addr"], None) is not None:
            held -= event["size"]
        if held > peak:
            peak, best = held, list(live.values())
    return peak, best


def origin(event: dict) -> str:
    """The innermost frame of pilot's or diffusers' model code (else the innermost frame)."""
    frames = event.get("frames") or [{"filename": "?", "line": 0, "name": "?"}]
    keep = [f for f in frames if "/pilot/" in f["filename"] or "/diffusers/" in f["filename"]]
    f = (keep or frames)[0]
    path = re.sub(r".*/(?=(?:pilot|diffusers)/)", "", f["filename"])  # from the package on
    return f"{path}:{f['line']} {f['name']}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="sd15")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda":
        parser.error("the allocator trace is CUDA's: pass a CUDA --device")
    ours, ref = build_pair(args.preset, seed=0)
    ours, ref = (m.to(device, DTYPES[args.dtype]) for m in (ours, ref))
    ours_cl = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    f = ours.cfg.downsample_factor
    z = torch.randn(1, ours.cfg.latent_channels, args.size // f, args.size // f, device=device)
    z = z.to(DTYPES[args.dtype])
    calls = {
        "diffusers eager": lambda: ref.decode(z).sample,
        "pilot eager": lambda: ours.decode(z),
        "pilot channels_last": lambda: ours_cl.decode(z),
    }
    with torch.inference_mode():
        for call in calls.values():  # warm up: cuDNN and cuBLAS state is not the decode's
            call()
        for name, call in calls.items():
            peak, live = live_at_peak(call, device)
            groups: dict[str, list[int]] = collections.defaultdict(list)
            for event in live:
                groups[origin(event)].append(event["size"])
            rows = [
                [where, str(len(sizes)), f"{sum(sizes) / 2**20:.1f}"]
                for where, sizes in sorted(groups.items(), key=lambda kv: -sum(kv[1]))
            ]
            print(f"{name}, {args.dtype}, {args.size} px: peak {peak / 2**20:.1f} MiB")
            print(format_table(["allocated at", "blocks", "MiB"], rows), end="\n\n")


if __name__ == "__main__":
    main()
