"""A hatched fly-through shot for `pilot conditioner apply`: a procedural corridor and a smooth
camera path (`pilot.scenes.layouts.fly_through`), rendered frame by frame; writes the hatched
frames to `<out>/hatched/` and the true textured and fog passes next to them for comparison.
With `--checkpoint` it also draws the README figure: one row per `--rows` frame, columns
hatched input, each conditioner's heads (e.g. texture, fog), true texture, true fog.

    python -m experiments.walls_fly_through --out runs/shots/fly --frames 48
    pilot conditioner apply --checkpoint runs/hatched_walls_pix2pix/checkpoints/last.ckpt \
        --shot runs/shots/fly --out experiments/figures/walls_fly_through.gif
    python -m experiments.walls_fly_through --checkpoint CKPT [CKPT ...] \
        --figure experiments/figures/walls_fly_through.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pilot.animation.video import write_frame
from pilot.scenes.layouts import fly_through
from pilot.scenes.render import render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/shots/fly"))
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--checkpoint", nargs="+", help="Pix2Pix conditioners: draw --figure")
    parser.add_argument("--figure", type=Path, default=Path("walls_fly_through.png"))
    parser.add_argument("--rows", default="0,20,40", help="frames shown in the figure")
    args = parser.parse_args()
    scene, path = fly_through(np.random.default_rng(args.seed))
    poses = path.poses(args.frames)  # (F, 4, 4)
    K = path.intrinsics(args.size, args.size)
    rows = [int(r) for r in args.rows.split(",")] if args.checkpoint else []
    if any(not 0 <= r < args.frames for r in rows):
        parser.error(f"--rows {args.rows}: frames are 0..{args.frames - 1}")
    figure = []
    for i, c2w in enumerate(poses):
        out = render(scene, K[None], c2w[None], args.size, args.size)
        for name in ("hatched", "textured", "fog"):
            x = out[name][0].clamp(0, 1).mul(255).round().to(torch.uint8)  # (C, S, S)
            rgb = x.expand(3, -1, -1) if x.shape[0] == 1 else x
            write_frame(rgb.permute(1, 2, 0).numpy(), args.out / name / f"{i:04d}.png")
        if i in rows:
            figure.append(out)
    print(f"wrote {args.frames} frames of {args.out}/{{hatched,textured,fog}}")
    if args.checkpoint:
        print(f"wrote {draw_figure(args.checkpoint, figure, args.figure)}")


def draw_figure(checkpoints: list[str], renders: list[dict], path: Path) -> Path:
    """Rows of hatched input | each model's heads | true texture | true fog, in [0, 1] RGB."""
    from pilot.weights.gan import load_generator

    generators = [load_generator(c, kind="pix2pix")[1] for c in checkpoints]
    side = generators[0].cfg.image_size
    rows = []
    for out in renders:
        hatched = F.interpolate(out["hatched"], size=(side, side), mode="area")
        panels = [hatched * 2 - 1]
        for generator in generators:
            with torch.no_grad():
                panels += generator.split_heads(generator(hatched * 2 - 1)).values()
        panels += [F.interpolate(out[k], size=(side, side), mode="area") * 2 - 1
                   for k in ("textured", "fog")]  # fmt: skip
        rows.append(torch.cat([p.expand(-1, 3, -1, -1) for p in panels], 3))
    image = torch.cat(rows, 2)[0].add(1).div(2).clamp(0, 1)
    return write_frame(image.mul(255).round().byte().permute(1, 2, 0).numpy(), path)


if __name__ == "__main__":
    main()
