"""Whole-image generation time, pilot vs diffusers, same weights and settings, in one process.

    python -m experiments.bench.pipeline                        # SD 1.5 shapes, 256x256, CPU
    python -m experiments.bench.pipeline --size 512 --dtype fp16   # on a GPU
    python -m experiments.bench.pipeline --size 512 --dtype fp16 --compile --cuda-graphs
    python -m experiments.bench.pipeline --preset tiny --size 128 --steps 4   # a smoke run

Both sides: text encoding of prompt + negative prompt, `--steps` Euler steps with CFG ("leading"
spacing, SD's scheduler config), VAE decode; pilot's `generate` against diffusers'
`StableDiffusionPipeline` (no safety checker). Rows: diffusers eager, diffusers with its UNet
compiled (`--compile`; channels_last and "reduce-overhead" when pilot gets them), pilot eager
and pilot with the speed-up flags (`pilot.diffusion.speed.optimize`). One untimed run each (the
first-call seconds: compilation, graph capture; its image gives the max relative error against
diffusers' float32 image), then `--rounds` interleaved timed runs; the table shows the fastest
run's seconds per image and per step (the least disturbed by other programs on a shared
machine), the ratio to diffusers eager (< 1 is faster) and the peak memory of one run above the
resident weights. Weights are random: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from dataclasses import replace

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel
from transformers import CLIPTokenizer as HFTokenizer

from experiments.bench.common import (
    DTYPES,
    add_speed_arguments,
    check_size,
    check_speed_arguments,
    compile_reference,
    count,
    device_name,
    first_call,
    format_mib,
    format_table,
    max_rel_error,
    memory_label,
    peak_memory_mib,
    speed_settings,
    time_ms,
)
from pilot.diffusion.pipeline import Request, SamplingSettings, generate
from pilot.diffusion.speed import optimize
from pilot.models.clip import CLIP_PRESETS
from pilot.models.clip import CLIPTextModel as PilotText
from pilot.models.tokenizer import CLIPTokenizer
from pilot.models.unet import UNET_PRESETS, UNet
from pilot.models.vae import VAE_PRESETS
from pilot.models.vae import AutoencoderKL as PilotVAE
from pilot.weights.loaders import StableDiffusion
from pilot.weights.save import write_tokenizer

# Options `python -m experiments.bench` passes on to this benchmark.
SHARED_OPTIONS = ("preset", "size", "dtype", "device", "threads", "speed")
PROMPT = "a red brick corridor, thick blue fog, hatched walls"
NEGATIVE = "blurry, low quality"


def build(preset: str, seed: int) -> tuple[StableDiffusion, StableDiffusionPipeline]:
    """A random diffusers pipeline and a pilot bundle holding the same weights."""
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.default("!" if preset == "sd21" else "<|endoftext|>")
    text_cfg = CLIP_PRESETS[preset]
    if preset == "tiny":  # the real vocabulary, so the real tokenizer fits
        text_cfg = replace(
            text_cfg,
            vocab_size=len(tokenizer.vocab),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    unet = UNet2DConditionModel(**UNET_PRESETS[preset].to_diffusers()).eval()
    vae = AutoencoderKL(**VAE_PRESETS[preset].to_diffusers()).eval()
    text = CLIPTextModel(CLIPTextConfig(**text_cfg.to_transformers())).eval()
    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer(tokenizer, folder)
        hf_tokenizer = HFTokenizer.from_pretrained(folder)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae, text, hf_tokenizer, unet, scheduler, None, None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    sd = StableDiffusion(
        unet=_copy(UNet(UNET_PRESETS[preset]), unet),
        vae=_copy(PilotVAE(VAE_PRESETS[preset]), vae),
        text_encoder=_copy(PilotText(text_cfg), text),
        tokenizer=tokenizer,
        prediction_type="epsilon",
    )
    return sd, pipe


def _copy(ours: torch.nn.Module, ref: torch.nn.Module) -> torch.nn.Module:
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.eval()


def diffusers_image(pipe: StableDiffusionPipeline, args) -> torch.Tensor:
    """diffusers' image, (1, 3, H, W) float32 on CPU in [0, 1]."""
    generator = torch.Generator().manual_seed(args.seed)
    out = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        height=args.size,
        width=args.size,
        num_inference_steps=args.steps,
        guidance_scale=args.cfg,
        generator=generator,
        output_type="pt",
    )
    return out.images.float().cpu()


