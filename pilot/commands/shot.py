"""`pilot shot ...`: Blender export, procedural shots, pass previews, pair data sets."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> int:
    """Export a .blend file's camera animation as a shot (bpy module, else `blender -b`)."""
    blend = Path(args.blend)
    if not blend.is_file():
        raise FileNotFoundError(f"{blend}: no such .blend file")
    frames = tuple(args.frames) if args.frames else None
    try:
        import bpy
    except ImportError:
        bpy = None
    if bpy is not None and args.blender is None:
        from pilot.scenes.blender import export_shot

        bpy.ops.wm.open_mainfile(filepath=str(blend.resolve()))
        print(f"wrote {export_shot(args.out, frames, args.samples)}")
        return 0
    exe = args.blender or shutil.which("blender")
    if exe is None:
        raise ValueError("needs the bpy module (pip install bpy==4.2.0) or a `blender` on PATH")
    script = Path(__file__).resolve().parents[1] / "scenes" / "blender.py"
    cmd = [exe, "-b", str(blend), "--python", str(script), "--", str(args.out)]
    cmd += ["--samples", str(args.samples)] + (["--frames", *map(str, frames)] if frames else [])
    return subprocess.run(cmd, check=False).returncode


def cmd_render(args: argparse.Namespace) -> int:
    """Render a procedural corridor fly-through as a shot."""
    from pilot.scenes.procedural import fly_through_shot

    w, h = args.size
    path = fly_through_shot(args.out, args.seed, args.frames, w, h, fps=args.fps)
    print(f"wrote {path}")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """Contact sheet of a shot: one row per sampled frame, one column per pass."""
    import torch

    from pilot.scenes.preview import (
        colorize_depth,
        contact_sheet,
        flow_rgb,
        normals_rgb,
        write_image,
    )
    from pilot.scenes.shot import Shot

    shot = Shot(args.shot)
    rows = min(args.rows, len(shot))
    picks = torch.linspace(0, len(shot) - 1, rows).round().long().tolist()
    frames = [shot[k] for k in picks]
    columns = {}
    if "image" in shot.passes:
        columns["image"] = torch.stack([f.image for f in frames])
    columns["depth"] = colorize_depth(torch.stack([f.depth for f in frames]), far=shot.far)
    if "normals" in shot.passes:
        columns["normals"] = normals_rgb(torch.stack([f.normals for f in frames]))
    if "motion" in shot.passes:
        motion = torch.stack([f.motion for f in frames])
        columns["motion to next"] = flow_rgb(motion[:, 2:])
    write_image(args.out, contact_sheet(columns))
    print(f"wrote {args.out} (frames {picks})")
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    """Write the hatched -> textured + fog pair data set."""
    from pilot.data.walls import write_pairs

    path = write_pairs(
        args.out, args.n, args.size, args.seed, passes=args.passes, workers=args.workers
    )
    print(f"wrote {args.n} pairs, manifest {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `pilot shot {export,render,preview,pairs}`."""
    shot = sub.add_parser("shot", help="3D shots: Blender export, procedural renders, previews")
    group = shot.add_subparsers(dest="shot_command", metavar="SUBCOMMAND", required=True)

    p = group.add_parser("export", help="export a .blend camera animation as a shot")
    p.add_argument("blend", help=".blend file (its active scene and camera)")
    p.add_argument("out", help="shot folder to write")
    p.add_argument("--frames", type=int, nargs=2, metavar=("FIRST", "LAST"))
    p.add_argument("--samples", type=int, default=16, help="Cycles samples per pixel")
    p.add_argument("--blender", help="Blender executable (default: bpy module, else PATH)")
    p.set_defaults(func=cmd_export)

    p = group.add_parser("render", help="render a procedural corridor fly-through shot")
    p.add_argument("out", help="shot folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("W", "H"))
    p.add_argument("--fps", type=float, default=24.0)
    p.set_defaults(func=cmd_render)

    p = group.add_parser("preview", help="contact sheet PNG of a shot's passes")
    p.add_argument("shot", help="shot folder")
    p.add_argument("out", help="image to write (.png or .jpg)")
    p.add_argument("--rows", type=int, default=6, help="frames shown, evenly spaced")
    p.set_defaults(func=cmd_preview)

    p = group.add_parser("pairs", help="write hatched -> textured + fog training pairs")
    p.add_argument("out", help="folder to write (PNG per pass + manifest.json)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes, one torch thread each")
    p.add_argument(
        "--passes",
        nargs="+",
        default=["hatched", "textured", "fog"],
        choices=["hatched", "textured", "fog", "image", "depth", "normals"],
    )
    p.set_defaults(func=cmd_pairs)
