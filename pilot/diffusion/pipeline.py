"""Stable Diffusion generation: txt2img, img2img and inpainting on the k-diffusion contract.

The pipeline is a few plain functions over a `pilot.StableDiffusion` bundle, each readable on its
own: `encode_text` (prompts -> CLIP embeddings), `encode_images` / `decode_latents` (VAE with the
scaling factor, optional tiling and slicing), `start_latents` (noise or noised init latents,
img2img by slicing the sigmas) and `sample` (denoiser wrappers + a sampler from `SAMPLERS`).
`generate` chains them for the common case; the feedback sampler calls the parts itself.

Conventions: images are (B, 3, H, W) float in [0, 1] at the API (the VAE sees [-1, 1]);
latents are VAE-scaled, (B, 4, H/8, W/8); sampling runs in float32 on the UNet's device while
the models run in their own dtype; masks are 1 where the image is repainted.
"""

from __future__ import annotations

import math
import numbers
import operator
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import Tensor

from pilot.diffusion.control import Control, check_controls, control_wrapper
from pilot.diffusion.denoisers import Denoiser, make_denoiser
from pilot.diffusion.guidance import (
    CFGDenoiser,
    Guidance,
    InpaintDenoiser,
    check_cfg,
    check_guidance,
    guide,
)
from pilot.diffusion.prompts import count_chunks, encode_prompts
from pilot.diffusion.samplers import (
    BatchedNoise,
    Callback,
    Sampler,
    get_sampler,
    samplers_with,
    takes,
)
from pilot.diffusion.schedules import DiscreteSchedule, ScheduleFn, get_sigmas, prior_std
from pilot.diffusion.tiling import sliced, tiled

if TYPE_CHECKING:  # annotations only: the loaders are not imported at run time
    from pilot.weights.loaders import StableDiffusion

