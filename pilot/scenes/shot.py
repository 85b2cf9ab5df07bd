"""Shot folders: the passes and cameras of one camera move, frame by frame, on disk.

A shot is a folder (format "pilot-shot", version 1)::

    shot.json              metadata and cameras (below); written last, so it marks a complete shot
    .shot-unfinished       present while a `ShotWriter` fills the folder (removed by `close()`)
    .shot-resume/          a resumable writer's settings and frame records (below), until `close()`
    .pilot-lock            a writer's lock (`pilot.locks`): one writer per folder at a time
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

Pixel centres are integer coordinates (top-left pixel centre = (0, 0)). This module reads shots
(`Shot`, `Frame`) and holds the format's constants and checks; `pilot.scenes.shot_writer` writes
them (`ShotWriter`, `write_pass`, `remove_frames`, `written_settings`...), and its names are
importable from here too. Both import only numpy at load time so the Blender bridge can write
shots from Blender's own Python; reading returns torch tensors.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pilot.locks import LOCK_FILE

if TYPE_CHECKING:  # at run time `__getattr__` imports them: shot_writer imports this module
    from pilot.scenes.shot_writer import START_OVER as START_OVER
    from pilot.scenes.shot_writer import ShotWriter as ShotWriter
    from pilot.scenes.shot_writer import png_bytes as png_bytes
    from pilot.scenes.shot_writer import remove_frames as remove_frames
    from pilot.scenes.shot_writer import write_pass as write_pass
    from pilot.scenes.shot_writer import written_settings as written_settings

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


def pass_file(root: Path, p: str, k: int) -> Path:
    """Path of pass `p` of frame `k` in the shot folder `root` (PNG or float32 .npy)."""
    return root / p / frame_name(k, "png" if p in PNG_PASSES else "npy")


def _check_array(p: str, k: int, a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Frame k's array of pass `p` as an array, checked for shape (and uint8 for PNG passes)."""
    a = np.asarray(a)
    want = _shape(p, height, width)
    if a.shape != want:
        raise ValueError(f"frame {k}: {p} has shape {a.shape}, expected {want}")
    if p in PNG_PASSES and a.dtype != np.uint8:
        raise ValueError(f"frame {k}: {p} must be uint8 (0-255), got {a.dtype}")
    return a


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
        if entry.name == LOCK_FILE:  # a writer's lock (`pilot.locks`), left by a killed one
            continue
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
    if not root.is_dir() or not any(e.name != LOCK_FILE for e in root.iterdir()):
        return
    if not ((root / UNFINISHED).is_file() or _is_shot(root) or _holds_only_frames(root)):
        raise ValueError(
            f"{root} is not empty and holds no shot (no {FORMAT} shot.json): pass a new or "
            "empty folder, so nothing of yours is overwritten"
        )


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
        return pass_file(self.root, p, k)

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


WRITER_NAMES = frozenset(
    {
        "_save_atomic",
        "png_bytes",
        "_save_frame",
        "_clear",
        "remove_frames",
        "written_settings",
        "START_OVER",
        "_brief",
        "_differences",
        "_read_records",
        "ShotWriter",
        "write_pass",
        "_write_meta",
    }
)  # the names that moved to `pilot.scenes.shot_writer`


def __getattr__(name: str) -> Any:
    """The writing side's names (`WRITER_NAMES`), importable from here as before they moved to
    `pilot.scenes.shot_writer`; imported on first use, since that module imports this one."""
    if name in WRITER_NAMES:
        from pilot.scenes import shot_writer

        return getattr(shot_writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
