"""`pilot control`: preview a control image, the picture after its preprocessor.

`pilot control depth+invert:mist.png --out control.png` writes what `pilot generate --control
depth+invert:mist.png` feeds the ControlNet (`pilot.control.spec`), so the picture can be
checked (near = white? lines white on black?) before a long run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add `pilot control` to the subparsers `sub`."""
    p = sub.add_parser(
        "control",
        help="write the control image a --control argument makes (preview a preprocessor)",
        description="Run a --control argument's preprocessor on its picture and write the "
        "control image the ControlNet gets (SCALE, START and END are accepted and ignored).",
    )
    p.add_argument("control", metavar="KIND[+invert]:IMAGE[:SCALE[:START:END]]",
                   help="as `pilot generate --control` takes it")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--width", type=int, default=None,
                   help="resize to this many pixels first, as generate does (default: the "
                   "picture's own width, or its aspect with --height)")  # fmt: skip
    p.add_argument("--height", type=int, default=None, help="as --width")
    p.set_defaults(func=cmd_control)


def cmd_control(args: argparse.Namespace) -> int:
    """Preprocess the picture of `args.control` and write it to `--out` (atomically)."""
    from pilot.control.spec import parse_control_arg, picture_size
    from pilot.imageio import remove_stale_temps, write_png

    spec = parse_control_arg(args.control)
    for name in ("width", "height"):
        if (value := getattr(args, name)) is not None and value <= 0:
            raise ValueError(f"--{name} must be a positive number of pixels, got {value}")
    if args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; name the PNG to write")
    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out {args.out}: write a .png (control images are 8-bit PNGs)")
    if args.out.exists() and args.out.resolve() == spec.image.resolve():
        raise ValueError(f"--out {args.out} is the picture itself; write the preview elsewhere")
    w, h = picture_size(spec.image)
    width = args.width or (round(w * args.height / h) if args.height else w)
    height = args.height or (round(h * width / w) if args.width else h)
    if note := spec.stretch_note((height, width)):
        print(f"note: {note}", file=sys.stderr)
    image = spec.control_image((height, width))  # (1, 3, H, W) in [0, 1]
    remove_stale_temps([args.out])  # what a killed run's write left
    print(write_png(args.out, image[0]))
    return 0
