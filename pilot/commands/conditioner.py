"""`pilot conditioner apply --checkpoint ... --shot ...`: a trained Pix2Pix conditioner over the
frames of a shot, a folder of drawings or a video, written as a video (the seed's fly-through
test) or, with `--out DIR`, as images named as the inputs.

Inputs (`--shot`): the images in `<shot>/<pass>/` (default pass `hatched`, which `pilot shot
render` writes) or, for a plain folder of frames or drawings, the images in `<shot>/` itself, in
name order (hidden files skipped, as `pilot.data.paired.list_images` lists them), or the frames
of a video file (MP4, MOV, ... as OpenCV reads them; frame k is named `00000k`, at the video's
fps). Each frame is converted to the model's input channels (grey or RGB; transparency over
white paper, as in training, see `pilot.data.paired`), resized so that its short side is
`--size` (default: the model's training side) and its long side the multiple of the model's
side nearest the frame's aspect ratio (a 16:9 frame runs at 2:1 rather than squashed into a
square; `--square` squashes, as `pilot.data.paired` does to non-square training pairs).

Video out (`--out X.mp4|.gif`): frames that would run at different sizes are refused, from
their headers, before any frame runs; each is shown next to every predicted head (e.g. input |
texture | fog). The video plays at the shot's fps (shot.json) or the video's unless `--fps`
says otherwise. Frames are made as the writer takes them (memory does not grow with the video's
length); a killed run leaves no partial video and starts over when rerun (a folder `--out`
resumes). `--heads-dir` also writes every head as its own image sequence for compositing:
texture as RGB PNGs, fog as grey PNGs (`<dir>/<head>/<frame>.png`; heads of other widths as float
.npy). A head folder holding files this run does not write (another shot's frames) is refused
before any frame runs, rather than mixed with this shot's or deleted; rerunning the same shot
overwrites its own.

Images out (`--out DIR`, a folder: no video suffix): every input gives `DIR/<name>.png` (a model
with several heads: `DIR/<head>/<name>.png`), resized back to the input's own size, so inputs
of any sizes and aspects go in one run; outputs are opaque. Each file is written atomically as
soon as it is made, and the run's settings (checkpoint digest, --size, --square, input) are
kept in `DIR/.pilot-conditioner.json`: rerunning the same command after a kill or with new
drawings added computes only what is missing or older than its input; other settings are
refused, naming each, and so is a folder holding files of this run's names made otherwise.

No output (`--out` folder, `--frames-dir`, `--heads-dir` head folders) may be the input folder,
the shot folder or one of its passes, whose files it would overwrite; nor may a video `--out` be
the input video. An interrupted shot (`.shot-unfinished`, no shot.json) is refused, as `Shot`
refuses it. A model trained on several input folders concatenated (e.g. 2 channels) is refused:
a shot gives one image per frame.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pilot.commands._conditioner_inputs import Source, check_outputs, open_source
from pilot.commands._conditioner_inputs import open_shot as open_shot
from pilot.commands._conditioner_inputs import shot_fps as shot_fps
from pilot.commands._conditioner_inputs import shot_frames as shot_frames

if TYPE_CHECKING:  # annotations only: `pilot --help` imports no numpy
    import numpy as np
    from torch import nn

    from pilot.models.pix2pix import Pix2PixConfig

SETTINGS = ".pilot-conditioner.json"  # an --out folder's record of the run that fills it


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


def head_path(stem: Path, channels: int) -> Path:
    """Where `write_head` writes a head of `channels` channels for `stem`."""
    return Path(f"{stem}.png" if channels in (1, 3, 4) else f"{stem}.npy")


def write_head(head: np.ndarray, stem: Path) -> Path:
    """One head's frame (H, W, C) in [-1, 1]: 8-bit PNG for 1, 3 or 4 channels, else float .npy
    (written atomically either way)."""
    import numpy as np

    from pilot.animation.video import to_uint8, write_frame
    from pilot.imageio import atomic_output

    path = head_path(stem, head.shape[2])
    if path.suffix == ".png":
        pixels = to_uint8(head)
        return write_frame(pixels[:, :, 0] if head.shape[2] == 1 else pixels, path)
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
                "as a --size square, or give frames of one aspect ratio (or --out a folder)"
            )


def predict(generator: nn.Module, frame: np.ndarray, size: int, square: bool) -> tuple:
    """Run one uint8 (H, W, C) frame at its run size: (input (1, C, h, w), {head: (1, Ch, h, w)}),
    in [-1, 1]."""
    import torch

    side = generator.cfg.image_size
    x = torch.from_numpy(frame.copy()).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
    shape = (size, size) if square else run_size(*x.shape[2:], size, side)
    x = torch.nn.functional.interpolate(x, size=shape, mode="area")
    with torch.no_grad():
        return x, generator.split_heads(generator(x))


def apply_to_folder(
    generator: nn.Module, source: Source, out: Path, settings: dict, size: int, square: bool
) -> int:
    """Images out (module doc): `out/<name>.png` per input at its size, resumable."""
    import torch

    from pilot.animation.inputs import check_run_folder, read_settings
    from pilot.animation.video import remove_temp_files
    from pilot.imageio import remove_stale_temps
    from pilot.locks import folder_lock

    cfg = generator.cfg
    folders = {h: out if len(cfg.head_names) == 1 else out / h for h in cfg.head_names}
    paths = {h: [head_path(folders[h] / n, c) for n in source.names]
             for h, c in zip(cfg.head_names, cfg.head_channels, strict=True)}  # fmt: skip
    hint = "pass another --out folder, or the checkpoint and settings that made it"
    with folder_lock(out, f"--out {out}"):
        if read_settings(out, hint, SETTINGS) is None:
            made = [str(p) for ps in paths.values() for p in ps if p.exists()]
            if made:
                raise ValueError(
                    f"--out {out} holds {len(made)} file(s) this run would overwrite ({made[0]}"
                    f"{', ...' if len(made) > 1 else ''}), not made by `pilot conditioner`; "
                    f"pass another --out folder, or delete them"
                )
        check_run_folder(out, settings, hint, SETTINGS)
        for folder in folders.values():
            remove_temp_files(folder, suffixes=(".png", ".npy"))  # left by writes a kill cut
        remove_stale_temps([out / SETTINGS])
        done = frozenset(  # made by an earlier run of these settings, after its input
            k for k in range(len(source.names))
            if all(p.exists() and p.stat().st_mtime >= source.mtime(k)
                   for p in (ps[k] for ps in paths.values()))
        )  # fmt: skip
        written = 0
        for k, frame in enumerate(source.frames(cfg.in_channels, skip=done)):
            if frame is None:
                continue
            _, heads = predict(generator, frame, size, square)
            for name, head in heads.items():
                head = torch.nn.functional.interpolate(
                    head, size=frame.shape[:2], mode="bicubic", antialias=True
                ).clamp(-1, 1)  # back to the input's own size
                write_head(head[0].permute(1, 2, 0).numpy(), paths[name][k].with_suffix(""))
            written += 1
    kept = f", {len(done)} kept from an earlier run" if done else ""
    print(f"wrote {written} image(s) to {out}{kept} ({' | '.join(cfg.head_names)})")
    return 0


def folder_output(out: Path) -> bool:
    """Whether `--out` names a folder of images (no video suffix), not a video."""
    from pilot.animation.video import VIDEO_SUFFIXES

    return out.suffix.lower() not in VIDEO_SUFFIXES and (out.suffix == "" or out.is_dir())


def cmd_apply(args: argparse.Namespace) -> int:
    """Run the conditioner frame by frame; write the video (and PNG frames if asked), or the
    images of `--out DIR`."""
    from pilot.animation.video import check_video_path, write_video
    from pilot.data.paired import check_image
    from pilot.weights.gan import load_generator

    to_folder = folder_output(args.out)
    if to_folder and (args.frames_dir is not None or args.heads_dir is not None):
        raise ValueError(
            f"--frames-dir and --heads-dir go with a video --out, not a folder {args.out}"
        )
    if not to_folder:  # before any frame is made
        check_video_path(args.out, 1.0 if args.fps is None else args.fps)
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
    source = open_source(args.shot, args.pass_name)
    fps = source.fps if args.fps is None else args.fps
    if not to_folder:
        check_video_path(args.out, fps)
    outputs = [("--frames-dir", args.frames_dir)] if args.frames_dir is not None else []
    if args.heads_dir is not None:
        outputs += [("--heads-dir", args.heads_dir / h) for h in cfg.head_names]
    outputs += [("--out", args.out)]
    outputs += [("--out", args.out / h) for h in cfg.head_names] if to_folder else []
    check_outputs(source, outputs)
    if to_folder:
        from pilot.scenes.blender import file_digest

        for path in source.files or []:
            check_image(path)  # a corrupt drawing stops the run before any is painted

        settings = {"checkpoint_sha256": file_digest(Path(args.checkpoint)), "size": size,
                    "square": args.square, "input": os.path.abspath(args.shot)}  # fmt: skip
        return apply_to_folder(generator, source, args.out, settings, size, args.square)
    if source.files is not None:
        check_run_sizes(source.files, size, cfg.image_size, args.square)
    remove_video_temps(args, source, cfg)  # before the heads' check, which they would fail
    if args.heads_dir is not None:
        check_heads_dir(args.heads_dir, list(cfg.head_names), source.names)
    rows = video_rows(generator, source, size, args.square, args.frames_dir, args.heads_dir)
    out = write_video(rows, args.out, fps=fps)
    print(f"wrote {out} ({len(source.names)} frames: input | {' | '.join(cfg.head_names)})")
    return 0


def remove_video_temps(args: argparse.Namespace, source: Source, cfg: Pix2PixConfig) -> None:
    """Delete the temporary files that writes of this run's outputs (the video, --frames-dir
    and --heads-dir files) killed mid-way left; other files' are left alone."""
    from pilot.imageio import remove_stale_temps

    targets = [args.out]
    if args.frames_dir is not None:
        targets += [args.frames_dir / f"{name}.png" for name in source.names]
    if args.heads_dir is not None:
        targets += [head_path(args.heads_dir / head / name, channels)
                    for head, channels in zip(cfg.head_names, cfg.head_channels, strict=True)
                    for name in source.names]  # fmt: skip
    remove_stale_temps(targets)


