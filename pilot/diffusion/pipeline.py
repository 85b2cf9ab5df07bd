"""Stable Diffusion generation: txt2img, img2img and inpainting on the k-diffusion contract.

The pipeline is a few plain functions over a `pilot.StableDiffusion` bundle, each readable on its
own: `encode_text` (prompts -> CLIP embeddings), `encode_images` / `decode_latents` (VAE with the
scaling factor, optional tiling and slicing), `start_latents` (noise or noised init latents,
img2img by slicing the sigmas) and `sample` (denoiser wrappers + a sampler from `SAMPLERS`).
`generate` chains them for the common case; the feedback sampler calls the parts itself.

Two parts live in modules of their own and import from here too: `pilot.diffusion.vae_codec`
(`encode_images`, `decode_latents`, `check_decode`, `VAEUpcast`) and
`pilot.diffusion.pipeline_config` (`SamplingSettings`, `Request` and the value checks:
`check_size`, `check_seed`, `check_sigmas`, `check_tile`, ...).

Conventions: images are (B, 3, H, W) float in [0, 1] at the API (the VAE sees [-1, 1]);
latents are VAE-scaled, (B, 4, H/8, W/8); sampling runs in float32 on the UNet's device while
the models run in their own dtype; masks are 1 where the image is repainted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from pilot.diffusion.control import Control, check_controls, control_wrapper
from pilot.diffusion.denoisers import Denoiser, make_denoiser
from pilot.diffusion.guidance import InpaintDenoiser, guide
from pilot.diffusion.pipeline_config import SEED_RANGE as SEED_RANGE
from pilot.diffusion.pipeline_config import (
    Request,
    SamplingSettings,
    check_sigmas,
    check_size,
    check_tile,
)
from pilot.diffusion.pipeline_config import check_seed as check_seed
from pilot.diffusion.pipeline_config import check_unit_range as check_unit_range
from pilot.diffusion.pipeline_config import check_vae_multiple as check_vae_multiple
from pilot.diffusion.prompts import count_chunks, encode_prompts
from pilot.diffusion.samplers import BatchedNoise, Callback, get_sampler, takes
from pilot.diffusion.schedules import DiscreteSchedule, get_sigmas, prior_std
from pilot.diffusion.vae_codec import VAE_UPCASTS as VAE_UPCASTS
from pilot.diffusion.vae_codec import VAEUpcast, check_decode, decode_latents, encode_images

if TYPE_CHECKING:  # annotations only: the loaders are not imported at run time
    from pilot.weights.loaders import StableDiffusion


def model_device(sd: StableDiffusion) -> torch.device:
    """Device of the UNet: where sampling runs."""
    return next(sd.unet.parameters()).device


def encode_text(
    sd: StableDiffusion,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    *,
    clip_skip: int = 0,
) -> tuple[Tensor, Tensor]:
    """Conditional and unconditional embeddings with the same number of 77-token chunks.

    Returns:
        `(context, uncond_context)`, each (B, 77 * chunks, D).
    """
    if len(prompts) != len(negative_prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(negative_prompts)} negative prompts")
    n = max(count_chunks(sd.tokenizer, prompts), count_chunks(sd.tokenizer, negative_prompts))
    encode = dict(min_chunks=n, skip=clip_skip)
    context = encode_prompts(sd.text_encoder, sd.tokenizer, prompts, **encode)
    uncond = encode_prompts(sd.text_encoder, sd.tokenizer, negative_prompts, **encode)
    return context, uncond


def img2img_sigmas(sigmas: Tensor, strength: float) -> Tensor:
    """The tail of a sampling grid that img2img runs: the last `int(steps * strength)` steps.

    Strength 0 keeps only the final sigma (no step: the init latents come back); strength 1
    keeps the whole grid. Equal to diffusers' img2img `timesteps[t_start:]`.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    steps = len(sigmas) - 1
    return sigmas[steps - min(int(steps * strength), steps) :]


