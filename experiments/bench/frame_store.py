"""The feedback loop's frame I/O per frame, on the loop's thread: PNG writes and reads.

    python -m experiments.bench.frame_store --size 512

Each frame the loop writes frame k, reads it back (what `render` returns), reads frame k-1
(the warp's input) and its colour reference (frame 0). Rows: every read decoding its PNG and
writes on the loop's thread (the store before frames were kept in memory), frames kept in
memory, and PNGs written behind on a thread as `pilot animate` does. `--gap` seconds of sleep
stand in for each frame's sampling, which the writer thread overlaps.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from experiments.bench.common import format_table
from pilot.animation.inputs import FrameStore

SHARED_OPTIONS = ("size",)

VARIANTS = {  # name -> FrameStore options
    "PNG reads, writes on the loop": dict(keep=0, write_behind=False),
    "frames kept in memory": dict(keep=4, write_behind=False),
    "kept + written behind": dict(keep=4, write_behind=True),
}


def loop_ms(frames: torch.Tensor, gap: float, **options) -> float:
    """Mean ms per frame the loop's thread spends in the store."""
    with tempfile.TemporaryDirectory() as tmp:
        store = FrameStore(Path(tmp), **options)
        store.write(0, frames[0])
        store.flush()
        spent = 0.0
        for k in range(1, len(frames)):
            start = time.perf_counter()
            store.write(k, frames[k])
            for j in (k, k - 1, 0):  # what render returns, the warp input, the reference
                store.read(j)
            spent += time.perf_counter() - start
            time.sleep(gap)
        store.close()
    return 1e3 * spent / (len(frames) - 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--gap", type=float, default=0.1, help="seconds of sampling per frame")
    args = parser.parse_args(argv)
    frames = torch.rand(
        args.frames, 1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)
    )
    ms = {name: loop_ms(frames, args.gap, **options) for name, options in VARIANTS.items()}
    base = ms["PNG reads, writes on the loop"]
    print(f"frame store, {args.size}x{args.size} px, {args.frames - 1} frames, CPU")
    rows = [[name, f"{t:.1f}", f"{t / base:.2f}x"] for name, t in ms.items()]
    print(format_table(["variant", "ms / frame on the loop", "/ PNG reads"], rows))


if __name__ == "__main__":
    main()
