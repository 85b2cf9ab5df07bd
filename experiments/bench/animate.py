"""Seconds per frame of the feedback sampler, and the share of flow, VAE, UNet and ControlNet.

    python -m experiments.bench.animate                              # tiny models, 64 px, CPU
    python -m experiments.bench.animate --preset sd15 --size 256 --frames 4 --steps 8
    python -m experiments.bench.animate --preset sd15 --size 512 --device cuda --dtype fp16
    python -m experiments.bench.animate --preset sd15 --size 512 --dtype fp16 --cuda-graphs

Random weights of the preset's shapes (SD 1.5 UNet / VAE / CLIP + a depth ControlNet made from
the UNet), a procedural fly-through shot, the default occlusion-aware loop (`pilot animate`'s
defaults: renoise, fresh noise, LAB colour match) at CFG 7.5. The shot is rendered twice: once
untimed ("frame, no timers": what a user's frame takes), then with each part timed, modules by
forward hooks and the rest by wrapping the callables, synchronised on CUDA (which serialises the
CPU and the GPU, so the timed frame is slower). Parts: flow (exact reprojection with the depth
test), init image (warp of the previous frame + colour match), control image, hint (the
ControlNet's hint encoder, once per frame), VAE, UNet, ControlNet, and other. Frame 0
(txt2img) is left out of the per-frame figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from experiments.bench.common import (
    add_speed_arguments,
    check_size,
    check_speed_arguments,
    device_name,
    format_table,
    speed_settings,
)
from pilot.animation.feedback import FeedbackConfig, FeedbackSampler
from pilot.animation.inputs import ControlTrack, FrameStore, ShotFrames
from pilot.animation.schedules import Schedule, parse_prompt_schedule
from pilot.diffusion.pipeline import SamplingSettings
from pilot.diffusion.speed import optimize, optimize_model
from pilot.models.clip import CLIP_PRESETS, CLIPTextModel
from pilot.models.controlnet import ControlNet
from pilot.models.tokenizer import CLIPTokenizer
from pilot.models.unet import UNET_PRESETS, UNet
from pilot.models.vae import VAE_PRESETS, AutoencoderKL
from pilot.scenes.procedural import fly_through_shot
from pilot.scenes.shot import Shot
from pilot.weights.loaders import StableDiffusion

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Options `python -m experiments.bench` passes on to this benchmark.
SHARED_OPTIONS = ("preset", "size", "dtype", "device", "threads", "speed")


class PartTimer:
    """Wall time spent inside modules and callables, summed per part name."""

    def __init__(self, device: torch.device) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.device = device

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def module(self, name: str, module: torch.nn.Module) -> None:
        start = []
        module.register_forward_pre_hook(lambda m, a: start.append(self._now()))
        module.register_forward_hook(
            lambda m, a, o: self.seconds.__setitem__(
                name, self.seconds[name] + self._now() - start.pop()
            )
        )

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            t0 = self._now()
            out = fn(*args, **kwargs)
            self.seconds[name] += self._now() - t0
            return out

        return timed


def build(preset: str, device, dtype) -> tuple[StableDiffusion, ControlNet]:
    """Random SD of a preset's shapes and a ControlNet copied from its UNet."""
    torch.manual_seed(0)
    tok = CLIPTokenizer.default()
    text = replace(CLIP_PRESETS[preset], vocab_size=len(tok.vocab), bos_token_id=tok.bos_token_id,
                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    sd = StableDiffusion(
        unet=UNet(UNET_PRESETS[preset]).eval().to(device, dtype),
        vae=AutoencoderKL(VAE_PRESETS[preset]).eval().to(device, dtype),
        text_encoder=CLIPTextModel(text).eval().to(device, dtype),
        tokenizer=tok,
        prediction_type="epsilon",
    )
    f = sd.vae.cfg.downsample_factor
    hint = (16, 32, 96, 256)[: f.bit_length()]  # 2^(len - 1) = the VAE factor
    return sd, ControlNet.from_unet(sd.unet, hint_channels=hint).eval().to(device, dtype)


PARTS = ("flow", "init image", "control image", "hint", "VAE", "UNet", "ControlNet")


def render_pass(sd, net, shot: Path, run: Path, args, timer: PartTimer | None = None) -> float:
    """Seconds per frame of frames 1 .. n - 1 (frame 0, txt2img, warms up and is left out).

    With `timer`, each part's time is summed into it: modules by forward hooks, the rest by
    wrapping the callables (each synchronised on CUDA, which serialises the CPU and the GPU).
    """
    frames = ShotFrames(Shot(shot))
    flow = frames.flow
    if timer is not None:
        flow = timer.wrap("flow", frames.flow)
        frames.control_image = timer.wrap("control image", frames.control_image)
    with FrameStore(run, write_behind=True) as store:  # as `pilot animate` writes
        sampler = FeedbackSampler(
            sd, SamplingSettings(sampler="euler", steps=args.steps, cfg=7.5),
            FeedbackConfig(strength=str(args.strength)), frames,
            parse_prompt_schedule("a hatched corridor"), store,
            tracks=[ControlTrack(net, "depth", Schedule.constant(1.0))], flow=flow,
        )  # fmt: skip
        if timer is not None:
            sampler.init_image = timer.wrap("init image", sampler.init_image)
        sampler.render(0)
        store.flush()
        if timer is not None:
            timer.seconds.clear()
        start = time.perf_counter()
        for k in range(1, args.frames):
            sampler.render(k)
        store.flush()  # the last frame's PNG: the writes overlap the next frames, not this one
        return (time.perf_counter() - start) / (args.frames - 1)


def run(args) -> dict:
    """The frame's time untimed, then again with every part timed.

    Returns:
        `s_per_frame` (no timers), `s_per_frame_timed` and `parts` (name -> s/frame in the
        timed pass, "other" what no part covers: sampler and guidance arithmetic, colour
        conversion of the written frame, the waits the timers add).
    """
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    sd, net = build(args.preset, device, dtype)
    settings = speed_settings(args)  # the hooks below go on the wrappers (CUDA graphs)
    sd, net = optimize(sd, settings), optimize_model(net, settings)
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot"
        fly_through_shot(shot, n_frames=args.frames, width=args.size, height=args.size)
        plain = render_pass(sd, net, shot, Path(tmp) / "plain", args)
        timer = PartTimer(device)
        timer.module("UNet", sd.unet)
        timer.module("ControlNet", net)
        timer.module("hint", net.controlnet_cond_embedding)  # once per frame, outside forward
        timer.module("VAE", sd.vae.encoder)
        timer.module("VAE", sd.vae.decoder)
        timed = render_pass(sd, net, shot, Path(tmp) / "timed", args, timer)
    n = args.frames - 1
    parts = {name: timer.seconds[name] / n for name in PARTS}
    parts["other"] = timed - sum(parts.values())
    return {"s_per_frame": plain, "s_per_frame_timed": timed, "parts": parts}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=("tiny", "sd15", "sd21"), default="tiny")
    p.add_argument("--size", type=int, default=64, help="shot side in pixels")
    p.add_argument("--frames", type=int, default=5, help="frames rendered (first one excluded)")
    p.add_argument("--steps", type=int, default=8, help="steps of the full schedule")
    p.add_argument("--strength", type=float, default=0.5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_speed_arguments(p)
    args = p.parse_args(argv)
    check_size(p, args.preset, args.size)
    check_speed_arguments(p, args, torch.device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    s = result["s_per_frame_timed"]
    rows = [[name, f"{t:.3f}", f"{100 * t / s:.1f}%"] for name, t in result["parts"].items()]
    rows.append(["frame, parts timed", f"{s:.3f}", "100%"])
    plain = result["s_per_frame"]
    rows.append(["frame, no timers", f"{plain:.3f}", f"{100 * plain / s:.1f}%"])
    print(f"{device_name(torch.device(args.device))}, {args.preset} {args.size}x{args.size}, "
          f"{args.dtype}, {speed_settings(args).describe()}, {args.steps} steps, strength "
          f"{args.strength}, CFG 7.5, 1 ControlNet, {args.frames - 1} frames")  # fmt: skip
    print(format_table(["part", "s/frame", "share"], rows))


if __name__ == "__main__":
    main()
