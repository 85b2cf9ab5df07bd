"""What a generation call asks for, and the checks of its values, raised before any model runs.

- `SamplingSettings`: sampler, schedule, steps, guidance and their dials;
- `Request`: prompts, negative prompts, seeds, size, init images and mask;
- `check_size`, `check_vae_multiple`, `check_seed` (`SEED_RANGE`), `check_unit_range`,
  `check_tile`, `check_sigmas`: the one-line ValueErrors of sizes, seeds, images, VAE tiles and
  sampling grids, shared by the pipeline, the feedback sampler and the commands.

Apart from the pipeline because none of it runs a model. The pipeline itself is
`pilot.diffusion.pipeline`, which re-exports these names.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pilot.diffusion.guidance import CFGDenoiser, Guidance, check_cfg, check_guidance
from pilot.diffusion.samplers import Sampler, callable_name, get_sampler, samplers_with, takes
from pilot.diffusion.schedules import DiscreteSchedule, ScheduleFn, get_sigmas


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
            name = self.sampler if isinstance(self.sampler, str) else callable_name(sampler)
            raise ValueError(
                f"sampler {name!r} takes no eta (got eta={self.eta}); samplers with "
                f"eta: {', '.join(samplers_with('eta'))}"
            )


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
