"""`pilot demo`: the whole pipeline out of the box, with the tiny SD this project trains itself.

One call renders a procedural corridor fly-through, animates it twice with the tiny Stable
Diffusion + its depth ControlNet (same prompt, seeds and dials): *independent* frames (per-frame
txt2img, `pilot.animation.compare.independent`) and *feedback* frames (the occlusion-aware
feedback sampler), and measures how much the loop steadies the video (warp error with the
shot's exact flow). Output folder::

    settings.json         everything that decides the pixels, with a hash of the weights
    shot/                 the fly-through: depth, normals, motion, colour render (pilot/scenes)
    independent/frames/   NNNNNN.png, per-frame txt2img + depth control
    feedback/frames/      NNNNNN.png, the feedback sampler
    demo.mp4              the feedback frames, upscaled
    side_by_side.mp4      depth control | independent | feedback, upscaled
    contact_sheet.png     a few frames: passes | independent | feedback
    metrics.json          warp error and flicker of both, their ratio, timings, settings

Every file is written atomically. Re-running into the same folder with the same settings and
weights resumes: finished frames are kept, missing ones made (frame k is made from frame k - 1
as read back from disk, so the result equals an uninterrupted run); other settings or other
weights are refused, naming what differs. A non-empty folder that is not a demo folder is
refused too, and so is a folder another demo process is writing (`pilot.locks`; the hidden
`.pilot-lock` is there while a demo runs).

Frames are written as they are made and none is kept: the metrics, videos and contact sheet
are made reading them back one at a time (`pilot.demo_outputs`, whose public names import
from here too), so the memory does not grow with the number of frames.

Weights: `<weights>/pipeline` (`pilot.load_pipeline`) and `<weights>/controlnet_depth`
(`pilot.load_controlnet`); by default the ones shipped in `pilot/assets/tiny_sd`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pilot.demo_outputs import OUTPUTS as OUTPUTS
from pilot.demo_outputs import SHEET_SIDE as SHEET_SIDE
from pilot.demo_outputs import VIDEO_SIDE as VIDEO_SIDE
from pilot.demo_outputs import measure as measure
from pilot.demo_outputs import summary as summary
from pilot.demo_outputs import upscale as upscale
from pilot.demo_outputs import write_outputs as write_outputs
from pilot.locks import LOCK_FILE

if TYPE_CHECKING:  # torch is imported where it is used, so `pilot --help` stays light
    import torch

    from pilot.animation.feedback import FeedbackConfig
    from pilot.animation.inputs import ControlTrack
    from pilot.animation.schedules import PromptSchedule
    from pilot.diffusion.pipeline import SamplingSettings
    from pilot.weights.loaders import StableDiffusion

TRAIN_HINT = (
    "train the tiny SD with experiments/tiny_sd/train.sh (it exports to runs/tiny_sd/export) "
    "and pass --weights runs/tiny_sd/export"
)


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo; the defaults run in about 1.5 minutes on one CPU core.

    Attributes:
        frames: Frames of the fly-through.
        size: Frame side in pixels (the tiny SD is trained at 64), a multiple of the
            pipeline's VAE factor (8 in the tiny SD; checked by `run_demo`, which knows it).
        steps: Steps of the full sampling schedule.
        strength: Feedback img2img strength of pixels seen in the previous frame.
        fresh_strength: Strength of the latent cells the previous frame did not see (see
            `hidden_share`; `FeedbackConfig.fresh_strength`, >= strength; 1 = from pure noise).
        hidden_share: Share of a latent cell's pixels that must be unseen for the cell to count
            as not seen (`FeedbackConfig.hidden_share`; 0 = any pixel).
        cfg: Classifier-free guidance scale.
        control_scale: Depth ControlNet scale.
        prompt: Prompt, in the captions' grammar (`pilot.data.captions`), or keyed prompts.
        sampler, schedule: Names in `pilot.diffusion.SAMPLERS` / `SCHEDULES`.
        seed: Base seed (frame k: seed + k, the same in both passes).
        shot_seed: Seed of the procedural corridor.
        rows: Frames shown in the contact sheet.
        depth_per: Depth control normalised per "frame" (what the tiny ControlNet was trained
            on, `pilot.data.captioned`) or over the whole "shot".
        batch: Frames sampled at once where they depend on no other frame (the whole
            independent pass, `pilot.animation.compare.render_video`). It does not change the
            pixels beyond float rounding, so it is not one of the settings a resume must match.
    """

    frames: int = 48
    size: int = 64
    steps: int = 12
    strength: float = 0.4
    fresh_strength: float = 0.7
    hidden_share: float = 0.25
    cfg: float = 3.0
    control_scale: float = 1.0
    prompt: str = "red brick corridor, thick blue fog"
    sampler: str = "euler"
    schedule: str = "karras"
    seed: int = 0
    shot_seed: int = 0
    rows: int = 6
    depth_per: str = "frame"
    batch: int = 4

    def __post_init__(self) -> None:
        for name, low in (("frames", 2), ("size", 8), ("steps", 1), ("rows", 1), ("batch", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.depth_per not in ("frame", "shot"):
            raise ValueError(f"depth_per={self.depth_per!r}; valid: frame, shot")
        if not 0.0 < self.strength <= self.fresh_strength <= 1.0:
            raise ValueError(
                f"need 0 < strength <= fresh_strength <= 1, got strength {self.strength}, "
                f"fresh_strength {self.fresh_strength}"
            )


def packaged_weights() -> Path:
    """The tiny SD weights folder shipped inside the package (`pilot/assets/tiny_sd`)."""
    from pilot.weights.hub import PACKAGED_ROOT

    return PACKAGED_ROOT


def weight_folders(weights: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(`<weights>/pipeline`, `<weights>/controlnet_depth`), checked to exist.

    Raises:
        FileNotFoundError: naming the missing folder and how to get the weights.
    """
    root = packaged_weights() if weights is None else Path(weights)
    folders = root / "pipeline", root / "controlnet_depth"
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        what = (
            "this install has no packaged tiny SD weights"
            if weights is None
            else "--weights must hold pipeline/ (a diffusers pipeline folder) and "
            "controlnet_depth/ (a diffusers ControlNet folder)"
        )
        raise FileNotFoundError(f"{', '.join(missing)}: no such folder; {what}; {TRAIN_HINT}")
    return folders


def weights_digest(folders: tuple[Path, ...]) -> str:
    """SHA-256 over the relative paths and bytes of every file in `folders` (16 hex digits)."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(f"{folder.name}/{path.relative_to(folder)}".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_demo(
    out_dir: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    config: DemoConfig | None = None,
    threads: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Render, animate twice (independent, feedback), measure and write the demo folder.

    Args:
        out_dir: Output folder (module docstring); resumed when it holds this demo's frames.
        weights: Folder with `pipeline/` and `controlnet_depth/`; None = the packaged weights.
        config: Settings; None = `DemoConfig()`.
        threads: torch CPU threads for the run (restored afterwards); None keeps torch's.
        device: torch device, as `--device` takes it (`pilot.commands.resolve_device`, checked
            before any work); None = cuda if present, else cpu.
        progress: Show a progress bar per pass.
        log: Where the summary lines go (None: silent).

    Returns:
        The metrics written to `metrics.json`.

    Raises:
        FileNotFoundError: missing weights folders (the message says how to train them).
        ValueError: bad settings, or an output folder of another run, or one another process
            is writing (`pilot.locks.FolderInUseError`).
    """
    import torch

    from pilot.animation.inputs import check_run_folder
    from pilot.commands import resolve_device
    from pilot.locks import folder_lock

    config = config or DemoConfig()
    out = Path(out_dir)
    dials = sampling_dials(config)  # bad names and schedules fail before any work
    device = resolve_device(None if device is None else str(device))  # as generate / animate
    folders = weight_folders(weights)
    check_size(config, folders[0])
    settings = {**pixel_settings(config), "weights_sha256": weights_digest(folders)}
    _check_out_dir(out)
    with folder_lock(out):  # one process per demo folder (`pilot.locks`)
        check_run_folder(out, settings, hint="pass another --out, or the original settings")
        remove_demo_temps(out)
        start = time.perf_counter()
        with _torch_threads(threads):
            seconds = {"shot": _timed(lambda: render_shot(out / "shot", config))}
            load_start = time.perf_counter()
            sd, tracks = load_models(folders, config, device)
            seconds["load"] = time.perf_counter() - load_start
            timing = animate_passes(out, sd, tracks, dials, config, progress)
            metrics = measure(out, config)  # both read the frames from disk one at a time
            write_outputs(out, config)
        seconds.update({k: v for k, v in timing.items() if k != "rendered_now"})
        seconds["total"] = time.perf_counter() - start
        metrics.update(
            seconds={k: None if v is None else round(v, 3) for k, v in seconds.items()},
            rendered_now=timing["rendered_now"],
            weights=str(folders[0].parent.resolve()),
            device=str(device),
            batch=config.batch,
            threads=torch.get_num_threads() if threads is None else threads,
            settings=settings,
        )
        _write_json(out / "metrics.json", metrics)
    if log is not None:
        log(summary(out, metrics))
    return metrics


def remove_demo_temps(out: Path) -> None:
    """Delete the temporary files that writes killed mid-way left in the (locked) demo folder:
    frames, noise, videos, sheet, JSON. The shot's writer clears its own (`pilot.scenes`)."""
    from pilot.animation.video import remove_temp_files

    remove_temp_files(out, suffixes=(".json", ".mp4", ".png"))
    for name in ("independent", "feedback"):
        remove_temp_files(out / name / "frames")
        remove_temp_files(out / name / "state", suffixes=(".npy",))


def check_size(config: DemoConfig, pipeline: Path) -> None:
    """ValueError unless the frame size is a multiple of the pipeline folder's VAE factor
    (read from its config, before any frame or setting is written)."""
    from pilot.diffusion.pipeline import check_vae_multiple
    from pilot.weights.loaders import load_config

    factor = load_config(pipeline, "vae").downsample_factor
    check_vae_multiple({"size": config.size}, factor, str(pipeline))


def pixel_settings(config: DemoConfig) -> dict:
    """The config's fields that decide the pixels (all but `batch`): what a resume must match."""
    return {k: v for k, v in asdict(config).items() if k != "batch"}


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    mine = out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir())  # not a lock's
    if mine and not (out / "settings.json").is_file():
        raise ValueError(
            f"--out {out} is not empty and holds no demo (no settings.json): pass a new or "
            "empty folder, so nothing of yours is overwritten"
        )


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    import torch

    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def render_shot(root: Path, config: DemoConfig) -> Path:
    """The procedural fly-through as a shot folder at `root` (kept if already there).

    Rendered beside `root` and renamed onto it, so `root` is either absent or complete.
    """
    from pilot.scenes.procedural import fly_through_shot

    if (root / "shot.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        fly_through_shot(tmp, config.shot_seed, config.frames, config.size, config.size)
        shutil.rmtree(root, ignore_errors=True)  # a folder without shot.json: never finished
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a shot is an ordinary shared output
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def load_models(
    folders: tuple[Path, Path], config: DemoConfig, device: torch.device
) -> tuple[StableDiffusion, list[ControlTrack]]:
    """The pipeline and a depth `ControlTrack` (float32), checked to fit each other."""
    import torch

    import pilot
    from pilot.animation.inputs import ControlTrack
    from pilot.animation.schedules import parse_schedule
    from pilot.diffusion.control import check_controlnet_fits

    pipeline, controlnet = folders
    sd = pilot.load_pipeline(pipeline, dtype=torch.float32, device=device)
    net = pilot.load_controlnet(controlnet, dtype=torch.float32, device=device)
    check_controlnet_fits(sd, net, str(controlnet))
    return sd, [ControlTrack(net, "depth", parse_schedule(str(config.control_scale)))]


def sampling_dials(config: DemoConfig) -> tuple[SamplingSettings, FeedbackConfig, PromptSchedule]:
    """(`SamplingSettings`, feedback `FeedbackConfig`, `PromptSchedule`) of the demo."""
    from pilot.animation.feedback import FeedbackConfig
    from pilot.animation.schedules import parse_prompt_schedule
    from pilot.diffusion.pipeline import SamplingSettings

    return (
        SamplingSettings(sampler=config.sampler, schedule=config.schedule, steps=config.steps),
        FeedbackConfig(
            strength=str(config.strength),
            cfg=str(config.cfg),
            fresh_strength=config.fresh_strength,
            hidden_share=config.hidden_share,
        ),  # fmt: skip
        parse_prompt_schedule(config.prompt),
    )


def animate_passes(
    out: Path,
    sd: StableDiffusion,
    tracks: Sequence[ControlTrack],
    dials: tuple[SamplingSettings, FeedbackConfig, PromptSchedule],
    config: DemoConfig,
    progress: bool,
) -> dict[str, float | None]:
    """Both passes over the shot `out/shot` into `out/<pass>/frames`, resumably, same seeds
    (frame k: seed + k).

    Each frame is written as it is made and none is kept (`render_to_store`); independent
    frames are sampled `config.batch` at a time. Returns the frames made now and their mean
    seconds per pass (`{name}_per_frame`: None if every frame was on disk already).
    """
    from pilot.animation.compare import independent, render_to_store
    from pilot.animation.feedback import FeedbackSampler
    from pilot.animation.inputs import FrameStore, ShotFrames
    from pilot.scenes.shot import Shot

    settings, feedback, prompts = dials
    frames = ShotFrames(Shot(out / "shot"), depth_per=config.depth_per)
    timing = {"rendered_now": 0}
    for name, dials in (("independent", independent(feedback)), ("feedback", feedback)):
        with FrameStore(out / name, write_behind=True) as store:
            sampler = FeedbackSampler(
                sd, settings, dials, frames, prompts, store, tracks=tracks, base_seed=config.seed
            )
            seconds = render_to_store(
                sampler, len(frames), batch=config.batch, progress=progress, desc=name
            )
        timing[f"{name}_per_frame"] = sum(seconds) / len(seconds) if seconds else None
        timing["rendered_now"] += len(seconds)
    return timing


def _write_json(path: Path, data: dict) -> None:
    from pilot.imageio import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
