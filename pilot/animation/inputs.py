"""What the feedback sampler reads: frame sources (shots, videos), control tracks, the run folder.

- `ShotFrames` / `VideoFrames` (`FrameSource`): a shot folder or a plain video as frames with a
  size, an fps, a flow source and control images per frame; they live in
  `pilot.animation.frame_sources` and import from here too.
- `ControlTrack`: one ControlNet over the whole animation, its control kind and a keyframed scale.
- `FrameStore`: the run folder's frames (PNG) and per-frame noise, each written atomically as it is
  made. The sampler re-reads frame k - 1 from disk, so a resumed run sees exactly the bytes an
  uninterrupted run saw.
- `read_settings` / `check_run_folder` (`check_settings`, `write_settings`): a run folder's
  settings.json, written or checked against a resumed run's.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pilot.animation.frame_sources import GEOMETRY_KINDS as GEOMETRY_KINDS
from pilot.animation.frame_sources import IMAGE_KINDS as IMAGE_KINDS
from pilot.animation.frame_sources import FrameSource as FrameSource
from pilot.animation.frame_sources import ShotFrames as ShotFrames
from pilot.animation.frame_sources import VideoFrames as VideoFrames
from pilot.animation.schedules import Schedule, parse_schedule, schedule_text
from pilot.imageio import atomic_output, from_uint8, read_image, to_uint8, write_png


@dataclass(frozen=True, eq=False)
class ControlTrack:
    """One ControlNet steering every frame.

    Attributes:
        controlnet: The ControlNet model.
        kind: Control image kind, made per frame by the frame source (`depth`, `hatch`...).
        scale: Keyframed conditioning scale: a `Schedule`, or a schedule string or a number,
            parsed (`parse_schedule`).
        start, end: Fractions of each frame's sampling steps where the control acts.
        guess_mode: ControlNet guess mode.
    """

    controlnet: torch.nn.Module
    kind: str
    scale: Schedule | str | float = 1.0
    start: float = 0.0
    end: float = 1.0
    guess_mode: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.scale, Schedule):
            object.__setattr__(self, "scale", parse_schedule(schedule_text(self.scale, "scale")))
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(
                f"control track start={self.start}, end={self.end}: need 0 <= start <= end <= 1"
            )


class FrameStore:
    """A run folder's frames `frames/NNNNNN.png` and noise `state/NNNNNN.npy`, atomic writes.

    The last few frames written or read stay in memory as their 8-bit values, so the feedback
    loop reads its previous frame and its colour reference without decoding PNGs, and gets
    exactly what a resumed run reads from disk. With `write_behind`, frames are encoded and
    written on a writer thread while the next one samples (PNG encoding takes ~60 ms of CPU at
    512 px, a seventh of an H100's 0.42 s feedback frame); a read of a frame not yet on disk
    waits for it, and `flush()` waits for all and re-raises a failed write (so does the next
    `write`). Use it as a context manager: leaving the block, even by an error, waits for the
    frames already made, so a crash loses none of them. Frames being written when the process
    is killed are missing, and a resumed run makes them again.

    Args:
        root: The run folder.
        write_behind: Write PNGs on a background thread.
        keep: How many of the last frames written or read stay in memory (0: every read
            decodes its PNG).
    """

    def __init__(
        self, root: str | os.PathLike, *, write_behind: bool = False, keep: int = 4
    ) -> None:
        self.root = Path(root)
        self.keep = keep
        self._recent: OrderedDict[int, Tensor] = OrderedDict()
        self._pending: dict[int, Future] = {}
        self._writer = (
            ThreadPoolExecutor(1, thread_name_prefix="frame-writer") if write_behind else None
        )

    def frame_path(self, k: int) -> Path:
        """Where frame k's PNG lives (whether or not it is written yet)."""
        return self.root / "frames" / f"{k:06d}.png"

    def has(self, k: int) -> bool:
        """Whether frame k is on disk or being written."""
        return k in self._pending or self.frame_path(k).is_file()

    def read(self, k: int) -> Tensor:
        """Frame k as (1, 3, H, W) in [0, 1]."""
        image = self._recent.get(k)
        if image is None:
            self._wait(k)
            image = read_image(self.frame_path(k))[None]
        self._remember(k, image)
        return image.clone()

    def write(self, k: int, image: Tensor) -> Path:
        """Write frame k ((1, 3, H, W) in [0, 1]) as an 8-bit PNG (see `write_behind`)."""
        for pending in [j for j, future in self._pending.items() if future.done()]:
            self._wait(pending)  # a failed earlier write stops the run here
        array, path = to_uint8(image[0]), self.frame_path(k)
        if self._writer is None:
            write_png(path, array)
        else:
            self._pending[k] = self._writer.submit(write_png, path, array)
        self._remember(k, from_uint8(array)[None])
        return path

    def flush(self) -> None:
        """Wait for the frames being written; re-raise the first failed write."""
        for k in list(self._pending):
            self._wait(k)

    def close(self) -> None:
        """`flush()`, then stop the writer thread; the store can still read."""
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def __enter__(self) -> FrameStore:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        """Close; after an error, the frames it had already made are still written."""
        try:
            self.close()
        except Exception as error:
            if exc is None:
                raise
            # the run's own error stays the one raised; the failed write is noted on it
            note = f"and a frame write failed: {error!r}"
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(note)
            else:
                warnings.warn(note, stacklevel=2)

    def _wait(self, k: int) -> None:
        future = self._pending.pop(k, None)
        if future is not None:
            future.result()

    def _remember(self, k: int, image: Tensor) -> None:
        self._recent[k] = image
        self._recent.move_to_end(k)
        while len(self._recent) > self.keep:
            self._recent.popitem(last=False)

    def noise_path(self, k: int) -> Path:
        """Where frame k's noise (.npy) lives (whether or not it is written yet)."""
        return self.root / "state" / f"{k:06d}.npy"

    def read_noise(self, k: int) -> Tensor:
        """Frame k's noise as written by `write_noise` (float32, on the CPU)."""
        return torch.from_numpy(np.load(self.noise_path(k)))

    def write_noise(self, k: int, noise: Tensor) -> None:
        """Write frame k's noise as float32 .npy, atomically."""
        buffer = io.BytesIO()
        np.save(buffer, noise.detach().cpu().float().numpy())
        with atomic_output(self.noise_path(k)) as tmp:
            tmp.write_bytes(buffer.getvalue())


RESUME_HINT = "use another --run folder, or the original settings"


def read_settings(
    run: Path, hint: str = "use another --run", name: str = "settings.json"
) -> dict | None:
    """`run/settings.json` (or `run/<name>`) as a dict, None if absent; ValueError naming a
    corrupt file."""
    path = run / name
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix it, or {hint}") from None
    if not isinstance(old, dict):
        raise ValueError(f"{path} holds {type(old).__name__}, not a JSON object of settings")
    return old


def check_run_folder(
    run: Path,
    settings: dict,
    hint: str = RESUME_HINT,
    name: str = "settings.json",
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Write `run/settings.json` (or `run/<name>`), or check a resumed run's against it
    (`check_settings`; frames are never touched).

    Raises:
        ValueError: the folder was made with other settings; the message names every key.
    """
    if (old := read_settings(run, hint, name)) is not None:
        check_settings(run, old, settings, hint, defaults)
        return
    write_settings(run, settings, name)


def check_settings(
    run: Path,
    old: dict,
    settings: dict,
    hint: str = RESUME_HINT,
    defaults: Mapping[str, Any] | None = None,
    changes: Sequence[str] = (),
) -> None:
    """ValueError unless `settings` are the `old` ones recorded in the run folder `run`.

    `hint` ends the error message: what the user can do instead. `defaults` holds the values
    of the settings recorded only when not their default: the message shows a missing one as
    its default (`frame_step: 2 -> 1`), not as None. `changes` are differences the caller
    found and described itself (`KEY: ...`, of keys left out of `old` and `settings`), listed
    with the others in the order of their keys.

    Raises:
        ValueError: the folder was made with other settings; the message names every key.
    """
    defaults = defaults or {}
    differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    detail = [
        f"{k}: {old.get(k, defaults.get(k))!r} -> {settings.get(k, defaults.get(k))!r}"
        for k in differ
    ]
    if detail or changes:
        listed = ", ".join(sorted([*detail, *changes]))
        raise ValueError(
            f"run folder {run} was made with other settings ({listed}); its frames are kept: "
            f"{hint} to resume"
        )


def write_settings(run: Path, settings: dict, name: str = "settings.json") -> None:
    """Write `run/settings.json` (or `run/<name>`) atomically."""
    with atomic_output(run / name) as tmp:
        tmp.write_text(json.dumps(settings, indent=1))