def start_latents(noise: Tensor, sigmas: Tensor, init_latents: Tensor | None = None) -> Tensor:
    """Initial sampler state at `sigmas[0]`.

    Without init latents (txt2img, or img2img at full strength, which then equals txt2img)
    it is `noise * sqrt(1 + sigma^2)`, the std of noised unit-variance latents (diffusers' DDIM
    and DPM-Solver; k-diffusion scales by `sigma`, 0.2% less at SD's sigma_max). With them it is
    `init + sigma * noise`, the forward process at `sigmas[0]`.
    """
    if init_latents is None:
        return noise * prior_std(sigmas[0], data_std=1.0)
    return init_latents + noise * sigmas[0]


def build_denoiser(
    sd: StableDiffusion,
    settings: SamplingSettings,
    *,
    init_latents: Tensor | None = None,
    mask: Tensor | None = None,
    noise: Tensor | None = None,
    wrap_model: Callable[[Denoiser], Denoiser] | None = None,
    sigmas: Tensor | None = None,
) -> Denoiser:
    """The denoiser stack: model wrapper, [`wrap_model`, e.g. ControlNet], guidance
    (`settings.guidance`, CFG by default), [inpainting].

    Args:
        wrap_model: Wraps the model denoiser inside the guidance (it sees both branches); a
            ControlNet wrapper is told the guidance's batch layout (`control_wrapper(cfg=,
            guidance=)`), which a guidance of your own is then held to (`guide`).
        init_latents, mask, noise: Given together, mask-blend inpainting outside the guidance.
        sigmas: The sigmas the sampler runs, for a guidance taking `sigmas`.
    """
    denoiser = make_denoiser(sd.unet, sd.prediction_type, quantize=settings.quantize)
    if wrap_model is not None:
        denoiser = wrap_model(denoiser)
    denoiser = guide(
        settings.guidance, denoiser, settings.cfg, rescale=settings.rescale, sigmas=sigmas,
        controlled=wrap_model is not None,
    )  # fmt: skip
    if mask is not None:
        denoiser = InpaintDenoiser(denoiser, init_latents, mask, noise)
    return denoiser


