"""`pilot conditioner apply --checkpoint ... --shot ...`: a trained Pix2Pix conditioner over the
hatched frames of a shot, written as a video (the seed's fly-through test).

The shot's frames are the images in `<shot>/<pass>/` (default pass `hatched`, which `pilot shot
render` writes) or, for a plain folder of frames, the images in `<shot>/` itself, in name order.
Each frame is converted to the model's input channels (grey or RGB, see `pilot.data.paired`),
resized so that its short side is `--size` (default: the model's training side) and its long
side the multiple of the model's side nearest the frame's aspect ratio (a 16:9 frame runs at
2:1 rather than squashed into a square; `--square` squashes, as `pilot.data.paired` does to
non-square training pairs; frames that would run at different sizes are refused, from their
headers, before any frame runs), and shown next to every predicted head (e.g. input | texture |
fog). The video plays at the shot's fps (shot.json) unless `--fps` says otherwise.
`--heads-dir` also writes every head as its own image sequence for compositing: texture as RGB
PNGs, fog as grey PNGs (`<dir>/<head>/<frame>.png`; heads of other widths as float .npy). A head
folder holding files this run does not write (another shot's frames) is refused before any frame
runs, rather than mixed with this shot's or deleted; rerunning the same shot overwrites its own.
An interrupted shot (`.shot-unfinished`, no shot.json) is refused, as `Shot` refuses it.
A model trained on several input folders concatenated (e.g. 2 channels) is refused: a shot gives
one image per frame.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `pilot --help` imports no numpy
    import numpy as np

    from pilot.scenes.shot import Shot


def open_shot(shot: Path) -> Shot | None:
    """The `Shot` in a shot folder (shot.json, or a writer's unfinished marker: refused as
    `Shot` refuses it), or None for a plain folder (of frames, or of pass folders)."""
    from pilot.scenes.shot import UNFINISHED, Shot

    if (shot / "shot.json").is_file() or (shot / UNFINISHED).exists():
        return Shot(shot)
    return None


def shot_frames(shot: Path, pass_name: str, opened: Shot | None) -> list[Path]:
    """Frame files of one pass of a shot folder, in order; errors name the folder. `opened`:
    its `open_shot` (read once by the caller, who also takes the fps from it).

    A shot's pass gives the frames shot.json lists (other files in the pass folder are not
    frames of the shot); a folder that is not one of the shot's passes, or a plain folder,
    gives its images in name order. An interrupted shot (unfinished marker) is refused.
    """
    from pilot.data.paired import list_images

    folder = shot / pass_name
    if not shot.is_dir():
        raise FileNotFoundError(f"{shot}: no such shot folder")
    if opened is not None and pass_name in opened.passes:
        return [opened.file(k, pass_name) for k in range(len(opened))]
    if opened is not None and not folder.is_dir():
        raise ValueError(
            f"{shot}: the shot has no {pass_name} pass (passes {opened.passes}); `pilot shot "
            f"render` writes a hatched pass, or put the frames as images in {folder}"
        )
    return list(list_images(folder if folder.is_dir() else shot).values())


def shot_fps(opened: Shot | None, default: float = 12.0) -> float:
    """The frame rate of a shot (`open_shot`), or `default` for a plain folder of frames."""
    return default if opened is None else opened.fps


def check_heads_dir(heads_dir: Path, heads: list[str], stems: list[str]) -> None:
    """ValueError unless `<heads_dir>/<head>/` holds no file but this run's frames (same
    stems): frames of another shot (a longer one, other names) would be mixed with this one's,
    and they may be the only copy of earlier work, so they are not deleted."""
    ours = set(stems)
    for head in heads:
        folder = heads_dir / head
        others = (
            sorted(f.name for f in folder.iterdir() if f.stem not in ours)
            if folder.is_dir()
            else []
        )
        if others:
            more = f" and {len(others) - 3} more" if len(others) > 3 else ""
            raise ValueError(
                f"--heads-dir {heads_dir}: {folder} holds {len(others)} file(s) this run does not "
                f"write ({', '.join(others[:3])}{more}), e.g. another shot's frames; pass an "
                "empty or new folder, or delete them"
            )


def write_head(head: np.ndarray, stem: Path) -> Path:
    """One head's frame (H, W, C) in [-1, 1]: 8-bit PNG for 1, 3 or 4 channels, else float .npy
    (written atomically either way)."""
    import numpy as np

    from pilot.animation.video import to_uint8, write_frame
    from pilot.imageio import atomic_output

    if head.shape[2] in (1, 3, 4):
        pixels = to_uint8(head)
        return write_frame(pixels[:, :, 0] if head.shape[2] == 1 else pixels, f"{stem}.png")
    path = Path(f"{stem}.npy")
    with atomic_output(path) as tmp:
        np.save(tmp, head.astype(np.float32))
    return path


def run_size(height: int, width: int, size: int, side: int) -> tuple[int, int]:
    """(H, W) a frame runs at: short side `size`, the long side the multiple of the model's
    `side` nearest to `size` times the frame's aspect ratio."""
    long = max(side, round(size * max(height, width) / min(height, width) / side) * side)
    return (size, long) if height <= width else (long, size)


