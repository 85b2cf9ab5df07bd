"""`pilot animate`: the feedback sampler over a shot (or a video) into a resumable run folder.

Run folder (default: the output path without its suffix, plus `.run`)::

    settings.json        everything that decides the pixels, the source's fingerprint, the
                         weights files' hashes and the resolved dtype included
                         (`_animate_checks`); a re-run must match it, checked before any model
                         loads; written once the models have loaded
    frames/NNNNNN.png    every frame, written atomically as soon as it is made
    state/NNNNNN.npy     per-frame noise (only with --noise warped)
    metrics.json         warp error and flicker index (a shot's geometry flow whatever --flow
                         made the frames, DIS for a video), seconds per frame
    .pilot-lock          while a run writes the folder (`pilot.locks`): a second `pilot animate`
                         on the same folder stops at once, naming the first one's pid

Re-running the same command continues at the first missing frame; since frame k is made from
frame k - 1 as read back from disk and from seeds derived from the base seed and k, the result is
byte-identical to an uninterrupted run (a --frames range whose first frame would be made
from a frame not on disk is refused). The MP4 and a GIF beside it are written at the source's
fps (or --fps); for a video, `note:` lines on stderr say what they do not keep (its audio).

`--frames START:END:STEP` renders every STEP-th frame (Python's slice): frame k is made from
frame k - STEP, warped by the flow between those two source frames (geometry or estimated flow;
Blender's motion pass links adjacent frames only, so `--flow vector` is refused), and plays at
the source's fps / STEP unless --fps says (the clip keeps its duration). Frames keep their
source numbers (frames/000010.png is source frame 10), so schedules, prompts and seeds are read
at source frame numbers whatever the step; the step is a run setting (`frame_step` in
settings.json, recorded when not 1: a folder made with another step is refused).

The speed flags (--channels-last, --compile, --cuda-graphs, --batch, --vae-batch) change float
rounding, not what is computed, so they are not settings: a run may be resumed with other ones.
--vae-upcast decides the precision of a half-precision VAE decode, so it is one (recorded in
settings.json when not the default "auto", so folders made before the flag resume with the
default), and so are --preview-decoder (a fast draft: frames decoded by a distilled
preview decoder; recorded when given), each --lora FILE[:SCALE], --vae and --embedding
(each recorded when given).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pilot.commands import _vae_embeddings as vae_embeddings
from pilot.commands._animate_outputs import finish, output_fps, remove_run_temps
from pilot.commands._lora import add_lora_argument, apply_loras, read_loras
from pilot.commands._speed_args import add_speed_arguments, speed_settings
from pilot.commands.generate import check_preview, load_preview

if TYPE_CHECKING:  # annotations only: `pilot --help` imports no torch
    import torch

    from pilot.animation.feedback import FeedbackConfig
    from pilot.animation.inputs import ControlTrack, FrameSource, FrameStore
    from pilot.animation.schedules import PromptSchedule
    from pilot.diffusion.pipeline import SamplingSettings
    from pilot.diffusion.speed import SpeedSettings
    from pilot.models.preview import PreviewDecoder
    from pilot.weights.loaders import StableDiffusion

DTYPES = ("float32", "float16", "bfloat16")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `pilot animate` to the subparsers `sub`."""
    p = sub.add_parser(
        "animate",
        help="animate Stable Diffusion over a shot (or restyle a video) with the feedback sampler",
        description="Render a shot frame by frame: each frame is img2img from the previous one "
        "warped by optical flow, steered by ControlNets fed from the shot's passes.",
    )
    p.add_argument("--model", required=True, help="diffusers folder, .safetensors/.ckpt, repo id")
    add_lora_argument(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shot", type=Path, help="shot folder (pilot shot render/export)")
    src.add_argument("--video", type=Path, help="video file or frame folder to restyle")
    p.add_argument("--prompt", required=True, help='prompt, or keyed "0: a | 24: b" / JSON')
    p.add_argument("--negative-prompt", default="", help="negative prompt for every frame")
    p.add_argument("--controlnet", action="append", default=[], metavar="KIND=PATH",
                   help="ControlNet per control kind (depth, normal, hatch, hatched, canny, "
                   "softedge, lineart, image); repeatable")  # fmt: skip
    p.add_argument("--control-scale", default="1.0", help="ControlNet scale schedule")
    p.add_argument(
        "--strength", default="0.5", help='img2img strength schedule, "0:(0.6), 24:(0.4)"'
    )
    p.add_argument("--cfg", default="7.5", help="guidance scale schedule")
    p.add_argument("--seed", type=int, default=0, help="base seed (frame k: seed + k)")
    p.add_argument("--seed-schedule", default=None, help="seed per frame as a schedule of t")
    p.add_argument("--interpolation", choices=("linear", "step", "smooth"), default="linear")
    p.add_argument("--noise", choices=("fresh", "fixed", "warped"), default="fresh")
    p.add_argument("--occlusion", choices=("ignore", "renoise", "inpaint"), default="renoise")
    p.add_argument("--fresh-strength", type=float, default=1.0,
                   help="strength where disoccluded (renoise, inpaint); at least the frame's "
                   "--strength, which it is where lower (default 1)")  # fmt: skip
    p.add_argument("--dilate", type=int, default=0, help="grow the disocclusion mask (pixels)")
    p.add_argument("--hidden-share", type=float, default=0.0,
                   help="a latent cell is disoccluded when more than this share of its pixels "
                   "was not seen (default 0: any pixel)")  # fmt: skip
    p.add_argument(
        "--color-reference", type=int, default=0, help="LAB colour reference frame; -1 off"
    )
    p.add_argument("--blend", type=float, default=0.0, help="mix of the warped previous frame")
    p.add_argument("--blend-space", choices=("latent", "pixel"), default="pixel")
    p.add_argument("--source-mix", type=float, default=0.0, help="video mode: source frame share")
    p.add_argument("--flow", choices=("geometry", "vector", "estimated"), default="geometry",
                   help="flow source for shots (videos always use estimated DIS flow)")  # fmt: skip
    p.add_argument("--depth-per", choices=("shot", "frame"), default="shot",
                   help="depth control normalised over the whole shot (steady) or per frame "
                   "(as the tiny ControlNet and the demo)")  # fmt: skip
    p.add_argument("--sampler", default="euler", help="sampler name (default euler)")
    p.add_argument("--schedule", default="karras", help="sigma schedule (default karras)")
    p.add_argument("--steps", type=int, default=20, help="steps of the full schedule")
    p.add_argument("--frames", default=None, metavar="START:END[:STEP]",
                   help="frame range, END exclusive; STEP: every STEP-th frame, played at the "
                   "source's fps / STEP (schedules stay keyed by source frame)")  # fmt: skip
    p.add_argument("--width", type=int, default=None, help="video mode: resize width")
    p.add_argument("--height", type=int, default=None, help="video mode: resize height")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate of the output (default: the shot's or video's, 24 for a "
                   "folder of frames, divided by the --frames STEP)")  # fmt: skip
    p.add_argument("--device", default=None, help="torch device (default cuda if present)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default fp16 on GPU, else fp32")
    vae_embeddings.add_arguments(p)
    add_speed_arguments(p)
    p.add_argument("--preview-decoder", type=Path, default=None, metavar="FOLDER",
                   help="decode the frames with this preview decoder instead of the VAE (a "
                   "fast draft; `pilot train preview_decoder`)")  # fmt: skip
    p.add_argument("--batch", type=int, default=1,
                   help="frames sampled at once where they depend on no other frame (strength "
                   "1, --occlusion ignore, no blend, noise not warped); default 1")  # fmt: skip
    p.add_argument("--run", type=Path, default=None, help="run folder (default OUT.run)")
    p.add_argument("--out", type=Path, required=True, help="output .mp4 (a .gif is written too)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_animate, resumes=True)


# FeedbackConfig fields whose `pilot animate` flag is not `--` + the field's name, dashed
FLAGS = {"seed": "--seed-schedule"}
# `check_schedules`' errors by how they start, and the flag at fault
SCHEDULE_FLAGS = {"strength schedule": "--strength", "seed schedule": "--seed-schedule",
                  "base seed": "--seed"}  # fmt: skip


def feedback_config(args: argparse.Namespace) -> FeedbackConfig:
    """`FeedbackConfig` from the arguments (schedules are checked here, before any loading);
    an error names the flag at fault."""
    from dataclasses import fields

    from pilot.animation.feedback import FeedbackConfig
    from pilot.animation.schedules import parse_schedule

    schedules = {
        "--strength": args.strength,
        "--cfg": args.cfg,
        "--seed-schedule": args.seed_schedule,
        "--control-scale": args.control_scale,
    }
    for flag, text in schedules.items():
        try:
            if text is not None:
                parse_schedule(text, args.interpolation)
        except ValueError as e:
            raise ValueError(f"{flag} {text!r}: {e}") from e
    try:
        return FeedbackConfig(
            strength=args.strength, cfg=args.cfg, seed=args.seed_schedule, noise=args.noise,
            occlusion=args.occlusion, fresh_strength=args.fresh_strength, dilate=args.dilate,
            hidden_share=args.hidden_share,
            color_reference=None if args.color_reference < 0 else args.color_reference,
            blend=args.blend, blend_space=args.blend_space, source_mix=args.source_mix,
            interpolation=args.interpolation,
        )  # fmt: skip
    except ValueError as e:
        raise flag_error(e, [f.name for f in fields(FeedbackConfig)]) from e


def flag_error(error: ValueError, names: Sequence[str]) -> ValueError:
    """A config's error in the terms of its flag: "dilate must be >= 0, ..." -> "--dilate must
    be >= 0, ..." where the message starts with one of the field `names`; else `error`."""
    message = str(error)
    field = next((name for name in names if message.split()[0] == name), None)
    if field is None:
        return error
    return ValueError(FLAGS.get(field, "--" + field.replace("_", "-")) + message[len(field) :])


def open_frames(args: argparse.Namespace) -> FrameSource:
    """The frame source: a shot folder or a video."""
    from pilot.animation.inputs import ShotFrames, VideoFrames
    from pilot.scenes.shot import Shot

    if args.shot is not None:
        return ShotFrames(Shot(args.shot), flow=args.flow, depth_per=args.depth_per)
    return VideoFrames(args.video, width=args.width, height=args.height, fps=args.fps)


def load_tracks(
    args: argparse.Namespace,
    frames: FrameSource,
    sd: StableDiffusion,
    device: torch.device,
    dtype: torch.dtype,
    speed: SpeedSettings,
) -> list[ControlTrack]:
    """One `ControlTrack` per --controlnet KIND=PATH, checked against the source and model,
    sped up by `speed` (a `SpeedSettings`)."""
    import pilot
    from pilot.animation.inputs import ControlTrack
    from pilot.animation.schedules import parse_schedule
    from pilot.diffusion.control import check_controlnet_fits
    from pilot.diffusion.speed import optimize_model

    scale = parse_schedule(args.control_scale, args.interpolation)
    tracks = []
    for entry in args.controlnet:
        kind, path = controlnet_arg(entry)
        net = pilot.load_controlnet(path, dtype=dtype, device=device)
        check_controlnet_fits(sd, net, path)
        tracks.append(ControlTrack(optimize_model(net, speed), kind, scale))
    return tracks


def controlnet_arg(entry: str) -> tuple[str, str]:
    """`KIND=PATH` -> (kind, path)."""
    kind, sep, path = entry.partition("=")
    if not sep or not kind or not path:
        raise ValueError(f"--controlnet {entry!r}: expected KIND=PATH, e.g. depth=models/cn-depth")
    return kind, path


def cmd_animate(args: argparse.Namespace) -> int:
    """Check everything, load the models, render the missing frames, write videos and metrics."""
    import torch

    import pilot
    from pilot.animation.feedback import check_prompts
    from pilot.animation.inputs import FrameStore, read_settings, write_settings
    from pilot.commands import _animate_checks as checks
    from pilot.commands import default_dtype
    from pilot.diffusion.speed import optimize
    from pilot.locks import folder_lock

    settings, config, prompts, frames, todo, device = check_arguments(args)
    speed = speed_settings(args, device)
    dtype_name = args.dtype or default_dtype(device)
    dtype = getattr(torch, dtype_name)
    run = args.run or args.out.with_suffix(".run")
    with folder_lock(run):  # one process per run folder (`pilot.locks`), before any loading
        loras = read_loras(args.lora)  # a missing file fails here, not in its hashing
        chosen = checks.run_settings(args, frames, dtype_name, todo.step)
        old = read_settings(run)  # settings are checked before the slow loading
        if old is not None:
            chosen = checks.as_recorded(old, chosen, device)
            checks.check_settings(run, old, chosen)
        checks.check_range_start(run, config, todo)
        preview = load_preview(args.preview_decoder, device, dtype)  # small: before the model
        sd = pilot.load_pipeline(args.model, dtype=dtype, device=device, vae=args.vae)
        apply_loras(sd, loras)
        vae_embeddings.load_embeddings(sd, args)
        check_frame_size(args, frames, sd)
        sd = optimize(sd, speed)
        check_preview(preview, sd, args.preview_decoder)
        tracks = load_tracks(args, frames, sd, device, dtype, speed)
        check_prompts(sd.tokenizer, prompts, args.negative_prompt, todo)
        if old is None:  # recorded once everything loaded: a failed load records nothing
            write_settings(run, chosen)
        remove_run_temps(run, args.out)
        with FrameStore(run, write_behind=True) as store:  # a crash still writes the frames made
            seconds = render_frames(
                args, sd, settings, config, frames, prompts, store, tracks, todo, preview
            )
            summary = finish(args, frames, store, todo, run, seconds)
    done = f"wrote {args.out}, {args.out.with_suffix('.gif')} (frames and metrics in {run})"
    print(json.dumps(summary, indent=2) if args.json else done)
    if args.video is not None:  # what the output does not keep: audio, variable timing
        for note in frames.notes(args.out, todo, output_fps(args, frames, todo.step)):
            print(f"note: {note}", file=sys.stderr)
    return 0


def check_arguments(
    args: argparse.Namespace,
) -> tuple[SamplingSettings, FeedbackConfig, PromptSchedule, FrameSource, range, torch.device]:
    """Everything checkable before loading a model, the source opened: (`SamplingSettings`,
    `FeedbackConfig`, `PromptSchedule`, frame source, frame range, device). Every schedule is
    evaluated at every frame of the range, so a bad value fails before the first frame."""
    from pilot.animation.feedback import check_schedules
    from pilot.animation.schedules import parse_prompt_schedule, parse_schedule
    from pilot.animation.video import check_video_path
    from pilot.commands import _animate_checks as checks
    from pilot.commands import resolve_device
    from pilot.diffusion.pipeline import SamplingSettings, check_size

    try:
        settings = SamplingSettings(sampler=args.sampler, schedule=args.schedule, steps=args.steps)
    except ValueError as e:  # "steps must be >= 1" -> "--steps must be >= 1"
        raise flag_error(e, ["steps"]) from e
    config = feedback_config(args)
    scale = parse_schedule(args.control_scale, args.interpolation)  # ScheduleError early
    prompts = parse_prompt_schedule(args.prompt, args.interpolation)
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    device = resolve_device(args.device)
    if args.out.suffix.lower() != ".mp4":
        raise ValueError(f"--out {args.out}: expected a .mp4 path (a .gif is written beside it)")
    checks.check_source_arguments(args)
    frames = open_frames(args)
    check_size(frames.height, frames.width, factor=1)  # the VAE's: `check_frame_size`
    todo = checks.frame_range(args.frames, len(frames))
    seeds = None if config.seed is None else config.schedule("seed")
    late = {"--prompt": prompts, "--strength": config.schedule("strength"),
            "--cfg": config.schedule("cfg"), "--control-scale": scale,
            "--seed-schedule": seeds}  # fmt: skip
    checks.note_late_keys(late, len(frames))
    check_video_path(args.out, output_fps(args, frames, todo.step))  # not after the last frame
    checks.check_frame_step(args, todo)
    checks.check_color_reference(args.color_reference, len(frames), todo)
    vae_embeddings.check_paths(args)
    for entry in args.controlnet:
        frames.check_kind(controlnet_arg(entry)[0])  # before the slow model load
    try:
        check_schedules(config, [scale] * len(args.controlnet), args.seed, todo)
    except ValueError as e:  # "strength schedule '1.5' gives ..." -> "--strength: strength ..."
        flag = next((f for text, f in SCHEDULE_FLAGS.items() if str(e).startswith(text)), None)
        if flag is None:
            raise
        raise ValueError(f"{flag}: {e}") from e
    return settings, config, prompts, frames, todo, device


def check_frame_size(args: argparse.Namespace, frames: FrameSource, sd: StableDiffusion) -> None:
    """ValueError unless the frames' size is a multiple of the loaded model's VAE factor,
    naming the shot, the video or --width / --height."""
    from pilot.diffusion.pipeline import check_vae_multiple

    prefix, hint = "--", ""
    if args.shot is not None:
        prefix, hint = f"shot {frames.name} ", "; render or export the shot at another --size"
    elif args.width is None:
        prefix, hint = f"video {frames.name} ", "; pass --width/--height to resize it"
    sizes = {f"{prefix}width": frames.width, f"{prefix}height": frames.height}
    check_vae_multiple(sizes, sd.vae.cfg.downsample_factor, args.model, hint)


def render_frames(
    args: argparse.Namespace,
    sd: StableDiffusion,
    settings: SamplingSettings,
    config: FeedbackConfig,
    frames: FrameSource,
    prompts: PromptSchedule,
    store: FrameStore,
    tracks: Sequence[ControlTrack],
    todo: range,
    preview: PreviewDecoder | None = None,
) -> list[float]:
    """Render the frames of `todo` missing from the store (decoded by `preview` when given);
    returns seconds per rendered frame."""
    from tqdm import tqdm

    from pilot.animation.feedback import FeedbackSampler

    sampler = FeedbackSampler(
        sd, settings, config, frames, prompts, store,
        negative_prompt=args.negative_prompt, tracks=tracks, base_seed=args.seed,
        vae_upcast=args.vae_upcast, vae_batch=args.vae_batch, decoder=preview,
        frame_step=todo.step,
    )  # fmt: skip
    missing = [k for k in todo if not store.has(k)]
    seconds = []
    with tqdm(total=len(todo), initial=len(todo) - len(missing), unit="frame") as bar:
        for ks, per_frame in sampler.render_missing(missing, args.batch):
            seconds += [per_frame] * len(ks)
            bar.set_postfix(frame=ks[-1], s_per_frame=f"{seconds[-1]:.2f}")
            bar.update(len(ks))
    return seconds