def sample(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    settings: SamplingSettings,
    *,
    context: Tensor,
    uncond_context: Tensor,
    noise: BatchedNoise | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Run `settings.sampler` from `x` over `sigmas`; returns the final latents."""
    sampler = get_sampler(settings.sampler)
    kwargs = {} if settings.eta is None else {"eta": settings.eta}
    # passed when given (a sampler without one raises: the callback is not dropped) or taken:
    # the documented signature may declare `callback` with no default
    if callback is not None or takes(sampler, "callback"):
        kwargs["callback"] = callback
    if takes(sampler, "noise"):  # k-diffusion's samplers draw their own noise
        kwargs["noise"] = noise
    extra_args = {"context": context, "uncond_context": uncond_context}
    return sampler(denoiser, x, sigmas, extra_args=extra_args, **kwargs)


@torch.no_grad()
def generate_latents(
    sd: StableDiffusion,
    request: Request,
    settings: SamplingSettings = SamplingSettings(),  # noqa: B008 (frozen)
    *,
    sigmas: Tensor | None = None,
    callback: Callback | None = None,
    controls: Sequence[Control] = (),
    vae_tile: int | None = None,
    vae_batch: int | None = None,
) -> Tensor:
    """txt2img, img2img or inpainting, to final scaled latents (B, 4, H/8, W/8) float32.

    Args:
        sd: A `pilot.StableDiffusion` (models on any device, any dtype).
        request: Prompts, seeds, size and optional init images / mask.
        settings: Sampler, schedule, steps, guidance.
        sigmas: Explicit full sampling grid ending in 0, instead of `settings.schedule`.
        callback: Called each step with `{"i", "x", "sigma", "denoised"}`.
        controls: ControlNets with their images and scales (`pilot.diffusion.control.Control`;
            images at the output size, a batch of 1 or B); their start / end fractions count
            the steps run. Each must fit `sd` (`check_controlnet_fits`), else a ValueError.
        vae_tile: Tile size in image pixels for encoding init images (see `encode_images`).
        vae_batch: Init images encoded per VAE call (see `encode_images`); None: all at once.
    """
    check_controls(sd, controls, len(request.prompts), (request.height, request.width))
    check_tile(vae_tile, sd.vae.cfg.downsample_factor)  # decoded at the end by `generate`
    device = model_device(sd)
    context, uncond = encode_text(
        sd, request.prompts, request.negative_prompts, clip_skip=settings.clip_skip
    )
    if sigmas is None:
        sigmas = get_sigmas(settings.schedule, settings.steps, DiscreteSchedule.scaled_linear())
    sigmas = check_sigmas(sigmas)  # on the host: the samplers read them there (no GPU wait)
    f = sd.vae.cfg.downsample_factor
    check_size(request.height, request.width, f)
    shape = (
        len(request.prompts),
        sd.vae.cfg.latent_channels,
        request.height // f,
        request.width // f,
    )
    noise = BatchedNoise(request.seeds, shape, device=device)
    first = noise.draw()
    init = mask = None
    if request.init_images is not None:
        init = encode_images(sd, request.init_images, tile=vae_tile, batch=vae_batch)
        sigmas = img2img_sigmas(sigmas, request.strength)
        if request.mask is not None:
            mask = _latent_mask(request.mask, shape).to(device)
    full_strength = request.strength == 1.0 and mask is None
    x = start_latents(first, sigmas, None if full_strength else init)
    steps = len(sigmas) - 1  # 0 for img2img at a strength below 1 / steps: the VAE round trip
    wrap = None
    if controls and steps:
        wrap = control_wrapper(controls, sigmas, cfg=settings.cfg, guidance=settings.guidance)
    denoiser = build_denoiser(
        sd, settings, init_latents=init, mask=mask, noise=first, wrap_model=wrap, sigmas=sigmas
    )
    return sample(
        denoiser, x, sigmas, settings, context=context, uncond_context=uncond,
        noise=noise, callback=callback,
    )  # fmt: skip


def _latent_mask(mask: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Image mask (B or 1, 1, H, W) to latent resolution by area averaging."""
    return torch.nn.functional.interpolate(mask.float(), size=shape[-2:], mode="area")


def generate(
    sd: StableDiffusion,
    request: Request,
    settings: SamplingSettings = SamplingSettings(),  # noqa: B008 (frozen)
    *,
    vae_tile: int | None = None,
    vae_upcast: VAEUpcast = "auto",
    vae_batch: int | None = None,
    decoder: torch.nn.Module | None = None,
    **kwargs: Any,
) -> Tensor:
    """`generate_latents`, then VAE decode: images (B, 3, H, W) in [0, 1], float32 on CPU.

    Half precision: load or cast the models to float16 / bfloat16 (`pilot.load_pipeline(...,
    dtype=torch.float16)`, `sd.to(dtype=...)`); sampling stays float32, the UNet runs in its
    dtype and the VAE decode follows `vae_upcast`.

    Args:
        vae_tile: Tile size in image pixels for the VAE (a multiple of its factor, 8 in SD),
            for large images.
        vae_upcast: float32 rule of a half-precision VAE decode (see `decode_latents`).
        vae_batch: Images per VAE call, encoding and decoding (VAE slicing: the VAE's memory
            of `vae_batch` images, not B); None: all at once.
        decoder: Decode with this instead of the VAE (a `PreviewDecoder`, see `decode_latents`).
        **kwargs: `sigmas`, `callback`, `controls` of `generate_latents`.
    """
    check_decode(sd, vae_tile, vae_upcast, decoder, vae_batch)  # before any model runs
    latents = generate_latents(
        sd, request, settings, vae_tile=vae_tile, vae_batch=vae_batch, **kwargs
    )
    images = decode_latents(
        sd, latents, tile=vae_tile, upcast=vae_upcast, decoder=decoder, batch=vae_batch
    )
    return images.cpu()


__all__ = [
    "VAE_UPCASTS",
    "Request",
    "SamplingSettings",
    "VAEUpcast",
    "build_denoiser",
    "check_decode",
    "decode_latents",
    "encode_images",
    "encode_text",
    "generate",
    "generate_latents",
    "img2img_sigmas",
    "sample",
    "start_latents",
]
