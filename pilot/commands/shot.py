"""`pilot shot ...`: Blender export, procedural shots, hatched passes, previews, pair data sets."""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> int:
    """Export a .blend file's camera animation as a shot (bpy module, else `blender -b`)."""
    from pilot.scenes.blender import check_samples
    from pilot.scenes.shot import check_resolution

    blend = Path(args.blend)
    if not blend.is_file():
        raise FileNotFoundError(f"{blend}: no such .blend file")
    if args.size:
        check_resolution(*args.size, "--size")
    check_samples(args.samples, "--samples")
    frames = tuple(args.frames) if args.frames else None
    try:
        import bpy
    except ImportError:
        bpy = None
    if bpy is not None and args.blender is None:
        from pilot.scenes.blender import export_shot, open_blend

        open_blend(blend)
        size = tuple(args.size) if args.size else None
        # prints "wrote PATH", or that a finished shot of these settings had nothing to render
        export_shot(args.out, frames, args.samples, size=size, force=args.force)
        return 0
    exe = args.blender or shutil.which("blender")
    if exe is None:
        raise ValueError("needs the bpy module (pip install bpy==4.2.0) or a `blender` on PATH")
    script = Path(__file__).resolve().parents[1] / "scenes" / "blender.py"
    # --python-exit-code: a script that raises makes Blender exit 1 (by default it exits 0)
    cmd = [exe, "-b", str(blend), "--python-exit-code", "1", "--python", str(script)]
    cmd += ["--", str(args.out)]
    cmd += ["--samples", str(args.samples)] + (["--frames", *map(str, frames)] if frames else [])
    cmd += ["--size", *map(str, args.size)] if args.size else []
    cmd += ["--force"] if args.force else []
    return subprocess.run(cmd, check=False).returncode


def cmd_render(args: argparse.Namespace) -> int:
    """Render a procedural corridor fly-through as a shot."""
    from pilot.scenes.procedural import fly_through_shot
    from pilot.scenes.shot import check_fps, check_resolution

    check_fps(args.fps, "--fps")
    check_resolution(*args.size, "--size")
    if args.frames < 2:
        raise ValueError(f"--frames {args.frames}: a fly-through needs at least 2 frames")
    if args.seed < 0:
        raise ValueError(f"--seed {args.seed} must be >= 0")
    w, h = args.size
    path = fly_through_shot(args.out, args.seed, args.frames, w, h, fps=args.fps)
    print(f"wrote {path}")
    return 0


