"""Write the hatched-walls pairs for `experiments/hatched_walls_pix2pix.yaml` with the procedural
renderer of `pilot.data.walls`: a training set (seed 0) and a held-out set (seed 1).

    python -m experiments.walls_data --size 128 --count 3000 --val-count 100
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from pilot.data.walls import write_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/data/walls128"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--val-count", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    write_pairs(args.out, args.count, args.size, seed=0)
    val = args.out.with_name(args.out.name + "_val")
    write_pairs(val, args.val_count, args.size, seed=1)
    print(
        f"wrote {args.count} pairs to {args.out} and {args.val_count} to {val} "
        f"in {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
