"""Writing shot folders: `ShotWriter` (frame by frame, resumable), `write_pass`, and the
helpers that clear a folder and remove frame files. What a writer left is read back by
`pilot.scenes.shot_resume` (`written_settings`...), whose names import from here too.

The folder format, which folders a writer may go into and how a writer given settings
resumes are documented in one place, the docstring of `pilot.scenes.shot` (which re-exports
this module's names). Imports only numpy at load time (Blender's own Python).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pilot.locks import folder_lock
from pilot.scenes.shot import (
    CONVENTIONS,
    FORMAT,
    FRAME_FILE,
    PASSES,
    PNG_PASSES,
    RESUME,
    UNFINISHED,
    VERSION,
    Shot,
    _check_array,
    check_camera,
    check_fps,
    check_resolution,
    check_writable,
    frame_name,
    pass_file,
)
from pilot.scenes.shot_resume import (
    START_OVER,
    _brief,
    _differences,
    _read_records,
    written_settings,
)


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


def _save_frame(
    root: Path, p: str, k: int, a: np.ndarray, height: int, width: int, sync: bool = False
) -> None:
    """Check frame k's array of pass `p` and write it atomically (PNG or float32 .npy)."""
    a = _check_array(p, k, a, height, width)
    (root / p).mkdir(exist_ok=True)
    if p in PNG_PASSES:
        _save_atomic(pass_file(root, p, k), png_bytes(a), sync)
    else:
        f = io.BytesIO()
        np.save(f, a.astype(np.float32))
        _save_atomic(pass_file(root, p, k), f.getvalue(), sync)


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


class ShotWriter:
    """Write a shot frame by frame (numpy arrays); `close()` writes shot.json.

    The folder must be new, empty, a shot folder or an unfinished one (`check_writable`). The
    first `add` removes the shot already there (its shot.json first), so an interrupted writer
    leaves an unfinished shot, never the old shot.json over new frames; run it again.

    Given `settings`, the writer resumes (module docstring): `frames` holds the frames kept from
    an interrupted writer of the same settings and the next `add` is frame `len(frames)`;
    `complete` says the folder holds the finished shot of these settings (`close()` then writes
    nothing). Each frame's files and record are synced to disk as it is added.

    The writer holds the folder's lock (`pilot.locks.folder_lock`) from its creation until
    `close()` (or the end of its `with` block, or its process): a second writer of the same
    folder, in another process, fails at once and writes nothing.

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
        pilot.locks.FolderInUseError: another process writes the folder (a ValueError).
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
        self._lock = folder_lock(self.root)  # creates the folder
        self._lock.__enter__()
        try:
            shutil.rmtree(self.root / RESUME / "scratch", ignore_errors=True)  # a killed renderer's
            if self.settings is not None and not force:
                self._resume()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Let another writer have the folder (`close()` does it; a no-op once released)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(None, None, None)

    def __enter__(self) -> ShotWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        """Release the folder (an error leaves the frames added so far, as a kill would)."""
        self.release()

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
        shot.json's path, and release the folder. A `complete` writer only removes a stale
        marker."""
        try:
            return self._close()
        finally:
            self.release()

    def _close(self) -> Path:
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
