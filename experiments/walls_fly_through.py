"""A hatched fly-through shot for `pilot conditioner apply`: a procedural corridor and a smooth
camera path (`pilot.scenes.layouts.fly_through`), rendered frame by frame; writes the hatched
frames to `<out>/hatched/` and the true textured and fog passes next to them for comparison.

    python -m experiments.walls_fly_through --out runs/shots/fly --frames 48
    pilot conditioner apply --checkpoint runs/hatched_walls_pix2pix/checkpoints/last.ckpt \
        --shot runs/shots/fly --out experiments/figures/walls_fly_through.gif
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pilot.animation.video import write_frame
from pilot.scenes.layouts import fly_through
from pilot.scenes.render import render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/shots/fly"))
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    scene, path = fly_through(np.random.default_rng(args.seed))
    poses = path.poses(args.frames)  # (F, 4, 4)
    K = path.intrinsics(args.size, args.size)
    for i, c2w in enumerate(poses):
        out = render(scene, K[None], c2w[None], args.size, args.size)
        for name in ("hatched", "textured", "fog"):
            x = out[name][0].clamp(0, 1).mul(255).round().to(torch.uint8)  # (C, S, S)
            rgb = x.expand(3, -1, -1) if x.shape[0] == 1 else x
            write_frame(rgb.permute(1, 2, 0).numpy(), args.out / name / f"{i:04d}.png")
    print(f"wrote {args.frames} frames of {args.out}/{{hatched,textured,fog}}")


if __name__ == "__main__":
    main()
