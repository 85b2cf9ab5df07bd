"""What a writer left in a shot folder, read back before writing: for resuming and refusing.

`written_settings` says whether `root` holds a finished shot or an unfinished resumable one, and
with which settings; `_read_records` lists the frames an interrupted resumable writer finished
(records whose pass files are all there). `START_OVER` and `_differences` word the refusals of
`pilot.scenes.shot_writer.ShotWriter` (which re-exports these names) and the Blender bridge. The
resume format is documented in `pilot.scenes.shot`. Imports only numpy at load time (Blender's
own Python).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

from pilot.scenes.shot import (
    FORMAT,
    PASSES,
    RESUME,
    UNFINISHED,
    check_camera,
    frame_name,
    pass_file,
)


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
        files = [pass_file(root, p, k) for p in these if p in PASSES]
        if (passes is not None and these != passes) or not all(f.is_file() for f in files):
            break
        frames.append(frame)
        passes = these
    return frames, passes
