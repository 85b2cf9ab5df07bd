"""Shot folders: the passes and cameras of one camera move, frame by frame, on disk.

A shot is a folder (format "pilot-shot", version 1)::

    shot.json              metadata and cameras (below); written last, so it marks a complete shot
    .shot-unfinished       present while a `ShotWriter` fills the folder (removed by `close()`)
    .shot-resume/          a resumable writer's settings and frame records (below), until `close()`
    depth/000000.npy       float32 (H, W): z-depth in metres (distance along the camera's +z axis,
                           not along the ray); finite and > 0; pixels with no surface hold `far`
    normals/000000.npy     optional float32 (H, W, 3): unit normals in CAMERA space (OpenCV axes),
                           facing the camera; (0, 0, 0) where there is no surface
    motion/000000.npy      optional float32 (H, W, 4): flow to the previous frame (dx, dy) then to
                           the next frame (dx, dy), pixels, x right, y down: p_prev = p + m[..., :2]
    image/000000.png       optional 8-bit sRGB RGB
    hatched/000000.png     optional 8-bit grey line drawing, dark ink on white paper (the input
                           of a hatched -> painted conditioner, `pilot conditioner apply`)

Files are numbered by position in the shot (0, 1, ...); `frames[k]["source_frame"]` keeps the
frame number of the source (e.g. Blender's). Float passes are .npy: lossless, no EXR codec needed.

A writer goes into a new or empty folder, a shot folder, or an unfinished one (the marker
above, or nothing but pass folders of frame files); any other folder is refused, so nothing else
is overwritten. Writing over a shot removes its shot.json and frame files before the first new
frame is written: an interrupted re-render leaves an unfinished shot that `Shot` refuses, never
a mix of two scenes.

A writer given `settings` (whatever decides the pixels: source fingerprint, frame range,
samples...) resumes: it keeps what it needs in a hidden folder beside the marker::

    .shot-resume/settings.json          the settings, with width, height, fps and far
    .shot-resume/frames/000000.json     frame 0's camera and passes, written (atomically, synced)
                                        after its pass files: a frame with a record is complete
    .shot-resume/scratch/               a renderer's temporary files (`ShotWriter.scratch`)

A later writer with the same settings keeps frames 0..k-1 (the records up to the first frame
with a missing record or file; later files are removed) and goes on at frame k; other settings
are refused, naming each that differs, until `force=True` starts over. Over a finished shot of
the same settings it has nothing to write (`ShotWriter.complete`); over one of other settings
(or one written without settings) it is refused until `force=True`. shot.json keeps the
settings under "settings"; `close()` removes the hidden folder.

shot.json::

    {"format": "pilot-shot", "version": 1, "width": W, "height": H, "fps": 24.0,
     "units": "metres", "far": 1000.0, "passes": ["depth", "normals", ...],
     "conventions": {...},                  # the axis and pixel conventions, spelled out
     "provenance": {"source": "blender", ...},
     "settings": {...},                     # a resumable writer's settings (absent otherwise)
     "frames": [{"source_frame": 1, "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
                 "c2w": 4x4 camera-to-world, OpenCV camera axes (x right, y down, z forward),
                 world right-handed z-up metres}, ...]}

Pixel centres are integer coordinates (top-left pixel centre = (0, 0)). This module imports only
numpy at load time so the Blender bridge can write shots from Blender's own Python; reading
returns torch tensors.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import re
import shutil
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

FORMAT, VERSION = "pilot-shot", 1
PASSES = ("depth", "normals", "motion", "image", "hatched")  # depth is required
CHANNELS = {"depth": 1, "normals": 3, "motion": 4, "image": 3, "hatched": 1}
PNG_PASSES = ("image", "hatched")  # 8-bit PNG files; the others are float32 .npy
UNFINISHED = ".shot-unfinished"  # marker file: a writer has started and not closed
RESUME = ".shot-resume"  # a resumable writer's settings, frame records and scratch folder
FRAME_FILE = re.compile(r"(\.)?(\d{6})\.(npy|png)(\.tmp)?")  # a frame file, or its temporary
CONVENTIONS = {
    "camera": "OpenCV: x right, y down, z forward; c2w maps camera to world coordinates",
    "world": "right-handed, z up, metres",
    "pixels": "centre of the top-left pixel is (0, 0); x right, y down",
    "depth": "z-depth along the camera z axis in metres; `far` where nothing was hit",
    "normals": "camera space, unit, facing the camera; zero where nothing was hit",
    "motion": "(dx, dy) to previous frame, (dx, dy) to next frame, pixels, y down",
    "hatched": "grey line drawing, 0 ink, 1 paper",
}


def frame_name(k: int, ext: str = "png") -> str:
    """File name of frame k of a pass (or of any frame folder kept beside a shot's passes)."""
    return f"{k:06d}.{ext}"


def _save_atomic(path: Path, data: bytes, sync: bool = False) -> None:
    """Write `data` to a temporary file beside `path`, then rename it onto `path`; `sync`
    flushes the data to disk before the rename (a power cut leaves the old file or the new)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def png_bytes(pixels: np.ndarray) -> bytes:
    """8-bit PNG encoding of a uint8 (H, W, 3) RGB or (H, W) grey array, numpy + zlib only
    (PNG spec, 2003)."""
    h, w = pixels.shape[:2]
    grey = pixels.ndim == 2
    rows = pixels.reshape(h, w * (1 if grey else 3))
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], 1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    head = struct.pack(">IIBBBBB", w, h, 8, 0 if grey else 2, 0, 0, 0)  # colour type 0 = grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + (chunk(b"IEND", b""))
    )


def _check_array(p: str, k: int, a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Frame k's array of pass `p` as an array, checked for shape (and uint8 for PNG passes)."""
    a = np.asarray(a)
    want = _shape(p, height, width)
    if a.shape != want:
        raise ValueError(f"frame {k}: {p} has shape {a.shape}, expected {want}")
    if p in PNG_PASSES and a.dtype != np.uint8:
        raise ValueError(f"frame {k}: {p} must be uint8 (0-255), got {a.dtype}")
    return a


def _save_frame(
    root: Path, p: str, k: int, a: np.ndarray, height: int, width: int, sync: bool = False
) -> None:
    """Check frame k's array of pass `p` and write it atomically (PNG or float32 .npy)."""
    a = _check_array(p, k, a, height, width)
    (root / p).mkdir(exist_ok=True)
    if p in PNG_PASSES:
        _save_atomic(root / p / frame_name(k, "png"), png_bytes(a), sync)
    else:
        f = io.BytesIO()
        np.save(f, a.astype(np.float32))
        _save_atomic(root / p / frame_name(k, "npy"), f.getvalue(), sync)


def _shape(p: str, height: int, width: int) -> tuple[int, ...]:
    """Array shape of one frame of pass `p` on disk: (H, W) for one channel, else (H, W, C)."""
    return (height, width) + ((CHANNELS[p],) if CHANNELS[p] > 1 else ())


def check_camera(K: np.ndarray, c2w: np.ndarray, where: str) -> None:
    """ValueError naming `where` unless K is a valid pinhole matrix and c2w a rigid pose."""
    try:
        K, c2w = np.asarray(K, np.float64), np.asarray(c2w, np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: K and c2w must be matrices of numbers ({e})") from e
    if K.shape != (3, 3) or c2w.shape != (4, 4):
        raise ValueError(f"{where}: K must be 3x3 and c2w 4x4, got {K.shape} and {c2w.shape}")
    if not (np.isfinite(K).all() and np.isfinite(c2w).all()):
        raise ValueError(f"{where}: camera matrices contain NaN or inf")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
        raise ValueError(f"{where}: K is not an invertible pinhole matrix: {K.tolist()}")
    R = c2w[:3, :3]
    if not np.allclose(c2w[3], [0, 0, 0, 1]) or not np.allclose(R.T @ R, np.eye(3), atol=1e-4):
        raise ValueError(f"{where}: c2w is not an invertible rigid pose (rotation + translation)")
    if np.linalg.det(R) < 0:
        raise ValueError(f"{where}: c2w rotation is a reflection (det < 0)")


def check_resolution(width: int, height: int, where: str) -> None:
    """ValueError naming `where` unless width and height are integers > 0."""
    if not all(isinstance(n, Integral) and n > 0 for n in (width, height)):
        raise ValueError(f"{where}: size {width}x{height} must be positive integers")


def check_fps(fps: float, where: str) -> None:
    """ValueError naming `where` unless fps is a finite frame rate > 0."""
    if not (isinstance(fps, Real) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"{where}: fps={fps!r} must be a positive, finite frame rate")


def _check_frames(frames: Any, path: Path) -> None:
    """ValueError naming shot.json (and the frame) unless `frames` is a non-empty list of
    {"K": 3x3, "c2w": 4x4, ...} entries with valid cameras (`check_camera`)."""
    if not isinstance(frames, list) or not frames:
        raise ValueError(f'{path}: "frames" must be a non-empty list, got {json.dumps(frames):.40}')
    for k, fr in enumerate(frames):
        where = f"{path} frame {k}"
        if not isinstance(fr, dict):
            raise ValueError(
                f"{where}: expected an object with K and c2w, got {json.dumps(fr):.40}"
            )
        missing = [key for key in ("K", "c2w") if key not in fr]
        if missing:
            raise ValueError(f"{where}: missing key {missing[0]!r}")
        check_camera(fr["K"], fr["c2w"], where)


def _is_shot(root: Path) -> bool:
    """Whether `root` holds a shot.json of this format (complete or not, readable)."""
    try:
        meta = json.loads((root / "shot.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _holds_only_frames(root: Path) -> bool:
    """Whether every entry of `root` is a pass folder of frame files: an unfinished shot from
    before the marker, or with it removed."""
    for entry in root.iterdir():
        if entry.name not in PASSES or not entry.is_dir():
            return False
        if not all(FRAME_FILE.fullmatch(f.name) and f.is_file() for f in entry.iterdir()):
            return False
    return True


def check_writable(root: Path) -> None:
    """ValueError unless a shot may be written into `root`: new, empty, a shot folder, or an
    unfinished one (a writer's marker, or only pass folders of frame files). Any other folder
    may hold files of the user's."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file, not a shot folder")
    if not root.is_dir() or not any(root.iterdir()):
        return
    if not ((root / UNFINISHED).is_file() or _is_shot(root) or _holds_only_frames(root)):
        raise ValueError(
            f"{root} is not empty and holds no shot (no {FORMAT} shot.json): pass a new or "
            "empty folder, so nothing of yours is overwritten"
        )


def _clear(root: Path) -> None:
    """Mark `root` unfinished, then remove its old shot.json, frame files and resume records
    (other files stay).

    The marker comes first, so the folder is always recognised as a shot of ours.
    """
    (root / UNFINISHED).touch()
    shutil.rmtree(root / RESUME, ignore_errors=True)
    (root / "shot.json").unlink(missing_ok=True)
    remove_frames(root / p for p in PASSES)


def remove_frames(folders: Iterable[Path], start: int = 0) -> None:
    """Remove the frame files (`frame_name`) numbered `start` and up, and every temporary, from
    each folder, then the folder if that left it empty; other files stay, missing folders are
    skipped."""
    for folder in folders:
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            m = FRAME_FILE.fullmatch(f.name)
            if m and (m[4] or int(m[2]) >= start):
                f.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()


def written_settings(root: str | Path) -> tuple[bool, dict | None] | None:
    """What a writer left in `root`: (finished, settings) for a shot.json of this format (its
    "settings", None if it has none) or for an unfinished resumable writer's folder; None when
    there is nothing to resume (no shot, or an unfinished one without settings).

    Raises:
        ValueError: an unreadable resume settings file (named).
    """
    root = Path(root)
    try:
        meta = json.loads((root / "shot.json").read_text())
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict) and meta.get("format") == FORMAT:
        settings = meta.get("settings")
        return True, settings if isinstance(settings, dict) else None
    path = root / RESUME / "settings.json"
    if not ((root / UNFINISHED).is_file() and path.is_file()):
        return None
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        settings = e
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: unreadable resume settings ({settings}); {START_OVER}")
    return False, settings


START_OVER = "start over with --force, or pass another folder"


def _brief(value: Any) -> str:
    """A settings value for a one-line message: SHA-256 digests cut to 12 hex digits, other
    values to 40 characters of JSON."""
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return json.dumps(value[:12])[:-1] + '..."'
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _differences(old: dict, new: dict) -> str:
    """'key: old -> new' for every key whose value differs (`_brief` values)."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {_brief(old.get(k))} -> {_brief(new.get(k))}" for k in keys)


def _read_records(root: Path) -> tuple[list[dict[str, Any]], list[str] | None]:
    """Frames and passes an interrupted resumable writer finished: its records 0, 1, ... up to
    the first one missing or unreadable, or whose pass files are not all there."""
    frames: list[dict[str, Any]] = []
    passes = None
    for k in itertools.count():
        try:
            record = json.loads((root / RESUME / "frames" / frame_name(k, "json")).read_text())
            frame, these = record["frame"], record["passes"]
            check_camera(frame["K"], frame["c2w"], f"record {k}")
        except (OSError, ValueError, KeyError, TypeError):
            break
        ext = {p: "png" if p in PNG_PASSES else "npy" for p in PASSES}
        files = [root / p / frame_name(k, ext[p]) for p in these if p in ext]
        if (passes is not None and these != passes) or not all(f.is_file() for f in files):
            break
        frames.append(frame)
        passes = these
    return frames, passes


class ShotWriter:
    """Write a shot frame by frame (numpy arrays); `close()` writes shot.json.

    The folder must be new, empty, a shot folder or an unfinished one (`check_writable`). The
    first `add` removes the shot already there (its shot.json first), so an interrupted writer
    leaves an unfinished shot, never the old shot.json over new frames; run it again.

    Given `settings`, the writer resumes (module docstring): `frames` holds the frames kept from
    an interrupted writer of the same settings and the next `add` is frame `len(frames)`;
    `complete` says the folder holds the finished shot of these settings (`close()` then writes
    nothing). Each frame's files and record are synced to disk as it is added.

    Args:
        root: output folder (created).
        width, height: resolution in pixels (> 0).
        fps: frames per second of the move (finite, > 0).
        far: depth stored where nothing was hit.
        provenance: free-form description of the source, stored in shot.json.
        settings: JSON-serialisable dict of what decides the frames (width, height, fps and far
            are added); None: nothing is resumed, whatever shot the folder holds is replaced.
        force: with `settings`, start over whatever shot the folder holds.

    Raises:
        ValueError: a folder that holds no shot; with `settings` and not `force`, a finished shot
            of other settings (or of none), or an unfinished one of other settings.
    """

    def __init__(
        self,
        root: str | Path,
        width: int,
        height: int,
        fps: float = 24.0,
        far: float = 1000.0,
        provenance: dict[str, Any] | None = None,
        *,
        settings: dict[str, Any] | None = None,
        force: bool = False,
    ):
        self.root, self.width, self.height = Path(root), width, height
        check_resolution(width, height, str(self.root))
        check_fps(fps, str(self.root))
        check_writable(self.root)
        self.meta = {"fps": float(fps), "far": float(far), "provenance": provenance or {}}
        self.frames: list[dict[str, Any]] = []
        self.passes: list[str] | None = None
        self.settings, self.complete, self._fresh = None, False, True  # fresh: add clears first
        if settings is not None:  # compared as read back from disk (tuples become lists)
            shape = {"width": width, "height": height, "fps": float(fps), "far": float(far)}
            self.settings = json.loads(json.dumps({**settings, **shape}))
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / RESUME / "scratch", ignore_errors=True)  # a killed renderer's
        if self.settings is not None and not force:
            self._resume()

    def _resume(self) -> None:
        """Take over the frames an earlier writer of the same settings left; refuse others."""
        state = written_settings(self.root)
        if state is None:
            return  # nothing to resume: start over at the first add
        finished, old = state
        if old is None:
            source = json.loads((self.root / "shot.json").read_text()).get("provenance", {})
            raise ValueError(
                f"{self.root} holds a finished shot with no recorded settings (source "
                f"{_brief(source.get('source') if isinstance(source, dict) else None)}): "
                f"{START_OVER}"
            )
        if old != self.settings:
            what = "a finished shot" if finished else "an unfinished shot"
            resume = "" if finished else "rerun with its settings to resume it, or "
            raise ValueError(
                f"{self.root} holds {what} of other settings ({_differences(old, self.settings)})"
                f": {resume}{START_OVER}"
            )
        if finished:
            try:
                shot = Shot(self.root)
            except (FileNotFoundError, ValueError) as e:
                raise ValueError(f"{self.root}: finished shot is broken ({e}); {START_OVER}") from e
            self.frames, self.passes, self.complete = list(shot.frames), list(shot.passes), True
            return
        self.frames, self.passes = _read_records(self.root)
        n = len(self.frames)  # later files and records are from an unfinished frame
        remove_frames([self.root / p for p in PASSES], start=n)
        for f in (self.root / RESUME / "frames").glob("*.json"):
            if not f.stem.isdigit() or int(f.stem) >= n:
                f.unlink()
        self._fresh = False

    def scratch(self) -> Path:
        """A folder inside the shot for a renderer's temporary files (`.shot-resume/scratch`,
        created): the next writer empties it and `close()` removes it, so a killed renderer
        leaves no file outside the shot folder, and none for long."""
        (self.root / UNFINISHED).touch()  # the folder stays recognised as a shot of ours
        folder = self.root / RESUME / "scratch"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def add(
        self,
        K: np.ndarray,
        c2w: np.ndarray,
        depth: np.ndarray,
        *,
        normals: np.ndarray | None = None,
        motion: np.ndarray | None = None,
        image: np.ndarray | None = None,
        hatched: np.ndarray | None = None,
        source_frame: int | None = None,
    ) -> None:
        """Append one frame. Arrays are (H, W[, C]); image is uint8 RGB, hatched uint8 grey;
        passes as documented."""
        k = len(self.frames)
        if self.complete:
            raise ValueError(f"{self.root}: the shot is finished ({k} frames), nothing to add")
        check_camera(K, c2w, f"frame {k}")
        arrays = {
            "depth": depth,
            "normals": normals,
            "motion": motion,
            "image": image,
            "hatched": hatched,
        }
        given = [p for p in PASSES if arrays[p] is not None]
        if self.passes is None:
            self.passes = given
        elif given != self.passes:
            raise ValueError(f"frame {k}: passes {given} differ from frame 0's {self.passes}")
        checked = {p: _check_array(p, k, arrays[p], self.height, self.width) for p in given}
        sync = self.settings is not None
        if self._fresh:  # a bad first frame leaves the folder as it was
            _clear(self.root)
            if sync:
                (self.root / RESUME).mkdir()
                settings = json.dumps(self.settings, indent=1).encode()
                _save_atomic(self.root / RESUME / "settings.json", settings, sync=True)
            self._fresh = False
        for p in given:
            _save_frame(self.root, p, k, checked[p], self.height, self.width, sync)
        src = k if source_frame is None else int(source_frame)
        frame = {"source_frame": src, "K": np.asarray(K).tolist(), "c2w": np.asarray(c2w).tolist()}
        if sync:  # after the frame's files: a record says the frame is complete
            (self.root / RESUME / "frames").mkdir(exist_ok=True)
            record = json.dumps({"passes": given, "frame": frame}).encode()
            _save_atomic(self.root / RESUME / "frames" / frame_name(k, "json"), record, sync=True)
        self.frames.append(frame)

    def close(self) -> Path:
        """Write shot.json (atomically), remove the unfinished marker and resume records, return
        shot.json's path. A `complete` writer only removes a stale marker."""
        if not self.frames:
            raise ValueError(f"{self.root}: a shot needs at least one frame")
        path = self.root / "shot.json"
        if not self.complete:
            meta = {
                "format": FORMAT,
                "version": VERSION,
                "width": self.width,
                "height": self.height,
            }
            meta.update(self.meta, units="metres", passes=self.passes, conventions=CONVENTIONS)
            if self.settings is not None:
                meta["settings"] = self.settings
            meta["frames"] = self.frames
            _save_atomic(path, json.dumps(meta, indent=1).encode(), sync=self.settings is not None)
        (self.root / UNFINISHED).unlink(missing_ok=True)
        shutil.rmtree(self.root / RESUME, ignore_errors=True)
        return path


@dataclass(frozen=True)
class Frame:
    """One frame of a shot as torch tensors (channels first); absent passes are None."""

    index: int
    K: Any  # (3, 3) float32
    c2w: Any  # (4, 4) float32
    depth: Any = None  # (1, H, W) metres
    normals: Any = None  # (3, H, W)
    motion: Any = None  # (4, H, W) pixels
    image: Any = None  # (3, H, W) in [0, 1]
    hatched: Any = None  # (1, H, W) in [0, 1], 0 ink


class Shot:
    """A shot folder opened for reading: metadata now, frame files when asked for.

    Opening checks shot.json (keys, resolution, fps, every frame entry and camera) and that
    every frame's files exist; `shot[k]` loads and checks frame k's arrays (shape, finite
    depth), `shot.frame(k, passes)` only some of them. Errors are FileNotFoundError / ValueError
    naming the frame and the file.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / "shot.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no shot.json (not a shot folder, or unfinished)")
        try:
            meta = json.loads(path.read_text())
            self.width, self.height = int(meta["width"]), int(meta["height"])
            self.fps, self.far, frames = float(meta["fps"]), float(meta["far"]), meta["frames"]
            self.passes = list(meta["passes"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: bad or missing key ({e})") from e
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{path}: not a {FORMAT} v{VERSION} file")
        if "depth" not in self.passes or set(self.passes) - set(PASSES):
            raise ValueError(f"{path}: passes {self.passes} must include depth, within {PASSES}")
        check_resolution(self.width, self.height, str(path))
        check_fps(self.fps, str(path))
        _check_frames(frames, path)
        self.meta, self.frames = meta, frames
        for k in range(len(frames)):
            for p in self.passes:
                f = self.file(k, p)
                if not f.is_file():
                    raise FileNotFoundError(f"frame {k}: missing {p} file {f}")

    def __len__(self) -> int:
        return len(self.frames)

    def file(self, k: int, p: str) -> Path:
        """Path of pass `p` of frame `k`."""
        return self.root / p / frame_name(k, "png" if p in PNG_PASSES else "npy")

    def _load(self, k: int, p: str) -> np.ndarray:
        f = self.file(k, p)
        if p in PNG_PASSES:
            import cv2

            a = cv2.imread(str(f), cv2.IMREAD_COLOR if p == "image" else cv2.IMREAD_GRAYSCALE)
            if a is None:
                raise ValueError(f"frame {k}: unreadable {p} {f}")
            a = (a[:, :, ::-1] if a.ndim == 3 else a).astype(np.float32) / 255
        else:
            try:
                a = np.load(f)
            except (OSError, ValueError) as e:  # numpy's advice to allow pickles does not apply
                why = "pickled or object data, not an array of numbers" if "pickle" in str(e) else e
                raise ValueError(f"frame {k}: unreadable {p} file {f} ({why})") from e
        want = _shape(p, self.height, self.width)
        if a.shape != want:
            raise ValueError(f"frame {k}: {f} has shape {a.shape}, shot.json says {want}")
        if not np.isfinite(a).all():
            raise ValueError(f"frame {k}: {f} has {int((~np.isfinite(a)).sum())} NaN/inf values")
        if p == "depth" and (a <= 0).any():
            raise ValueError(f"frame {k}: {f} has {int((a <= 0).sum())} depths <= 0")
        return a

    def __getitem__(self, k: int) -> Frame:
        return self.frame(k)

    def frame(self, k: int, passes: Sequence[str] | None = None) -> Frame:
        """Frame k with `passes` loaded (default: all the shot's), the others None.

        Per-frame work that needs one pass (flow from depth, a control image) reads only its
        files: the colour pass's PNG costs more to read than all the arrays together.
        """
        import torch

        if not -len(self) <= k < len(self):
            raise IndexError(f"{self.root}: frame {k} out of range (shot has {len(self)})")
        passes = self.passes if passes is None else list(passes)
        missing = [p for p in passes if p not in self.passes]
        if missing:
            raise ValueError(f"{self.root}: no {', '.join(missing)} pass (has {self.passes})")
        k = k % len(self)
        fr = self.frames[k]
        data = {}
        for p in passes:
            a = torch.from_numpy(np.ascontiguousarray(self._load(k, p)))
            data[p] = a[None] if a.ndim == 2 else a.permute(2, 0, 1)
        K = torch.tensor(fr["K"], dtype=torch.float32)
        return Frame(k, K, torch.tensor(fr["c2w"], dtype=torch.float32), **data)


def write_pass(shot: Shot, p: str, frames: Iterable[np.ndarray]) -> Path:
    """Add pass `p` to an existing shot, or replace it: one array per frame, in order, as
    `ShotWriter.add` takes them. Each file is written atomically and shot.json lists the pass
    only once every frame is there: a replaced pass leaves shot.json (atomically) when its
    first new frame is ready, so an interrupted call leaves a shot without the pass, never a
    mix of old and new frames (re-run it).

    Returns:
        The path of shot.json.
    """
    if p not in PASSES or p == "depth":
        raise ValueError(f"pass {p!r}: expected one of {PASSES[1:]}")
    frames = iter(frames)
    first = next(frames, None)  # made before anything changes: a bad argument changes nothing
    if first is None:
        raise ValueError(f"{shot.root}: no {p} frames for a shot of {len(shot)}")
    if p in shot.passes:
        _write_meta(shot, [q for q in shot.passes if q != p])
    n = 0
    for k, a in enumerate(itertools.chain([first], frames)):
        if k >= len(shot):
            raise ValueError(f"{shot.root}: more {p} frames than the shot's {len(shot)}")
        _save_frame(shot.root, p, k, a, shot.height, shot.width)
        n = k + 1
    if n != len(shot):
        raise ValueError(f"{shot.root}: {n} {p} frames for a shot of {len(shot)}")
    return _write_meta(shot, [q for q in PASSES if q in shot.passes or q == p])


def _write_meta(shot: Shot, passes: list[str]) -> Path:
    """Rewrite shot.json (atomically) with `passes`; `shot` follows."""
    meta = dict(shot.meta, passes=passes)
    path = shot.root / "shot.json"
    _save_atomic(path, json.dumps(meta, indent=1).encode())
    shot.meta, shot.passes = meta, passes
    return path