def check_run_sizes(files: list[Path], size: int, side: int, square: bool) -> None:
    """ValueError naming two frames that would run at different sizes (a video has one), from
    the image headers, before any frame is computed."""
    from pilot.data.paired import check_image

    first = None
    for path in files:
        width, height = check_image(path)
        shape = (size, size) if square else run_size(height, width, size, side)
        if first is None:
            first = (path, shape)
        elif shape != first[1]:
            (h0, w0), (h1, w1) = first[1], shape
            raise ValueError(
                f"frames of different aspect ratios: {first[0]} runs at {w0}x{h0} and {path} at "
                f"{w1}x{h1}, but a video has one frame size; pass --square to run every frame "
                "as a --size square, or give frames of one aspect ratio"
            )


def cmd_apply(args: argparse.Namespace) -> int:
    """Run the conditioner frame by frame and write the video (and PNG frames if asked)."""
    import torch

    from pilot.animation.video import check_video_path, to_uint8, write_frame, write_video
    from pilot.data.paired import read_image
    from pilot.weights.gan import load_generator

    opened = open_shot(args.shot) if args.shot.is_dir() else None
    fps = shot_fps(opened) if args.fps is None else args.fps
    check_video_path(args.out, fps)  # before any frame is made
    _, generator = load_generator(args.checkpoint, kind="pix2pix")
    cfg = generator.cfg
    if cfg.in_channels not in (1, 3):
        raise ValueError(
            f"{args.checkpoint}: the model takes {cfg.in_channels} input channels (several input "
            "folders concatenated), but `pilot conditioner apply` reads one image (1 or 3 "
            "channels) per frame"
        )
    size = cfg.image_size if args.size is None else args.size
    if size <= 0 or size % cfg.image_size:
        raise ValueError(f"--size={size} must be a multiple of the model's side {cfg.image_size}")
    files = shot_frames(args.shot, args.pass_name, opened)
    check_run_sizes(files, size, cfg.image_size, args.square)
    if args.heads_dir is not None:
        check_heads_dir(args.heads_dir, list(cfg.head_names), [f.stem for f in files])
    frames = []
    for path in files:
        x = torch.from_numpy(read_image(path, cfg.in_channels).copy()).permute(2, 0, 1)
        x = x[None].float().div(127.5).sub(1.0)  # (1, C, H, W) in [-1, 1]
        shape = (size, size) if args.square else run_size(*x.shape[2:], size, cfg.image_size)
        x = torch.nn.functional.interpolate(x, size=shape, mode="area")
        with torch.no_grad():
            heads = generator.split_heads(generator(x))
        panels = [x, *heads.values()]
        row = torch.cat(
            [p[:, :3] if p.shape[1] >= 3 else p.expand(-1, 3, -1, -1) for p in panels], 3
        )
        frame = to_uint8(row[0].permute(1, 2, 0).numpy())  # (H, W * panels, 3)
        frames.append(frame)
        if args.frames_dir is not None:
            write_frame(frame, args.frames_dir / f"{path.stem}.png")
        if args.heads_dir is not None:
            for name, head in heads.items():
                write_head(head[0].permute(1, 2, 0).numpy(), args.heads_dir / name / path.stem)
    out = write_video(frames, args.out, fps=fps)
    print(f"wrote {out} ({len(frames)} frames: input | {' | '.join(cfg.head_names)})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `conditioner` command group to the `pilot` parser."""
    p = sub.add_parser("conditioner", help="apply a trained Pix2Pix conditioner")
    groups = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = groups.add_parser("apply", help="run it over a shot's hatched frames, write a video")
    a.add_argument("--checkpoint", required=True, help="Pix2Pix .ckpt or exported .safetensors")
    a.add_argument("--shot", required=True, type=Path, help="shot folder (or folder of frames)")
    a.add_argument("--pass", dest="pass_name", default="hatched", help="pass sub-folder")
    a.add_argument("--out", type=Path, default=Path("conditioned.mp4"), help=".mp4 or .gif")
    a.add_argument("--fps", type=float, help="video frame rate (default: the shot's, else 12)")
    a.add_argument("--size", type=int, help="short side to run at (multiple of the model's)")
    a.add_argument("--square", action="store_true", help="squash frames to --size squares")
    a.add_argument("--frames-dir", type=Path, help="also write every frame as PNG here")
    a.add_argument("--heads-dir", type=Path, help="also write each head's frames: DIR/HEAD/")
    a.set_defaults(func=cmd_apply)
