"""Shot folders: the passes and cameras of one camera move, frame by frame, on disk.

A shot is a folder (format "pilot-shot", version 1)::

    shot.json              metadata and cameras (below); written last, so it marks a complete shot
    .shot-unfinished       present while a `ShotWriter` fills the folder (removed by `close()`)
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

shot.json::

    {"format": "pilot-shot", "version": 1, "width": W, "height": H, "fps": 24.0,
     "units": "metres", "far": 1000.0, "passes": ["depth", "normals", ...],
     "conventions": {...},                  # the axis and pixel conventions, spelled out
     "provenance": {"source": "blender", ...},
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
FRAME_FILE = re.compile(r"\.?\d{6}\.(npy|png)(\.tmp)?")  # a frame file, or its temporary
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


def _save_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
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


def _save_frame(root: Path, p: str, k: int, a: np.ndarray, height: int, width: int) -> None:
    """Check frame k's array of pass `p` and write it atomically (PNG or float32 .npy)."""
    a = _check_array(p, k, a, height, width)
    (root / p).mkdir(exist_ok=True)
    if p in PNG_PASSES:
        _save_atomic(root / p / frame_name(k, "png"), png_bytes(a))
    else:
        f = io.BytesIO()
        np.save(f, a.astype(np.float32))
        _save_atomic(root / p / frame_name(k, "npy"), f.getvalue())


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
    """Mark `root` unfinished, then remove its old shot.json and frame files (other files stay).

    The marker comes first, so the folder is always recognised as a shot of ours.
    """
    (root / UNFINISHED).touch()
    (root / "shot.json").unlink(missing_ok=True)
    remove_frames(root / p for p in PASSES)


def remove_frames(folders: Iterable[Path]) -> None:
    """Remove the frame files (`frame_name`, and their temporaries) from each folder, then the
    folder if that left it empty; other files stay, missing folders are skipped."""
    for folder in folders:
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if FRAME_FILE.fullmatch(f.name):
                f.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()


class ShotWriter:
    """Write a shot frame by frame (numpy arrays); `close()` writes shot.json.

    The folder must be new, empty, a shot folder or an unfinished one (`check_writable`). The
    first `add` removes the shot already there (its shot.json first), so an interrupted writer
    leaves an unfinished shot, never the old shot.json over new frames; run it again.

    Args:
        root: output folder (created).
        width, height: resolution in pixels (> 0).
        fps: frames per second of the move (finite, > 0).
        far: depth stored where nothing was hit.
        provenance: free-form description of the source, stored in shot.json.
    """

    def __init__(
        self,
        root: str | Path,
        width: int,
        height: int,
        fps: float = 24.0,
        far: float = 1000.0,
        provenance: dict[str, Any] | None = None,
    ):
        self.root, self.width, self.height = Path(root), width, height
        check_resolution(width, height, str(self.root))
        check_fps(fps, str(self.root))
        check_writable(self.root)
        self.meta = {"fps": float(fps), "far": float(far), "provenance": provenance or {}}
        self.frames: list[dict[str, Any]] = []
        self.passes: list[str] | None = None
        self.root.mkdir(parents=True, exist_ok=True)

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
        if k == 0:  # a bad first frame leaves the folder as it was
            _clear(self.root)
        for p in given:
            _save_frame(self.root, p, k, checked[p], self.height, self.width)
        src = k if source_frame is None else int(source_frame)
        cam = {"K": np.asarray(K).tolist(), "c2w": np.asarray(c2w).tolist()}
        self.frames.append({"source_frame": src, **cam})

    def close(self) -> Path:
        """Write shot.json (atomically), remove the unfinished marker, return shot.json's path."""
        if not self.frames:
            raise ValueError(f"{self.root}: a shot needs at least one frame")
        meta = {"format": FORMAT, "version": VERSION, "width": self.width, "height": self.height}
        meta.update(self.meta, units="metres", passes=self.passes, conventions=CONVENTIONS)
        meta["frames"] = self.frames
        path = self.root / "shot.json"
        _save_atomic(path, json.dumps(meta, indent=1).encode())
        (self.root / UNFINISHED).unlink(missing_ok=True)
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
