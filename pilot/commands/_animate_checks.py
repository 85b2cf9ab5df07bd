"""`pilot animate`'s checks before the first frame: arguments, the source's fingerprint, the
run settings a resumed run must match, and where a frame range may start.

Kept apart from `pilot.commands.animate` (the command's flow) so each stays a short module.

Run settings beyond the arguments:

- `shot` / `video` hold the source's resolved path (the same source named by another path
  resumes), and `source_fingerprint` its content: `shot.json`'s SHA-256 for a shot (re-rendering
  or re-exporting rewrites it), the bytes of the video file or of the folder's frame images for a
  video, with the frame count and size. A changed source is refused like any other setting.
- `dtype` holds the resolved dtype (fp16 on CUDA, fp32 otherwise, unless --dtype says), so a
  CPU run resumed on a GPU is refused, and `--dtype float32` resumes a default CPU run.
- `model`, `lora` (each --lora as `FILE:SCALE`, recorded when given), `vae` and `embedding`
  (recorded when given) name their files by resolved path (the same file named by another path
  resumes; a packaged model's name or a repo id, which is no local path, as given), and
  `weights_sha256` holds each single file's SHA-256 (first 16 digits; whole file, so its first
  10 are civitai's AutoV2), by setting and path: a file replaced under the same name is refused
  as `lora: style.safetensors changed (sha256 OLD -> NEW)`. A folder (diffusers model or VAE)
  is not hashed, as A1111 hashes none; an embedding's concept folder is, by its embedding file.
  Hashes are cached (`pilot.weights.hashes`), so a checkpoint is read in full once.
- `frame_step` holds the --frames STEP (recorded when not 1). Frames keep their source numbers
  and frame k is made from frame k - STEP, so a frame's pixels depend on the step: a re-run
  with another step is refused (render it into another --run folder). The range itself is not a
  setting: any START:END of the same step resumes, and so does another phase (`1::2` beside
  `0::2`: frames 0 to STEP - 1 each start a chain of their own).

Folders made before these keys resume as before: without `source_fingerprint` the recorded
source path, and without `weights_sha256` the recorded weights paths, are compared resolved
from the current folder (their content was not recorded, so it is not checked), and a recorded
`dtype` of null stands for the default of the device resuming the run (what it meant then; the
device was not recorded).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pilot.commands import default_dtype
from pilot.commands._a1111 import say_hashing
from pilot.commands._lora import parse_lora

if TYPE_CHECKING:  # annotations only: `pilot --help` imports no torch
    import torch

    from pilot.animation.feedback import FeedbackConfig
    from pilot.animation.inputs import FrameSource, FrameStore
    from pilot.animation.schedules import PromptSchedule, Schedule

# Arguments that do not change the pixels: excluded from the settings a re-run must match.
NOT_SETTINGS = ("func", "command", "frames", "out", "run", "json", "device",
                "channels_last", "compile", "cuda_graphs", "prepack", "batch",
                "vae_batch", "fps")  # fmt: skip


# Settings recorded only when not their default (so folders made before them resume), with that
# default as JSON: a missing key is shown as it in the message refusing another value.
RECORDED_DEFAULTS = {"vae_upcast": "auto", "preview_decoder": None, "depth_per": "shot",
                     "lora": [], "frame_step": 1, "vae": None, "embedding": []}  # fmt: skip


def check_source_arguments(args: argparse.Namespace) -> None:
    """ValueError for options that have no effect on the chosen source (or a bad size or
    --fps)."""
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise ValueError(f"--fps {args.fps} must be a positive frame rate")
    if args.shot is not None:
        shot_only = {"--width": args.width, "--height": args.height}
        video = [k for k, v in shot_only.items() if v is not None]
        if args.source_mix:
            video.append("--source-mix")
        if video:
            raise ValueError(
                f"{', '.join(video)}: only for --video; a shot has its own size and no "
                "source frames to mix (render the shot at the size you want)"
            )
        return
    if args.depth_per != "shot":
        raise ValueError("--depth-per applies to a shot's depth; a video has none")
    if (args.width is None) != (args.height is None):
        raise ValueError("--width and --height go together")
    for name in ("width", "height"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} {value} must be a positive number of pixels")


def frame_range(text: str | None, n: int) -> range:
    """`START:END[:STEP]` (END exclusive, START and END may be empty; STEP >= 1, default 1, as
    in a Python slice) checked against a source of n frames."""
    if text is None:
        return range(n)
    parts = text.split(":")
    usage = f"--frames {text!r}: expected START:END or START:END:STEP with integers"
    if len(parts) not in (2, 3):
        raise ValueError(usage)
    parts += [""] * (3 - len(parts))
    try:
        lo, hi, step = (int(p) if p.strip() else d for p, d in zip(parts, (0, n, 1), strict=True))
    except ValueError:
        raise ValueError(usage) from None
    if step < 1:
        raise ValueError(f"--frames {text!r}: STEP {step} must be >= 1 (every STEP-th frame)")
    if not 0 <= lo < hi <= n:
        raise ValueError(f"--frames {text!r} is outside the source's frames 0:{n} (END exclusive)")
    return range(lo, hi, step)


def range_text(todo: range) -> str:
    """`todo` as a --frames value: START:END, with :STEP when not 1."""
    return f"{todo.start}:{todo.stop}" + (f":{todo.step}" if todo.step != 1 else "")


def check_frame_step(args: argparse.Namespace, todo: range) -> None:
    """ValueError for a --frames STEP above 1 with --flow vector: Blender's motion pass holds
    the flow to the adjacent frames only."""
    if todo.step > 1 and args.shot is not None and args.flow == "vector":
        raise ValueError(
            f"--flow vector with --frames {range_text(todo)}: the shot's motion pass links "
            f"adjacent frames only, not frames {todo.step} apart; pass --flow geometry (exact, "
            "from the shot's depth and cameras) or --flow estimated (DIS on its colour pass)"
        )


def check_color_reference(reference: int, n: int, todo: range) -> None:
    """ValueError unless --color-reference is -1 (off) or a frame of the source's n that the
    range's frames are made after (with a STEP, one of START, START +- STEP...)."""
    if not -1 <= reference < n:
        raise ValueError(
            f"--color-reference {reference} is not a frame of the source (0 to {n - 1}, or -1: off)"
        )
    if reference >= 0 and (todo.start - reference) % todo.step:
        raise ValueError(
            f"--color-reference {reference} is not among the frames --frames {range_text(todo)} "
            f"follows (frames {', '.join(map(str, todo[:3]))}... are made from frames "
            f"{todo.step} before them), so none is matched to it; pass --color-reference "
            f"{todo.start} (the range's first frame), or -1 (off)"
        )


