"""Where a half-precision image departs from the float32 one, stage by stage, pilot and diffusers.

    python -m experiments.bench.half_check --size 512 --dtype fp16     # on a GPU
    python -m experiments.bench.half_check --preset tiny --size 64 --device cpu --steps 2

The pipeline benchmark's models and settings (`experiments.bench.pipeline.build`); for each
side, the max relative error against its own float32 run of: the text embeddings (prompt and
negative), the final latents, and the image the half-precision run's latents decode to, by the
VAE in its half precision (without pilot's float32 rule) and by the VAE in float32 (what
sampling alone departs by), with the share of non-finite values. Both sides' images are what
their pipelines return: in [0, 1], clamped (`(x / 2 + 0.5).clamp(0, 1)` of the decoder's
output). Explains a large "image max rel err vs fp32" in the pipeline table.
"""

from __future__ import annotations

import argparse

import torch

from experiments.bench.common import DTYPES, check_size, device_name, format_table, max_rel_error
from experiments.bench.pipeline import NEGATIVE, PROMPT, build
from pilot.diffusion.pipeline import (
    Request,
    SamplingSettings,
    decode_latents,
    encode_text,
    generate_latents,
)

# Options `python -m experiments.bench` passes on to this benchmark.
SHARED_OPTIONS = ("preset", "size", "dtype", "device")


def diffusers_stages(pipe, args) -> dict[str, torch.Tensor]:
    """diffusers' text embeddings, final latents and images decoded in the VAE's dtype and in
    float32."""
    emb, neg = pipe.encode_prompt(PROMPT, pipe.device, 1, True, NEGATIVE)
    latents = pipe(
        prompt_embeds=emb,
        negative_prompt_embeds=neg,
        height=args.size,
        width=args.size,
        num_inference_steps=args.steps,
        guidance_scale=args.cfg,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="latent",
    ).images
    z = latents / pipe.vae.config.scaling_factor
    image = diffusers_image(pipe.vae, z)
    dtype = pipe.vae.dtype
    image32 = diffusers_image(pipe.vae.float(), z)
    pipe.vae.to(dtype)
    stages = {"text": torch.cat([neg, emb]), "latents": latents}
    return {**stages, "image (VAE dtype)": image, "image (float32 VAE)": image32}


def diffusers_image(vae, z: torch.Tensor) -> torch.Tensor:
    """diffusers' VAE decode post-processed as its pipelines do: in [0, 1], clamped."""
    return (vae.decode(z.to(vae.dtype)).sample.float() / 2 + 0.5).clamp(0, 1)


def pilot_stages(sd, args) -> dict[str, torch.Tensor]:
    """pilot's text embeddings, final latents and images decoded in the VAE's dtype and in
    float32."""
    request = Request([PROMPT], [NEGATIVE], seeds=[args.seed], width=args.size, height=args.size)
    sampling = SamplingSettings(sampler="euler", schedule="leading", steps=args.steps, cfg=args.cfg)
    latents = generate_latents(sd, request, sampling)
    image = decode_latents(sd, latents, upcast="never")  # no float32 retry
    image32 = decode_latents(sd, latents, upcast="always")
    context, uncond = encode_text(sd, [PROMPT], [NEGATIVE])
    stages = {"text": torch.cat([uncond, context]), "latents": latents}
    return {**stages, "image (VAE dtype)": image, "image (float32 VAE)": image32}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sd15", choices=["sd15", "sd21", "tiny"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    check_size(parser, args.preset, args.size)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    sd, pipe = build(args.preset, args.seed)
    rows = []
    with torch.inference_mode():
        for name, stages in (("diffusers", diffusers_stages), ("pilot", pilot_stages)):
            model = pipe if name == "diffusers" else sd
            ref = {k: v.float() for k, v in stages(model.to(device, torch.float32), args).items()}
            half = stages(model.to(device, dtype), args)
            for stage, value in half.items():
                finite = torch.isfinite(value).float().mean().item()
                err = max_rel_error(torch.nan_to_num(value.float()), ref[stage])
                big = value.float().abs().nan_to_num(posinf=float("inf")).max().item()
                rows.append([name, stage, f"{err:.1e}", f"{100 * (1 - finite):.2f}%", f"{big:.3g}"])
            model.to("cpu", torch.float32)
    print(f"{args.preset} {args.size}x{args.size}, {args.steps} Euler steps, CFG {args.cfg}, "
          f"{args.dtype} vs fp32, {device_name(device)}, torch {torch.__version__}")  # fmt: skip
    print(format_table(["side", "stage", "max rel err", "non-finite", "max |value|"], rows))


if __name__ == "__main__":
    main()