def variants(sd, pipe, args, device, dtype) -> dict:
    """Name -> image function `() -> (1, 3, H, W)` float32 on CPU, models on `device` in `dtype`."""
    sd.to(device, dtype)
    pipe.to(device, dtype)
    request = Request([PROMPT], [NEGATIVE], seeds=[args.seed], width=args.size, height=args.size)
    sampling = SamplingSettings(sampler="euler", schedule="leading", steps=args.steps, cfg=args.cfg)

    runs = {"diffusers eager": lambda: diffusers_image(pipe, args)}
    if args.compile:
        unet = compile_reference(copy.deepcopy(pipe.unet), args)
        components = {**pipe.components, "unet": unet}
        compiled = StableDiffusionPipeline(**components, requires_safety_checker=False)
        compiled.set_progress_bar_config(disable=True)
        runs["diffusers compile"] = lambda: diffusers_image(compiled, args)
    runs["pilot eager"] = lambda: generate(sd, request, sampling)
    settings = speed_settings(args)
    if settings.describe() != "eager":
        fast = optimize(copy.deepcopy(sd), settings)
        runs[f"pilot {settings.describe()}"] = lambda: generate(fast, request, sampling)
    return runs


def measure(runs: dict, args, device: torch.device, expected: torch.Tensor) -> list[list[str]]:
    """Table rows: first call, fastest of the interleaved rounds, peak memory, error."""
    first, errors, retained, seconds = {}, {}, {}, {name: [] for name in runs}
    with torch.inference_mode():
        for name, run in runs.items():
            consume = lambda image: max_rel_error(image, expected)  # noqa: E731
            errors[name], first[name], retained[name] = first_call(run, device, consume)
        for _ in range(args.rounds):
            for name, run in runs.items():
                seconds[name].append(time_ms(run, device, warmup=0, iters=1) / 1e3)
        memory = {name: peak_memory_mib(run, device) for name, run in runs.items()}
    best = {name: min(s) for name, s in seconds.items()}
    return [
        [
            name,
            f"{best[name]:.2f}",
            f"{best[name] / args.steps:.3f}",
            f"{best[name] / best['diffusers eager']:.2f}x",
            f"{first[name]:.1f}",
            format_mib(memory[name], retained[name]),
            f"{errors[name]:.1e}",
        ]
        for name in runs
    ]


def main(argv=None) -> None:
    """Parse arguments, time both pipelines, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sd15", choices=["sd15", "sd21", "tiny"])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=count, default=3, help="timed runs of each, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    add_speed_arguments(parser)
    args = parser.parse_args(argv)
    check_size(parser, args.preset, args.size)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    check_speed_arguments(parser, args, device)

    sd, pipe = build(args.preset, args.seed)
    with torch.inference_mode():
        expected = diffusers_image(pipe.to(device), args)  # the float32 reference image
    rows = measure(variants(sd, pipe, args, device, dtype), args, device, expected)
    print(
        f"txt2img, preset {args.preset}, {args.size}x{args.size} px, {args.steps} Euler steps, "
        f"CFG {args.cfg}, {args.dtype}, {device_name(device)}, torch {torch.__version__}"
    )
    header = ["variant", "s / image", "s / step", "/ diffusers eager", "first call s"]
    header += [memory_label(device), "image max rel err vs fp32"]
    print(format_table(header, rows))


if __name__ == "__main__":
    main()
