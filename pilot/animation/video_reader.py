"""Reading a video one frame at a time: a file OpenCV decodes, or a folder of frame images.

`open_video(path)` gives a `VideoFile` or a `FrameFolder`: the frame count, an fps and
`read(k)`, frame k as uint8 (H, W, 3) RGB. Nothing is kept in memory but the open decoder, so a
long or large video costs what a few of its frames do. Opening a file decodes it once without
colour conversion (`grab`) to count its frames and read their timestamps: a container's frame
count is an estimate in many formats and wrong in a truncated file. Frames are then decoded in
order; reading back re-opens the file (the feedback loop reads forwards, a frame and the one
before it). Portrait videos come upright: OpenCV applies the rotation metadata.

What the output cannot keep is reported as notes (`VideoFile.notes`): an audio track (found in
MP4/MOV files, whose track list is read here; OpenCV reads no audio), a variable frame rate, and
a file that lists more frames than decode.
"""

from __future__ import annotations

import os
import shlex
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pilot.imageio import decode_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NOT_READ = "not a video OpenCV reads, or a damaged or truncated file"
VFR_TOLERANCE = 0.25  # frame intervals further than this share from the mean: variable rate
TEMPO_TOLERANCE = 1e-3  # an output this near the source's speed keeps its audio in step