def cmd_hatch(args: argparse.Namespace) -> int:
    """Draw a shot's hatched pass from its depth and normals (`pilot.scenes.sketch`)."""
    from pilot.scenes.shot import Shot
    from pilot.scenes.shot_writer import write_pass
    from pilot.scenes.sketch import hatched_pass

    if not (math.isfinite(args.density) and args.density > 0):
        raise ValueError(f"--density {args.density}: lines per metre must be > 0")
    if not 0 < args.width < 1:
        raise ValueError(f"--width {args.width}: line width / spacing must be in (0, 1)")
    shot = Shot(args.shot)
    if "hatched" in shot.passes and not args.force:
        raise ValueError(f"{shot.root}: the shot has a hatched pass already (--force replaces it)")
    if "normals" not in shot.passes:
        raise ValueError(f"{shot.root}: drawing a hatched pass needs normals (has {shot.passes})")

    def frames():
        for k in range(len(shot)):
            f = shot.frame(k, ["depth", "normals"])
            ink = hatched_pass(
                f.depth[None], f.normals[None], f.K[None], f.c2w[None],
                density=args.density, width=args.width, cross=args.cross,
            )  # fmt: skip
            yield ink[0, 0].clamp(0, 1).mul(255).round().byte().numpy()

    print(f"wrote {write_pass(shot, 'hatched', frames())} ({len(shot)} hatched frames)")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """Contact sheet (one row per sampled frame) or MP4/GIF (every frame) of a shot's passes."""
    import torch

    from pilot.animation.video import VIDEO_SUFFIXES, check_image_path, write_frame, write_video
    from pilot.imageio import remove_stale_temps
    from pilot.scenes.preview import contact_sheet, pass_columns
    from pilot.scenes.shot import Shot

    if args.rows < 1:
        raise ValueError(f"--rows {args.rows}: a contact sheet shows at least 1 frame")
    video = Path(args.out).suffix.lower() in VIDEO_SUFFIXES
    if not video:
        check_image_path(args.out)
    shot = Shot(args.shot)
    remove_stale_temps([args.out])  # a killed run's writer's
    if video:  # one sheet at a time, as the writer takes them (a long shot would not fit)
        sheets = (contact_sheet(pass_columns([shot[k]], shot.far)) for k in range(len(shot)))
        print(f"wrote {write_video(sheets, args.out, fps=shot.fps)} ({len(shot)} frames)")
        return 0
    rows = min(args.rows, len(shot))
    picks = torch.linspace(0, len(shot) - 1, rows).round().long().tolist()
    sheet = contact_sheet(pass_columns([shot[k] for k in picks], shot.far))
    print(f"wrote {write_frame(sheet, args.out)} (frames {picks})")
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    """Write the hatched -> textured + fog pair data set."""
    from pilot.data.walls import fog_density_range, write_pairs
    from pilot.scenes.layouts import LayoutConfig

    cfg = None
    if args.fog_density is not None:
        cfg = LayoutConfig(fog_density=fog_density_range(args.fog_density))
    path = write_pairs(
        args.out, args.n, args.size, args.seed, passes=args.passes, workers=args.workers, cfg=cfg
    )
    print(f"wrote {args.n} pairs, manifest {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `pilot shot {export,render,hatch,preview,pairs}`."""
    shot = sub.add_parser("shot", help="3D shots: Blender export, procedural renders, previews")
    group = shot.add_subparsers(dest="shot_command", metavar="SUBCOMMAND", required=True)

    p = group.add_parser("export", help="export a .blend camera animation as a shot")
    p.add_argument("blend", help=".blend file (its active scene and camera)")
    p.add_argument("out", help="shot folder to write")
    p.add_argument("--frames", type=int, nargs=2, metavar=("FIRST", "LAST"))
    p.add_argument("--samples", type=int, default=16, help="Cycles samples per pixel")
    p.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="override resolution")
    p.add_argument("--blender", help="Blender executable (default: bpy module, else PATH)")
    p.add_argument(
        "--force",
        action="store_true",
        help="render every frame again, replacing the shot in OUT (default: resume an "
        "unfinished export of the same settings; a finished one has nothing to render)",
    )
    p.set_defaults(func=cmd_export, resumes=lambda args: not args.force)

    p = group.add_parser("render", help="render a procedural corridor fly-through shot")
    p.add_argument("out", help="shot folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("W", "H"))
    p.add_argument("--fps", type=float, default=24.0)
    p.set_defaults(func=cmd_render)

    p = group.add_parser("hatch", help="draw a hatched pass from depth and normals (any shot)")
    p.add_argument("shot", help="shot folder (e.g. a Blender export)")
    p.add_argument("--density", type=float, default=10.0, help="lines per metre")
    p.add_argument("--width", type=float, default=0.3, help="line width / spacing, in (0, 1)")
    p.add_argument("--cross", action="store_true", help="add the crossing lines")
    p.add_argument("--force", action="store_true", help="replace an existing hatched pass")
    p.set_defaults(func=cmd_hatch)

    p = group.add_parser("preview", help="contact sheet or video of a shot's passes")
    p.add_argument("shot", help="shot folder")
    p.add_argument("out", help=".png/.jpg contact sheet, or .mp4/.gif of every frame")
    p.add_argument("--rows", type=int, default=6, help="frames shown, evenly spaced")
    p.set_defaults(func=cmd_preview)

    p = group.add_parser("pairs", help="write hatched -> textured + fog training pairs")
    p.add_argument("out", help="new or empty folder, or an earlier set's (replaced)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes, one torch thread each")
    p.add_argument(
        "--fog-density",
        type=float,
        nargs="+",
        metavar="D",
        help="fog density per metre: one value (fixed) or LO HI (default 0.02 0.25, random)",
    )
    p.add_argument(
        "--passes",
        nargs="+",
        default=["hatched", "textured", "fog"],
        choices=["hatched", "textured", "fog", "image", "depth", "normals"],
    )
    p.set_defaults(func=cmd_pairs)