def note_late_keys(schedules: dict[str, Schedule | PromptSchedule | None], n: int) -> None:
    """A `note:` per flag whose parsed schedule (None: not given) keys a frame past the
    source's last (n - 1): frames count from 0, so a key at a Blender scene's frame 101 is
    never reached by a 48-frame shot (frames before it move towards its value only by
    interpolation)."""
    import sys

    for flag, schedule in schedules.items():
        late = [] if schedule is None else [k for k in schedule.frames if k > n - 1]
        if late:
            keys = ", ".join(f"{k:g}" for k in late)
            print(
                f"note: {flag} keys frame{'s' if len(late) > 1 else ''} {keys}, past the last "
                f"frame {n - 1} (frames count from 0): never reached, the frames before it only "
                "move towards it",
                file=sys.stderr,
            )


def source_fingerprint(args: argparse.Namespace, frames: FrameSource) -> str:
    """Frame count, size and a SHA-256 of the source's files: shot.json for a shot, the
    video file or the folder's frame images for a video."""
    from pilot.animation.video_reader import frame_files

    digest = hashlib.sha256()
    if args.shot is not None:
        files = [args.shot / "shot.json"]
    elif args.video.is_dir():
        files = frame_files(args.video)  # the files VideoFrames read
    else:
        files = [args.video]
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return f"{len(frames)} frames {frames.width}x{frames.height}, sha256 {digest.hexdigest()[:16]}"