def open_video(path: str | os.PathLike) -> VideoFile | FrameFolder:
    """The video at `path`: a `FrameFolder` for a folder, else a `VideoFile`."""
    path = Path(path)
    if path.is_dir():
        return FrameFolder(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file or frame folder")
    return VideoFile(path)


def frame_files(folder: Path) -> list[Path]:
    """The frames of a video given as a folder: its PNG / JPEG files in name order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class FrameFolder:
    """A folder of PNG/JPEG frames (sorted by name) as a video, read one file at a time.

    Attributes:
        files: The frame files; `names[k]` is file k's name (for errors).
        fps: None: a folder has no frame rate of its own.
    """

    fps: float | None = None

    def __init__(self, folder: Path) -> None:
        self.path, self.files = folder, frame_files(folder)
        self.names = [p.name for p in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def size(self, k: int) -> tuple[int, int]:
        """(H, W) of frame k as `read` gives it, from the file's header (EXIF orientation)."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[k]) as image:
                w, h = image.size
                turned = image.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF: rotated 90 degrees
        except (OSError, UnidentifiedImageError):
            return decode_image(self.files[k]).shape[:2]  # raises, naming the file
        return (w, h) if turned else (h, w)

    def read(self, k: int) -> np.ndarray:
        """Frame k as uint8 (H, W, 3) RGB."""
        return decode_image(self.files[k], "RGB")

    def notes(self, out: Path, todo: range, fps: float) -> list[str]:
        """Nothing a frame folder holds is lost."""
        return []


class VideoFile:
    """A video file OpenCV decodes, read in order one frame at a time (module docstring).

    Attributes:
        fps: The frame rate the container reports (the average for a variable rate).
        times: Each frame's timestamp in milliseconds.
        listed: The frame count the container reports.
        audio: Whether the file has an audio track; None where that is unknown (not MP4/MOV).
    """

    def __init__(self, path: Path) -> None:
        import cv2

        self.path = path
        capture = self._open()
        self.times: list[float] = []
        while capture.grab():
            self.times.append(capture.get(cv2.CAP_PROP_POS_MSEC))
        self.fps = capture.get(cv2.CAP_PROP_FPS) or None
        self.listed = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        if not self.times:
            raise ValueError(f"{path}: no frame decodes ({NOT_READ})")
        handlers = _mp4_handlers(path)
        self.audio = None if handlers is None else b"soun" in handlers
        self.names = [f"frame {k}" for k in range(len(self.times))]
        self._capture, self._next = None, 0

    def __len__(self) -> int:
        return len(self.times)

    def _open(self):  # -> cv2.VideoCapture
        import cv2

        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise ValueError(f"{self.path}: OpenCV cannot open it ({NOT_READ})")
        return capture

    def read(self, k: int) -> np.ndarray:
        """Frame k as uint8 (H, W, 3) RGB (decoding forward from the last frame read)."""
        if not 0 <= k < len(self):
            raise IndexError(f"{self.path}: frame {k} of {len(self)}")
        if self._capture is None or k < self._next:
            self.close()
            self._capture, self._next = self._open(), 0
        ok = True
        while ok and self._next < k:
            ok, self._next = self._capture.grab(), self._next + 1
        ok, bgr = self._capture.read() if ok else (False, None)
        self._next += 1
        if not ok:
            self.close()
            raise ValueError(f"{self.path}: frame {k} no longer decodes (the file changed?)")
        return np.ascontiguousarray(bgr[:, :, ::-1])

    def close(self) -> None:
        """Release the decoder (`read` opens it again)."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def notes(self, out: Path, todo: range, fps: float) -> list[str]:
        """What `out`, made from frames `todo` of this video and played at `fps`, does not keep:
        one line each."""
        notes = []
        if self.audio:
            notes.append(self.audio_note(out, todo, fps))
        if self.listed > len(self) and self.audio is not None:  # MP4/MOV: an exact count
            notes.append(
                f"{self.path} lists {self.listed} frames but only the first {len(self)} decode "
                "(truncated or damaged?): those are used"
            )
        if (gaps := variable_rate(self.times)) is not None:
            notes.append(
                f"{self.path} has a variable frame rate (frames {gaps[0]:.0f} to {gaps[1]:.0f} "
                f"ms apart); {out} shows each frame for the same time, so its timing differs"
            )
        return notes

    def audio_note(self, out: Path, todo: range, fps: float) -> str:
        """The audio track left out, and the ffmpeg command that adds it to `out` in step.

        `out` shows source frame `todo[i]` at `i / fps` s, so it plays the source at `tempo` =
        fps * STEP / source fps times its speed. At 1 (the default rate, source fps / STEP) the
        audio from the first frame's time is copied as it is; else it is re-timed by that
        factor with ffmpeg's `atempo` filter (pitch kept; chained within [0.5, 2], the range
        every ffmpeg version takes), so each frame still meets its sound. The result is cut to
        the video's length (`-t`; `-shortest` would cut the video's last frames where the
        re-timed audio ends a little early).
        """
        start = self.times[todo.start] / 1000
        skip = f"-ss {start:g} " if start else ""
        head = f"{self.path} has an audio track; {out} has none (frames only)"
        muxed = shlex.quote(str(out.with_name(out.stem + "_audio.mp4")))  # a shell command
        source_fps = self.fps or _mean_rate(self.times)
        tempo = 1.0 if source_fps is None else fps * todo.step / source_fps
        inputs = (
            f"-i {shlex.quote(str(out))} {skip}-i {shlex.quote(str(self.path))} -map 0:v -map 1:a"
        )
        length = f"-t {len(todo) / fps:.3f} {muxed}"  # the video's length: every frame stays
        if abs(tempo - 1) <= TEMPO_TOLERANCE:
            return f"{head}. To add it: ffmpeg {inputs} -c copy {length}"
        chain = ",".join(f"atempo={f:.6g}" for f in atempo_factors(tempo))
        every = f"1 frame in {todo.step} of " if todo.step > 1 else ""
        return (
            f"{head}, and plays the source at {tempo:.4g}x its speed ({every}a {source_fps:g} "
            f"fps source at {fps:g} fps), so a copy of the audio would drift: re-time it. To add "
            f"it: "
            f"ffmpeg {inputs} -c:v copy -af {chain} {length}"
        )


def atempo_factors(tempo: float) -> list[float]:
    """`tempo` as a product of factors in [0.5, 2] (ffmpeg's `atempo` range before 4.3):
    2s or 0.5s, then the rest."""
    factors = []
    while tempo > 2:
        factors.append(2.0)
        tempo /= 2
    while tempo < 0.5:
        factors.append(0.5)
        tempo /= 0.5
    return [*factors, tempo]


def _mean_rate(times: Sequence[float]) -> float | None:
    """Frames per second from the timestamps `times` (ms); None for fewer than two."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return 1000 * (len(times) - 1) / (times[-1] - times[0])


def variable_rate(times: Sequence[float]) -> tuple[float, float] | None:
    """(shortest, longest) interval between frames at `times` (ms) if one differs from the mean
    by more than `VFR_TOLERANCE` of it (not GIF's rounding to 10 ms), else None."""
    if len(times) < 3:
        return None
    gaps = np.diff(times)
    mean = (times[-1] - times[0]) / (len(times) - 1)
    if mean <= 0 or np.abs(gaps - mean).max() <= VFR_TOLERANCE * mean:
        return None
    return float(gaps.min()), float(gaps.max())


_TRACK_BOXES = (b"moov", b"trak", b"mdia")  # the boxes on the way to a track's handler


def _mp4_handlers(path: Path) -> list[bytes] | None:
    """Handler types of an MP4/MOV file's tracks (b"vide", b"soun"...); None if the file is
    not one (no `ftyp` box first)."""
    with open(path, "rb") as f:
        if f.read(8)[4:] != b"ftyp":
            return None
        return list(_handlers(f, 0, os.fstat(f.fileno()).st_size))


def _handlers(f: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """The `hdlr` handler types in the ISO BMFF boxes between `start` and `end` of `f`."""
    pos = start
    while pos + 8 <= end:
        f.seek(pos)
        size, kind = struct.unpack(">I4s", f.read(8))
        header = 8
        if size == 1:  # a 64-bit size follows
            size, header = struct.unpack(">Q", f.read(8))[0], 16
        elif size == 0:  # to the end of the file
            size = end - pos
        if size < header:  # damaged: stop here
            return
        if kind in _TRACK_BOXES:
            yield from _handlers(f, pos + header, min(pos + size, end))
        elif kind == b"hdlr":
            f.seek(pos + header + 8)  # version + flags, pre_defined
            yield f.read(4)
        pos += size
