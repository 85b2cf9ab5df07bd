"""`pilot walk --checkpoint ... --frames ...`: a latent walk of a trained DCGAN as MP4 or GIF."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def cmd_walk(args: argparse.Namespace) -> int:
    """Render a looping slerp/lerp walk through seeded latents and write the video.

    Frames are made one at a time as the writer takes them (an MP4's memory does not grow with
    --frames; Pillow keeps a GIF's frames at one byte a pixel). The video replaces --out
    atomically: an interrupted run leaves the earlier file, or none, and no partial one (a kill -9
    leaves the writer's hidden temporary file, which the next run deletes).
    """
    import torch

    from pilot.animation.video import check_video_path, check_video_size, write_video
    from pilot.animation.walks import latent_walk
    from pilot.imageio import remove_stale_temps
    from pilot.weights.gan import load_generator

    _check_args(args)
    check_video_path(args.out, args.fps)
    _, generator = load_generator(args.checkpoint, kind="dcgan")
    side = args.grid * generator.cfg.image_size * args.scale
    try:
        check_video_size(args.out, side, side)
    except ValueError as e:
        raise ValueError(
            f"--grid {args.grid} x {generator.cfg.image_size} px x --scale {args.scale}: {e}"
        ) from None
    dim = generator.cfg.latent_dim
    walks = [  # one independent walk per grid cell, seeds spaced by the number of points
        latent_walk(
            (dim,),
            args.frames,
            n_points=args.points,
            seed=args.seed + cell * args.points,
            mode=args.mode,
            loop=not args.no_loop,
            ease=args.ease,
        )
        for cell in range(args.grid * args.grid)
    ]
    z = torch.stack(walks, dim=1)  # (frames, cells, latent_dim)
    remove_stale_temps([args.out])  # what a killed run's writer left
    with torch.no_grad():
        frames = (_frame(generator, zs, args.grid, args.scale) for zs in z)
        path = write_video(frames, args.out, fps=args.fps)
    print(f"wrote {path} ({len(z)} frames)")
    return 0


# torch.Generator.manual_seed's range (a negative seed s is the same as 2**64 + s)
_SEEDS = (-(2**63), 2**64 - 1)


def _check_args(args: argparse.Namespace) -> None:
    """ValueError naming the first flag whose value is out of range."""
    minimum = {"frames": 2, "points": 2, "scale": 1, "grid": 1}
    for name, least in minimum.items():
        if getattr(args, name) < least:
            raise ValueError(f"--{name} {getattr(args, name)}: must be at least {least}")
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise ValueError(f"--fps {args.fps}: must be a positive frame rate")
    last = args.seed + args.grid * args.grid * args.points - 1  # the walk's seeds: seed..last
    if args.seed < _SEEDS[0] or last > _SEEDS[1]:
        raise ValueError(
            f"--seed {args.seed}: the walk uses seeds {args.seed}..{last}, which must lie in "
            f"[{_SEEDS[0]}, {_SEEDS[1]}]"
        )


def _frame(generator, zs, grid: int, scale: int):
    """One video frame, uint8 (grid S scale, grid S scale, 3), from latents zs (cells, dim);
    upscaled (nearest neighbour) after the conversion to uint8, the smallest copy to enlarge."""
    import numpy as np

    from pilot.animation.video import to_uint8

    frame = to_uint8(_tile(generator(zs), grid))  # generator: (cells, C, S, S) in [-1, 1]
    return np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)


def _tile(images, grid: int):
    """(grid * grid, C, H, W) -> one (grid H, grid W, 3) float array."""
    c, h, w = images.shape[1:]
    images = images[:, :3] if c >= 3 else images[:, :1].expand(-1, 3, -1, -1)
    rows = images.reshape(grid, grid, 3, h, w).permute(0, 3, 1, 4, 2)  # (gy, H, gx, W, 3)
    return rows.reshape(grid * h, grid * w, 3).numpy()


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `walk` command to the `pilot` parser."""
    p = sub.add_parser("walk", help="latent walk of a trained DCGAN, written as MP4/GIF")
    p.add_argument("--checkpoint", required=True, help="DCGAN .ckpt or exported .safetensors")
    p.add_argument("--frames", type=int, default=96, help="number of frames")
    p.add_argument("--points", type=int, default=4, help="keypoints the walk passes through")
    p.add_argument("--seed", type=int, default=0, help="seed of the first keypoint")
    p.add_argument(
        "--mode",
        choices=["slerp", "lerp"],
        default="slerp",
        help="slerp keeps latents near the Gaussian shell; lerp cuts inside it (shorter midpoints)",
    )
    p.add_argument("--no-loop", action="store_true", help="end at the last point")
    p.add_argument("--ease", action="store_true", help="pause at keypoints (smoothstep)")
    p.add_argument("--grid", type=int, default=1, help="grid x grid independent walks")
    p.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscale factor")
    p.add_argument("--fps", type=float, default=24.0, help="frames per second of the video")
    p.add_argument(
        "--out", type=Path, default=Path("walk.mp4"), help=".mp4 or .gif (replaced if it exists)"
    )
    p.set_defaults(func=cmd_walk)