def run_settings(
    args: argparse.Namespace, frames: FrameSource, dtype: str, frame_step: int = 1
) -> dict:
    """The settings a resumed run must match (module docstring), as JSON values."""
    chosen = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS}
    chosen["frame_step"] = frame_step
    for name in ("shot", "video"):
        if chosen[name] is not None:
            chosen[name] = str(Path(chosen[name]).resolve())
    chosen.update(dtype=dtype, source_fingerprint=source_fingerprint(args, frames))
    chosen = {k: v for k, v in chosen.items() if k not in ("vae", "embedding")}
    chosen.update(weights_settings(args))  # --vae and --embedding only when given
    for name, default in RECORDED_DEFAULTS.items():
        if name in chosen and chosen[name] == default:
            del chosen[name]
    return json.loads(json.dumps(chosen, default=str))


def weights_settings(args: argparse.Namespace) -> dict:
    """--model, --lora, --vae and --embedding by resolved path, and `weights_sha256`: the
    hash of each single file (module docstring)."""
    from pilot.weights.hashes import cached_sha256, checkpoint_hash, embedding_hash

    hashes: dict[str, dict[str, str]] = {}

    def named(setting: str, given: str | Path, digest: Callable[[Path], str | None]) -> str:
        path = Path(given).expanduser()
        if not path.exists():  # a packaged model's name or a repo id (checked by the loader)
            return str(given)
        path = path.resolve()
        try:
            sha256 = digest(path)
        except ValueError as e:  # an embedding folder without its file
            raise ValueError(f"--{setting} {e}") from e
        except OSError as e:
            raise ValueError(f"--{setting} {given}: cannot be read ({e.strerror})") from e
        if sha256 is not None:
            hashes.setdefault(setting, {})[str(path)] = sha256[:16]
        return str(path)

    def weights_hash(path: Path) -> str | None:  # None for a folder
        return checkpoint_hash(path, partial(say_hashing, purpose="to fingerprint the run"))

    chosen = {"model": named("model", args.model, weights_hash)}
    # "FILE:SCALE": a.safetensors resumes a.safetensors:1
    chosen["lora"] = [f"{named('lora', path, cached_sha256)}:{scale!r}"
                      for path, scale in map(parse_lora, args.lora)]  # fmt: skip
    if args.vae is not None:
        chosen["vae"] = named("vae", args.vae, weights_hash)
    if args.embedding:
        chosen["embedding"] = [named("embedding", path, embedding_hash) for path in args.embedding]
    return {**chosen, "weights_sha256": hashes}


def as_recorded(old: dict, chosen: dict, device: torch.device) -> dict:
    """`chosen` in the terms of a folder made before a key existed (module docstring)."""
    chosen = dict(chosen)
    if "source_fingerprint" not in old:
        del chosen["source_fingerprint"]
        for name in ("shot", "video"):
            chosen[name] = _as_given(old.get(name), chosen[name])
    if "weights_sha256" not in old:
        del chosen["weights_sha256"]
        for name in ("model", "vae"):
            if name in chosen:
                chosen[name] = _as_given(old.get(name), chosen[name])
        for name, same in (("embedding", _as_given), ("lora", _lora_as_given)):
            was, now = old.get(name), chosen.get(name)
            if isinstance(was, list) and isinstance(now, list) and len(was) == len(now):
                chosen[name] = [same(a, b) for a, b in zip(was, now, strict=True)]
    if "dtype" in old and old["dtype"] is None and chosen["dtype"] == default_dtype(device):
        chosen["dtype"] = None
    return chosen