# float32 rules of a half-precision VAE decode (`decode_latents`).
VAEUpcast = Literal["auto", "always", "never"]
VAE_UPCASTS: tuple[str, ...] = get_args(VAEUpcast)


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample: every field is a swappable component or a dial.

    Attributes:
        sampler: A name in `pilot.diffusion.SAMPLERS`, or a sampler function of your own on
            the same contract, `sampler(denoiser, x, sigmas, *, extra_args, callback, noise)`
            (`pilot.diffusion.samplers`); `callback` and `noise` are passed only if it takes
            them, so a k-diffusion sampler works too (its noise then ignores the seeds).
        schedule: A name in `pilot.diffusion.SCHEDULES`, or a function of your own,
            `(steps, DiscreteSchedule) -> (steps + 1,) sigmas` (ignored where `sigmas` are
            given).
        steps: Sampling steps of the full schedule (img2img runs `int(steps * strength)`);
            where `sigmas` are given, their length decides instead.
        cfg: Classifier-free guidance scale; 1 disables guidance (one UNet call per step).
        rescale: Guidance rescale phi in [0, 1] (Lin et al. 2023).
        eta: Noise of the stochastic samplers (ddim, ancestral, SDE); None keeps each default.
            Only samplers with an `eta` parameter take it (`samplers.samplers_with("eta")`).
        clip_skip: Final text encoder layers to leave out (A1111's "clip skip" minus one).
        quantize: Feed the UNet integer timesteps (diffusers' DPM-Solver with Karras sigmas).
        guidance: How the model denoiser is guided: `CFGDenoiser`, or a function or class of
            your own on its contract, `guidance(denoiser, cfg, *, rescale, sigmas) -> guided`
            with `guided(x, sigma, *, context, uncond_context, **kwargs) -> denoised` like x
            (`pilot.diffusion.guidance.guide`: `rescale` and `sigmas`, the grid the sampler
            runs, are passed only if it takes them; with ControlNets it calls `denoiser` on
            `[uncond, cond]` halves at every step, whatever `cfg`).
    """

    sampler: str | Sampler = "dpmpp_2m"
    schedule: str | ScheduleFn = "karras"
    steps: int = 20
    cfg: float = 7.5
    rescale: float = 0.0
    eta: float | None = None
    clip_skip: int = 0
    quantize: bool = False
    guidance: Guidance = CFGDenoiser

    def __post_init__(self) -> None:
        sampler = get_sampler(self.sampler)  # raise early, naming the valid choices
        if not callable(self.schedule):
            get_sigmas(self.schedule, 1, DiscreteSchedule.scaled_linear())
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral):
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        check_cfg(self.cfg)
        if not 0.0 <= self.rescale <= 1.0:
            raise ValueError(f"rescale must be in [0, 1], got {self.rescale}")
        check_guidance(self.guidance, self.rescale)
        if self.clip_skip < 0:
            raise ValueError(f"clip_skip must be >= 0 (0: the last layer), got {self.clip_skip}")
        if self.eta is not None and not takes(sampler, "eta"):
            own = getattr(sampler, "__name__", type(sampler).__name__)  # not its repr's address
            name = self.sampler if isinstance(self.sampler, str) else own
            raise ValueError(
                f"sampler {name!r} takes no eta (got eta={self.eta}); samplers with "
                f"eta: {', '.join(samplers_with('eta'))}"
            )


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


@torch.no_grad()
def encode_images(
    sd: StableDiffusion, images: Tensor, *, tile: int | None = None, batch: int | None = None
) -> Tensor:
    """VAE-encode images in [0, 1] (B, 3, H, W) to scaled latents (B, 4, H/f, W/f), f = 8 in SD.

    Takes the posterior mean (deterministic, so img2img at strength 0 is a pure VAE round trip).

    Args:
        tile: Encode in overlapping tiles of this many image pixels (a positive multiple of
            the VAE's factor, see `check_tile`), for images too large for memory; None encodes
            whole.
        batch: Encode at most this many images per VAE call (VAE slicing: the memory of
            `batch` images, not B); None encodes all at once.
    """
    vae = sd.vae
    check_size(*images.shape[-2:], vae.cfg.downsample_factor)
    check_tile(tile, vae.cfg.downsample_factor)
    param = next(vae.parameters())

    def encode(images: Tensor) -> Tensor:
        x = (images.to(param.device, param.dtype) * 2 - 1).clamp(-1, 1)
        if tile:
            return tiled(lambda x: vae.encode(x).mean, x, tile, 1 / vae.cfg.downsample_factor)
        return vae.encode(x).mean

    return sliced(encode, images, batch).float() * sd.scaling_factor


@torch.no_grad()
def decode_latents(
    sd: StableDiffusion,
    latents: Tensor,
    *,
    tile: int | None = None,
    upcast: VAEUpcast = "auto",
    decoder: torch.nn.Module | None = None,
    batch: int | None = None,
) -> Tensor:
    """VAE-decode scaled latents (B, 4, h, w) to images in [0, 1], (B, 3, fh, fw) float32.

    Args:
        tile: Decode in overlapping tiles of this many image pixels (a positive multiple of
            the VAE's factor, see `check_tile`), blended linearly where they overlap; None
            decodes whole.
        upcast: Precision of a half-precision VAE (see `VAE_UPCASTS`): SD's VAE decoder can
            overflow float16 in its last up blocks (activations beyond 65504 turn to inf, then
            NaN pixels). "auto" decodes in the VAE's dtype and, if any pixel is not finite,
            decodes again in float32 (and warns); "always" decodes in float32; "never" in the
            VAE's dtype. A float32 VAE decodes in float32 under every rule.
        decoder: Decode with this instead of `sd.vae`: a module with the VAE's `decode` (e.g. a
            `pilot.models.preview.PreviewDecoder` distilled from it, for previews); `upcast`
            then does not apply (it has no float16 overflow to guard).
        batch: Decode at most this many images per call (VAE slicing: the memory of `batch`
            images, not B; `upcast="auto"` decodes again in float32 only the slices that
            overflowed); None decodes all at once.
    """
    check_decode(sd, tile, upcast, decoder, batch)
    return sliced(lambda z: _decode_upcast(sd, z, tile, upcast, decoder), latents, batch)


def check_decode(
    sd: StableDiffusion,
    tile: int | None,
    upcast: VAEUpcast,
    decoder: torch.nn.Module | None,
    batch: int | None,
) -> None:
    """Raise a ValueError for `decode_latents` settings it cannot follow (`generate` checks
    them before sampling): an unknown upcast rule, a tile off the VAE factor, a batch below 1,
    a decoder whose latents or factor are not the VAE's (it would return another size)."""
    if upcast not in VAE_UPCASTS:
        raise ValueError(f"unknown VAE upcast rule {upcast!r}; valid: {', '.join(VAE_UPCASTS)}")
    check_tile(tile, sd.vae.cfg.downsample_factor)
    if batch is not None and batch < 1:
        raise ValueError(f"VAE batch: decode >= 1 image per call (None: all at once), got {batch}")
    for name in ("latent_channels", "downsample_factor") if decoder is not None else ():
        ours, theirs = getattr(decoder.cfg, name, None), getattr(sd.vae.cfg, name)
        if ours is not None and ours != theirs:
            raise ValueError(f"decoder {name} {ours}, but the model's VAE has {theirs}")


def _decode_upcast(sd, latents: Tensor, tile: int | None, upcast: VAEUpcast, decoder) -> Tensor:
    """`decode_latents` of one slice."""
    if decoder is not None:
        return _decode(sd, latents, tile, decoder)
    half = next(sd.vae.parameters()).dtype != torch.float32
    if half and upcast == "always":
        with _float32(sd.vae):
            return _decode(sd, latents, tile)
    images = _decode(sd, latents, tile)
    if half and upcast == "auto" and not torch.isfinite(images).all():
        warnings.warn(
            "the half-precision VAE decode overflowed (non-finite pixels); decoded again in "
            "float32. Pass upcast='always' (or keep the VAE in float32) to skip the first try",
            stacklevel=6,  # decode_latents' caller (no_grad's wrapper, sliced and a lambda between)
        )
        with _float32(sd.vae):
            return _decode(sd, latents, tile)
    return images


def _decode(sd, latents: Tensor, tile: int | None, decoder=None) -> Tensor:
    """Decode in the decoder's (default: the VAE's) own dtype; images in [0, 1], float32."""
    vae = sd.vae if decoder is None else decoder
    param = next(vae.parameters())
    z = (latents / sd.scaling_factor).to(param.device, param.dtype)
    if tile:
        f = vae.cfg.downsample_factor
        images = tiled(vae.decode, z, tile // f, f)
    else:
        images = vae.decode(z)
    return (images.float() / 2 + 0.5).clamp(0, 1)


@contextmanager
def _float32(module: torch.nn.Module) -> Iterator[None]:
    """Cast `module` to float32 in place for the block, then back: half -> float32 -> half
    round-trips exactly, and no second copy of the weights is held."""
    dtype = next(module.parameters()).dtype
    module.float()
    try:
        yield
    finally:
        module.to(dtype)


def check_size(height: int, width: int, factor: int = 8) -> None:
    """Raise unless the image size is a positive multiple of the VAE factor (8 for SD)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size {width}x{height} (WxH) must be positive")
    if height % factor or width % factor:
        raise ValueError(
            f"image size {width}x{height} (WxH) must be multiples of the VAE factor {factor}"
        )


def check_vae_multiple(sizes: dict[str, int], factor: int, model: str, hint: str = "") -> None:
    """ValueError unless every size is a multiple of a model's VAE factor, naming the size.

    Args:
        sizes: What each size is (e.g. "--width") -> pixels, positive (checked earlier).
        factor: The VAE's downsampling factor (8 in SD, 2 in a one-downsample VAE).
        model: The model, named in the message.
        hint: Appended to the message (what to do instead).
    """
    for what, value in sizes.items():
        if value % factor:
            raise ValueError(
                f"{what} {value} is not a multiple of {factor}, the VAE factor of {model}{hint}"
            )


# torch.Generator.manual_seed takes seeds in [-2**63, 2**64)
SEED_RANGE = range(-(2**63), 2**64)


def check_seed(seed: object) -> None:
    """Raise unless `seed` is an integer `torch.Generator.manual_seed` takes (numpy ints too)."""
    try:
        ok = operator.index(seed) in SEED_RANGE
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"seed {seed!r}: expected an int in [-2**63, 2**64)")


def check_unit_range(x: Tensor, name: str, slack: float = 0.25) -> None:
    """Raise unless `x` holds values in [0, 1] within `slack` (a bicubic resize overshoots by
    ~0.1): images in [-1, 1] or 0..255 would otherwise be clamped to [0, 1] with no word."""
    lo, hi = (float(v) for v in x.aminmax())
    if -slack <= lo and hi <= 1 + slack:
        return
    hint = " (images in [-1, 1]: x / 2 + 0.5)" if lo < -slack else " (8-bit values: x / 255)"
    hint = hint if math.isfinite(lo) and math.isfinite(hi) else ""
    raise ValueError(f"{name} hold values in [{lo:.3g}, {hi:.3g}]: expected [0, 1]{hint}")


def check_tile(tile: int | None, factor: int = 8) -> None:
    """Raise unless a VAE tile size is None (no tiling) or a positive multiple of the VAE factor
    (8 for SD): tiles are cut in whole latent pixels, `tile // factor` of them a side, so other
    sizes are rounded down (12 -> 8, and 4 -> a one-latent-pixel tile) with no word."""
    if tile is not None and (tile <= 0 or tile % factor):
        raise ValueError(
            f"VAE tile {tile}: must be a positive multiple of the VAE factor {factor} (image "
            "pixels), or None for no tiling"
        )


def check_sigmas(sigmas: Tensor | Sequence[float]) -> Tensor:
    """An explicit sampling grid as a float32 CPU tensor, or a ValueError naming what is wrong:
    it must be 1-D, finite, >= 0 and decreasing (the samplers divide by sigma and by its
    steps; increasing or repeated sigmas give NaN or noise, not an error)."""
    sigmas = torch.as_tensor(sigmas).detach().cpu()
    sigmas = sigmas.to(torch.float64 if sigmas.dtype == torch.float64 else torch.float32)
    if sigmas.ndim != 1 or len(sigmas) < 1:
        raise ValueError(f"sigmas of shape {tuple(sigmas.shape)}: expected (steps + 1,)")
    if not torch.isfinite(sigmas).all() or (sigmas < 0).any() or (sigmas.diff() >= 0).any():
        raise ValueError(
            f"sigmas {sigmas.tolist()}: expected finite, decreasing noise levels >= 0 (e.g. "
            "pilot.diffusion.get_sigmas(...), ending in 0)"
        )
    return sigmas


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


@dataclass(frozen=True)
class Request:
    """One generation call: what to draw, at what size, from what.

    Attributes:
        prompts: B prompts (A1111 emphasis and long prompts allowed).
        negative_prompts: B negative prompts (the unconditional branch of CFG).
        seeds: B seeds, one per image: an image reproduces in any batch.
        width, height: Output size in pixels, multiples of the model's VAE factor (8 in SD;
            checked by `generate_latents`, which knows the model), ignored with init images.
        init_images: (B, 3, H, W) in [0, 1] for img2img / inpainting.
        strength: img2img strength in [0, 1]: the fraction of the schedule re-run.
        mask: (B or 1, 1, H, W) in [0, 1], 1 = repaint, with init images (inpainting).
    """

    prompts: Sequence[str]
    negative_prompts: Sequence[str] | None = None
    seeds: Sequence[int] = (0,)
    width: int = 512
    height: int = 512
    init_images: Tensor | None = None
    strength: float = 1.0
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("prompts", "negative_prompts"):
            if isinstance(getattr(self, name), str):  # else one prompt per character
                raise ValueError(f"{name} is a str: pass a list of strings, one per image")
        if not self.prompts:
            raise ValueError("at least one prompt is needed")
        negative = self.negative_prompts or [""] * len(self.prompts)
        object.__setattr__(self, "negative_prompts", list(negative))
        if not hasattr(self.seeds, "__len__"):  # an int: "1 seeds for 1 prompts" said nothing
            raise ValueError(
                f"seeds={self.seeds!r}: pass a list, one seed per prompt (seeds=[{self.seeds!r}])"
            )
        if len(self.seeds) != len(self.prompts):
            n = len(self.seeds)
            raise ValueError(f"{n} seeds for {len(self.prompts)} prompts: one seed per prompt")
        for seed in self.seeds:
            check_seed(seed)
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if self.init_images is None:
            check_size(self.height, self.width, factor=1)  # the VAE's: in `generate_latents`
            if self.mask is not None:
                raise ValueError("a mask needs init images to inpaint")
            if self.strength != 1.0:
                raise ValueError(
                    f"strength {self.strength} needs init images (img2img); txt2img runs the "
                    "whole schedule"
                )
        else:
            self._check_images()

    def _check_images(self) -> None:
        images, mask, B = self.init_images, self.mask, len(self.prompts)
        if images.ndim != 4 or images.shape[:2] != (B, 3):
            raise ValueError(f"init images must be (B={B}, 3, H, W), got {tuple(images.shape)}")
        check_size(*images.shape[-2:], factor=1)
        for name, x in (("init images", images), ("mask", mask)):
            if x is not None and not x.is_floating_point():
                raise ValueError(f"{name} of dtype {x.dtype}: expected float in [0, 1]")
            if x is not None and x.device.type != "meta":
                check_unit_range(x, name)
        if mask is not None and (mask.ndim != 4 or mask.shape[:2] not in ((1, 1), (B, 1))):
            raise ValueError(f"mask must be (B={B} or 1, 1, H, W), got {tuple(mask.shape)}")
        if mask is not None and mask.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"mask size {tuple(mask.shape[-2:])} differs from image size "
                f"{tuple(images.shape[-2:])} (H, W)"
            )
        object.__setattr__(self, "height", images.shape[-2])
        object.__setattr__(self, "width", images.shape[-1])


@torch.no_grad()
def generate_latents(
    sd: StableDiffusion,
    request: Request,
    settings: SamplingSettings = SamplingSettings(),
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
    settings: SamplingSettings = SamplingSettings(),
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
