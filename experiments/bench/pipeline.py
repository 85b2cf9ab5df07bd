"""Whole-image generation time, pilot vs diffusers, same weights and settings, in one process.

    python -m experiments.bench.pipeline                        # SD 1.5 shapes, 256x256, CPU
    python -m experiments.bench.pipeline --size 512 --dtype fp16   # on a GPU

Both sides: text encoding of prompt + negative prompt, `--steps` Euler steps with CFG ("leading"
spacing, SD's scheduler config), VAE decode; pilot's `generate` against diffusers'
`StableDiffusionPipeline` (no safety checker). One untimed run each (its images give the max
relative error), then `--rounds` interleaved timed runs; the table shows the fastest run's
seconds per image and per step (the least disturbed by other programs on a shared machine) and
the ratio pilot / diffusers (< 1 is faster). Weights are random: speed
does not depend on their values.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel
from transformers import CLIPTokenizer as HFTokenizer

from experiments.bench.common import device_name, format_table, max_rel_error, time_ms
from pilot.diffusion.pipeline import Request, SamplingSettings, generate
from pilot.models.clip import CLIP_PRESETS
from pilot.models.clip import CLIPTextModel as PilotText
from pilot.models.tokenizer import CLIPTokenizer
from pilot.models.unet import UNET_PRESETS, UNet
from pilot.models.vae import VAE_PRESETS
from pilot.models.vae import AutoencoderKL as PilotVAE
from pilot.weights.loaders import StableDiffusion
from pilot.weights.save import write_tokenizer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROMPT = "a red brick corridor, thick blue fog, hatched walls"
NEGATIVE = "blurry, low quality"


def build(preset: str, seed: int) -> tuple[StableDiffusion, StableDiffusionPipeline]:
    """A random diffusers pipeline and a pilot bundle holding the same weights."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_PRESETS[preset].to_diffusers()).eval()
    vae = AutoencoderKL(**VAE_PRESETS[preset].to_diffusers()).eval()
    text = CLIPTextModel(CLIPTextConfig(**CLIP_PRESETS[preset].to_transformers())).eval()
    tokenizer = CLIPTokenizer.default("!" if preset == "sd21" else "<|endoftext|>")
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
        text_encoder=_copy(PilotText(CLIP_PRESETS[preset]), text),
        tokenizer=tokenizer,
        prediction_type="epsilon",
    )
    return sd, pipe


def _copy(ours: torch.nn.Module, ref: torch.nn.Module) -> torch.nn.Module:
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.eval()


def main(argv=None) -> None:
    """Parse arguments, time both pipelines, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sd15", choices=["sd15", "sd21"])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]

    sd, pipe = build(args.preset, args.seed)
    sd.to(device, dtype)
    pipe.to(device, dtype)
    request = Request([PROMPT], [NEGATIVE], seeds=[args.seed], width=args.size, height=args.size)
    settings = SamplingSettings(sampler="euler", schedule="leading", steps=args.steps, cfg=args.cfg)

    def run_ours() -> torch.Tensor:
        return generate(sd, request, settings)

    def run_ref() -> torch.Tensor:
        return (
            pipe(
                PROMPT,
                negative_prompt=NEGATIVE,
                height=args.size,
                width=args.size,
                num_inference_steps=args.steps,
                guidance_scale=args.cfg,
                generator=torch.Generator().manual_seed(args.seed),
                output_type="pt",
            )
            .images.float()
            .cpu()
        )

    with torch.inference_mode():
        err = max_rel_error(run_ours(), run_ref())  # also the warm-up of both
        ours, ref = [], []
        for _ in range(args.rounds):
            ours.append(time_ms(run_ours, device, warmup=0, iters=1) / 1e3)
            ref.append(time_ms(run_ref, device, warmup=0, iters=1) / 1e3)
    s_ours, s_ref = min(ours), min(ref)
    rows = [
        ["s / image", f"{s_ours:.2f}", f"{s_ref:.2f}", f"{s_ours / s_ref:.2f}x"],
        ["s / step", f"{s_ours / args.steps:.3f}", f"{s_ref / args.steps:.3f}", ""],
    ]
    print(
        f"txt2img, preset {args.preset}, {args.size}x{args.size} px, {args.steps} Euler steps, "
        f"CFG {args.cfg}, {args.dtype}, {device_name(device)}, torch {torch.__version__}; "
        f"image max rel err {err:.1e}"
    )
    print(format_table(["", "pilot", "diffusers", "pilot/diffusers"], rows))


if __name__ == "__main__":
    main()