def _as_given(was: object, now: str | None) -> str | None:
    """`was` (a path recorded as given) where it names the resolved path `now`, else `now`."""
    if isinstance(was, str) and now is not None and str(Path(was).expanduser().resolve()) == now:
        return was
    return now


def _lora_as_given(was: object, now: str) -> str:
    """`_as_given` of a recorded `FILE:SCALE`, the scale compared as a number."""
    if not isinstance(was, str):
        return now
    (was_path, was_scale), (path, scale) = parse_lora(was), parse_lora(now)
    return was if was_scale == scale and _as_given(was_path, path) == was_path else now


def check_settings(run: Path, old: dict, chosen: dict) -> None:
    """ValueError unless `chosen` (`as_recorded`) are the `old` settings of the run folder
    `run`, naming every key that differs, and each weights file changed in place as
    `lora: style.safetensors changed (sha256 OLD -> NEW)`."""
    from pilot.animation.inputs import check_settings as check

    was, now = old.get("weights_sha256"), chosen.get("weights_sha256")
    old, chosen = ({k: v for k, v in d.items() if k != "weights_sha256"} for d in (old, chosen))
    changes = _changed_files(was, now)
    if was != now and not changes and all(old.get(k) == chosen.get(k) for k in old | chosen):
        changes = [f"weights_sha256: {was!r} -> {now!r}"]  # a hand-edited key: as a value
    check(run, old, chosen, defaults=RECORDED_DEFAULTS, changes=changes)


def _changed_files(was: object, now: object) -> list[str]:
    """`SETTING: NAME changed (sha256 OLD -> NEW)` per file hashed in both `weights_sha256`."""
    if not (isinstance(was, dict) and isinstance(now, dict)):
        return []
    changes = []
    for setting in sorted(set(was) & set(now)):
        old, new = was[setting], now[setting]
        if isinstance(old, dict) and isinstance(new, dict):
            changes += [
                f"{setting}: {Path(path).name} changed (sha256 {old[path]} -> {new[path]})"
                for path in sorted(set(old) & set(new))
                if old[path] != new[path]
            ]
    return changes


def check_range_start(run: Path, config: FeedbackConfig, todo: range) -> None:
    """ValueError if the range's first frame is not on disk and would be made from a previous
    frame (k - STEP) that is not either: it would start from scratch, unlike in an
    uninterrupted run."""
    from pilot.animation.feedback import independent_frame
    from pilot.animation.inputs import FrameStore

    store, k, step = FrameStore(run), todo.start, todo.step
    if store.has(k) or independent_frame(config, k, step) or store.has(k - step):
        return
    first = k - step  # the first frame of the missing run before k that can be made now
    while not independent_frame(config, first, step) and not store.has(first - step):
        first -= step
    raise ValueError(
        f"--frames {range_text(todo)}: frame {k} is made from frame {k - step}, which is not "
        f"in {store.root / 'frames'}; made now it would start from scratch, unlike in an "
        f"uninterrupted run: render --frames {range_text(range(first, todo.stop, step))} (from "
        "the first missing frame)"
    )


def check_frame_sizes(todo: range, frames: FrameSource, store: FrameStore) -> None:
    """ValueError naming the first frame of `todo` on disk whose size (from its PNG header) is
    not the source's: checked before any video is written."""
    from PIL import Image

    for k in todo:
        path = store.frame_path(k)
        try:
            with Image.open(path) as image:
                w, h = image.size
        except OSError as e:  # not an image, or missing
            raise ValueError(f"{path}: not a readable image ({e})") from e
        if (h, w) != (frames.height, frames.width):
            raise ValueError(
                f"{path} is {w}x{h}, but {frames.name} is "
                f"{frames.width}x{frames.height}: run folder {store.root} was made from another "
                "source; use another --run folder"
            )