def video_rows(
    generator: nn.Module,
    source: Source,
    size: int,
    square: bool,
    frames_dir: Path | None,
    heads_dir: Path | None,
) -> Iterator[np.ndarray]:
    """The video's frames, uint8 (H, W * panels, 3): each input next to every predicted head,
    made one at a time as the writer takes them (a long video is never all in memory), with
    its `frames_dir` PNG and `heads_dir` heads written as it is made."""
    import torch

    from pilot.animation.video import to_uint8, write_frame

    for name, frame in zip(source.names, source.frames(generator.cfg.in_channels), strict=True):
        x, heads = predict(generator, frame, size, square)
        panels = [x, *heads.values()]
        row = torch.cat(
            [p[:, :3] if p.shape[1] >= 3 else p.expand(-1, 3, -1, -1) for p in panels], 3
        )
        row = to_uint8(row[0].permute(1, 2, 0).numpy())  # (H, W * panels, 3)
        if frames_dir is not None:
            write_frame(row, frames_dir / f"{name}.png")
        if heads_dir is not None:
            for head_name, head in heads.items():
                write_head(head[0].permute(1, 2, 0).numpy(), heads_dir / head_name / name)
        yield row


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `conditioner` command group to the `pilot` parser."""
    p = sub.add_parser("conditioner", help="apply a trained Pix2Pix conditioner")
    groups = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = groups.add_parser(
        "apply", help="run it over a shot's frames, drawings or a video; write a video or images"
    )
    a.add_argument("--checkpoint", required=True, help="Pix2Pix .ckpt or exported .safetensors")
    a.add_argument(
        "--shot", required=True, type=Path, help="shot folder, folder of images, or video file"
    )
    a.add_argument("--pass", dest="pass_name", default="hatched", help="pass sub-folder")
    a.add_argument(
        "--out",
        type=Path,
        default=Path("conditioned.mp4"),
        help=".mp4 or .gif video, or a folder: images named as the inputs, at their sizes",
    )
    a.add_argument(
        "--fps", type=float, help="video frame rate (default: the shot's or the video's, else 12)"
    )
    a.add_argument("--size", type=int, help="short side to run at (multiple of the model's)")
    a.add_argument("--square", action="store_true", help="squash frames to --size squares")
    a.add_argument("--frames-dir", type=Path, help="also write every frame as PNG here")
    a.add_argument("--heads-dir", type=Path, help="also write each head's frames: DIR/HEAD/")
    a.set_defaults(func=cmd_apply, resumes=lambda args: folder_output(args.out))
