"""A hatched fly-through shot for `pilot conditioner apply`: a procedural corridor and a smooth
camera path (`pilot.scenes.layouts.fly_through`), written as a shot folder, the same one
`pilot shot render OUT --seed S --frames N --size W W` writes (the hatched pass is the
conditioner's input), plus the true textured and fog passes to compare with, as frame folders
`<out>/textured/` and `<out>/fog/` beside the shot's passes (same frame names; not passes of
shot.json). The shot writer's rules hold (`pilot.scenes.shot.ShotWriter`): the folder must be
new, empty or a shot; a rerun replaces the earlier frames, textured and fog included; an
interrupted run leaves an unfinished shot, refused until rerun.
With `--checkpoint` it also draws the README figure: one row per `--rows` frame, columns
hatched input, each conditioner's heads (texture, fog), true texture, true fog; the checkpoints
are checked before any frame is rendered.

    python -m experiments.walls_fly_through --out runs/shots/fly --frames 48
    pilot conditioner apply --checkpoint runs/hatched_walls_pix2pix/checkpoints/last.ckpt \
        --shot runs/shots/fly --out fly.mp4
    python -m experiments.walls_fly_through --out runs/shots/fly --checkpoint CKPT [CKPT ...] \
        --figure experiments/figures/walls_fly_through.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments.walls_eval import WALLS_HEADS, load_walls_generator
from pilot.animation.video import write_frame
from pilot.scenes.procedural import add_fly_through_frame, render_fly_through
from pilot.scenes.render import RenderConfig
from pilot.scenes.shot import frame_name
from pilot.scenes.shot_writer import ShotWriter, remove_frames

TRUTH = ("textured", "fog")  # frame folders beside the shot's passes


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
    rows = [int(r) for r in args.rows.split(",")] if args.checkpoint else []
    if any(not 0 <= r < args.frames for r in rows):
        parser.error(f"--rows {args.rows}: frames are 0..{args.frames - 1}")
    try:  # every check before the first frame is rendered
        generators = [load_walls_generator(c) for c in args.checkpoint or []]
        provenance = {"source": "experiments.walls_fly_through", "seed": args.seed}
        far = RenderConfig().far
        writer = ShotWriter(args.out, args.size, args.size, far=far, provenance=provenance)
        out = render_fly_through(args.seed, args.frames, args.size, args.size)
    except ValueError as e:
        parser.error(str(e))
    for k in range(args.frames):
        add_fly_through_frame(writer, out, k)  # frame 0 first removes the shot there
        if k == 0:
            remove_frames(args.out / name for name in TRUTH)
        for name in TRUTH:
            x = out[name][k].clamp(0, 1).mul(255).round().to(torch.uint8)  # (C, S, S)
            write_frame(x.permute(1, 2, 0).squeeze(2).numpy(), args.out / name / frame_name(k))
    print(f"wrote {writer.close()} ({args.frames} frames, with {' and '.join(TRUTH)} folders)")
    if generators:
        figure = [{k: v[r : r + 1] for k, v in out.items()} for r in rows]
        print(f"wrote {draw_figure(generators, figure, args.figure)}")


def draw_figure(generators: list[torch.nn.Module], renders: list[dict], path: Path) -> Path:
    """Rows of hatched input | each model's heads | true texture | true fog, in [0, 1] RGB."""
    side = generators[0].cfg.image_size
    rows = []
    for out in renders:
        hatched = F.interpolate(out["hatched"], size=(side, side), mode="area")
        panels = [hatched * 2 - 1]
        for generator in generators:
            with torch.no_grad():
                heads = generator.split_heads(generator(hatched * 2 - 1))
            panels += [heads[name] for name in WALLS_HEADS]
        panels += [F.interpolate(out[k], size=(side, side), mode="area") * 2 - 1
                   for k in ("textured", "fog")]  # fmt: skip
        rows.append(torch.cat([p.expand(-1, 3, -1, -1) for p in panels], 3))
    image = torch.cat(rows, 2)[0].add(1).div(2).clamp(0, 1)
    return write_frame(image.mul(255).round().byte().permute(1, 2, 0).numpy(), path)


if __name__ == "__main__":
    main()
