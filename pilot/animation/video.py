"""Writing frame sequences as GIF (Pillow) and MP4 (OpenCV), atomically.

Frames are uint8 RGB arrays (H, W, 3), all the same size, from any iterable (a generator reading
them from disk one at a time keeps a long sequence out of memory). Each writer renders into a
temporary file next to the target and `os.replace`s it, so a reader (or a killed training) never
sees a half-written video; a write killed mid-way leaves only its temp file
`.{stem}.{random}{suffix}`, which `remove_temp_files` clears.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pilot.imageio import TEMP_RANDOM, decode_image

VIDEO_SUFFIXES = (".gif", ".mp4")
# Largest frame side written: OpenCV's mp4v writer opens frames up to 8190 px a side and refuses
# 8192 (odd sides are padded to even ones). A GIF could take 65535, but is held to the same:
# frames that large stay under Pillow's decompression-bomb limit (89.5 M pixels) when read back,
# and one frame's arrays stay within a few GB while it is made.
MAX_VIDEO_SIDE = 8190


def check_video_path(path: str | os.PathLike, fps: float) -> None:
    """ValueError unless `path` has a video suffix, can become a file (it is not a folder and
    no folder above it is a file) and `fps` is a positive frame rate (call it before making the
    frames, so bad arguments cost nothing)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(
            f"{path}: unknown video suffix {suffix!r} (expected one of {VIDEO_SUFFIXES})"
        )
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a video file")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{path}: {parent} is a file, not a folder")
    _check_fps(path, fps)


def check_video_size(path: str | os.PathLike, height: int, width: int) -> None:
    """ValueError unless frames of `height` x `width` are at most `MAX_VIDEO_SIDE` a side;
    call it before making the frames."""
    if max(height, width) > MAX_VIDEO_SIDE:
        raise ValueError(
            f"{path}: frames of {width}x{height} px are too large "
            f"(at most {MAX_VIDEO_SIDE} px a side)"
        )


def _check_fps(path: str | os.PathLike, fps: float) -> None:
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"{path}: fps={fps} must be a positive frame rate")


def _check_frames(frames: Iterable[np.ndarray]) -> tuple[int, int, Iterator[np.ndarray]]:
    """(H, W) of the first frame, and the frames, each checked as it is drawn: ValueError
    naming the first that is not uint8 (H, W, 3)."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError("no frames to write")
    h, w = first.shape[:2]

    def checked() -> Iterator[np.ndarray]:
        for i, frame in enumerate(itertools.chain([first], frames)):
            if frame.dtype != np.uint8 or frame.shape != (h, w, 3):
                raise ValueError(
                    f"frame {i} is {frame.dtype} {frame.shape}, expected uint8 ({h}, {w}, 3) RGB"
                )
            yield frame

    return h, w, checked()


def _temp_path(path: Path) -> Path:
    """A new empty file `.{stem}.{8 random characters}{suffix}` next to `path` (mkstemp's
    naming; `remove_temp_files` finds the ones a killed writer left)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; written files are ordinary shared outputs
    return Path(tmp)


def remove_temp_files(
    folder: str | os.PathLike,
    stem: str = "*",
    suffixes: Sequence[str] = (".png",),
    *,
    min_age: float = 0.0,
) -> list[Path]:
    """Delete the temp files that writes killed mid-way left in `folder`; returns them. Call it
    where no other process writes (a locked folder), or give `min_age`; for known outputs,
    `pilot.imageio.remove_stale_temps` clears only theirs.

    Args:
        folder: where the targets are written (a missing folder holds none).
        stem: glob pattern of the target names without suffix, e.g. "timelapse".
        suffixes: target suffixes, e.g. (".gif", ".mp4").
        min_age: leave temp files changed less than this many seconds ago (a write another
            process is making).
    """
    found = []
    now = time.time()
    for suffix in suffixes:
        for path in Path(folder).glob(f".{stem}.{'?' * 8}{suffix}"):
            if TEMP_RANDOM.fullmatch(path.name[-len(suffix) - 8 : len(path.name) - len(suffix)]):
                try:
                    if now - path.stat().st_mtime >= min_age:
                        found.append(path)
                except FileNotFoundError:  # its writer finished meanwhile
                    pass
    for path in found:
        path.unlink(missing_ok=True)
    return sorted(found)


def _gif_durations(fps: float) -> Iterator[int]:
    """Display times of GIF frames in ms: multiples of 10 (a GIF counts hundredths of a second)
    whose running sum stays within 5 ms of `k * 1000 / fps` (a constant 120 ms would play 8 fps
    at 8.3); 20 ms each above 50 fps (browsers play shorter frames slower)."""
    if fps > 50:
        yield from itertools.repeat(20)
    for k in itertools.count():
        yield 10 * (round((k + 1) * 100 / fps) - round(k * 100 / fps))


def _timed(frame: np.ndarray, duration: int) -> Image.Image:
    image = Image.fromarray(frame)
    image.info["duration"] = duration  # PIL's GIF writer reads each frame's own
    return image


def write_gif(frames: Iterable[np.ndarray], path: str | os.PathLike, *, fps: float = 8) -> Path:
    """Write an endlessly looping GIF; returns the path."""
    _check_fps(path, fps)
    h, w, frames = _check_frames(frames)
    check_video_size(path, h, w)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        images = map(_timed, frames, _gif_durations(fps))  # one RGB frame at a time
        next(images).save(tmp, format="GIF", save_all=True, append_images=images, loop=0)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_mp4(frames: Iterable[np.ndarray], path: str | os.PathLike, *, fps: float = 8) -> Path:
    """Write an MP4 (MPEG-4 part 2, 'mp4v', which OpenCV's wheels encode without ffmpeg).

    Odd frame sizes are padded by one pixel of black (most players need even sides).
    """
    _check_fps(path, fps)
    h, w, frames = _check_frames(frames)
    check_video_size(path, h, w)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    pad_h, pad_w = h % 2, w % 2
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w + pad_w, h + pad_h))
    try:
        if not writer.isOpened():
            raise OSError(f"{path}: OpenCV cannot open an mp4v video writer here")
        for frame in frames:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)))
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        os.replace(tmp, path)
    finally:
        writer.release()
        tmp.unlink(missing_ok=True)
    return path


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, *, fps: float = 8) -> Path:
    """Write a GIF or an MP4, chosen by the suffix of `path`."""
    check_video_path(path, fps)
    if Path(path).suffix.lower() == ".gif":
        return write_gif(frames, path, fps=fps)
    return write_mp4(frames, path, fps=fps)


def read_frame(path: str | os.PathLike) -> np.ndarray:
    """An image file as a uint8 RGB array (H, W, 3) (`pilot.imageio.decode_image`); ValueError
    naming an unreadable file."""
    return decode_image(path, "RGB")


def check_image_path(path: str | os.PathLike) -> None:
    """ValueError naming the path unless its suffix is an image format Pillow writes."""
    suffix = Path(path).suffix.lower()
    if suffix not in Image.registered_extensions():
        raise ValueError(
            f"{path}: unknown image suffix {suffix!r} (e.g. .png, .jpg; a video: .mp4, .gif)"
        )


def write_frame(frame: np.ndarray, path: str | os.PathLike) -> Path:
    """Write one RGB frame as an image (format from the suffix), atomically."""
    path = Path(path)
    check_image_path(path)  # before the folder is made
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        Image.fromarray(frame).save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [-1, 1] -> uint8 in [0, 255] (values outside are clipped)."""
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
