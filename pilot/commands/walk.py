"""`pilot walk --checkpoint ... --frames ...`: a latent walk of a trained DCGAN as MP4 or GIF."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_walk(args: argparse.Namespace) -> int:
    """Render a looping slerp/lerp walk through seeded latents and write the video."""
    import torch
    import torch.nn.functional as F

    from pilot.animation.video import check_video_path, to_uint8, write_video
    from pilot.animation.walks import latent_walk
    from pilot.weights.gan import load_generator

    if args.frames < 2 or args.points < 2 or args.scale < 1 or args.grid < 1:
        raise ValueError(
            f"need --frames >= 2, --points >= 2, --scale >= 1, --grid >= 1; got {args.frames}, "
            f"{args.points}, {args.scale}, {args.grid}"
        )
    check_video_path(args.out, args.fps)
    _, generator = load_generator(args.checkpoint, kind="dcgan")
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
    frames = []
    with torch.no_grad():
        for zs in z:
            images = generator(zs)  # (cells, C, S, S) in [-1, 1]
            if args.scale > 1:
                images = F.interpolate(images, scale_factor=args.scale, mode="nearest")
            frames.append(_tile(images, args.grid))
    path = write_video([to_uint8(f) for f in frames], args.out, fps=args.fps)
    print(f"wrote {path} ({len(frames)} frames)")
    return 0


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
    p.add_argument("--mode", choices=["slerp", "lerp"], default="slerp")
    p.add_argument("--no-loop", action="store_true", help="end at the last point")
    p.add_argument("--ease", action="store_true", help="pause at keypoints (smoothstep)")
    p.add_argument("--grid", type=int, default=1, help="grid x grid independent walks")
    p.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscale factor")
    p.add_argument("--fps", type=float, default=24.0)
    p.add_argument("--out", type=Path, default=Path("walk.mp4"), help=".mp4 or .gif")
    p.set_defaults(func=cmd_walk)
