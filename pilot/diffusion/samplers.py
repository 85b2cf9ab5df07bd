"""Samplers: pure functions `sample_<name>(denoiser, x, sigmas, ...) -> x0` (k-diffusion contract).

Every sampler integrates from `sigmas[0]` to `sigmas[-1]` (usually 0) with no state outside the
call: img2img is `sample(denoiser, init + noise * sigmas[k], sigmas[k:])`. Arguments shared by all:

    denoiser: `D(x, sigma, **extra_args) -> denoised`, sigma of shape (B,).
    x: Latents at noise level `sigmas[0]`, (B, C, H, W), in the VE parameterisation
        (`x = x0 + sigma * eps`); initial latents are `noise * prior_std(sigmas[0])`.
    sigmas: (n + 1,) decreasing noise levels (see `pilot.diffusion.schedules`), a tensor or a
        list.
    extra_args: Keyword arguments for the denoiser (text context, ...).
    callback: Called once per step with `{"i", "x", "sigma", "denoised"}`: the latents entering
        step i, its sigma and the denoiser's estimate there.
    noise: Noise sampler `noise(sigma, sigma_next) -> standard normal tensor like x`, e.g. a
        `BatchedNoise` with per-item seeds; default `torch.randn_like(x)`.
"""

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from pilot.diffusion.denoisers import Denoiser

NoiseSampler = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict[str, Any]], None]


def queued_copy(t: Tensor, device: torch.device | str) -> Tensor:
    """`t.to(device)`, where a copy from the CPU to a CUDA device goes through pinned memory so
    that it is queued: from pageable memory the host would wait for the GPU's queued work."""
    device = torch.device(device)
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class BatchedNoise:
    """Per-item seeded Gaussian noise: EDM's stacked generators (Karras et al. 2022).

    Item `b` of every draw comes from its own `torch.Generator` seeded with `seeds[b]`, so an item
    gets the same initial latents and the same ancestral/SDE noise whatever batch it is in. The
    draws equal diffusers' `randn_tensor(shape, generator=[...])` with the same generators, call
    after call. Generators live on `generator_device` (CPU by default: the same numbers on any
    accelerator); tensors are returned on `device`.

    Args:
        seeds: One seed per batch item.
        shape: Shape of one draw, (B, ...) with B = len(seeds).
        device: Device of the returned tensors (default CPU).
        dtype: Dtype of the returned tensors.
        generator_device: Where the generators draw.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        shape: Sequence[int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator_device: torch.device | str = "cpu",
    ) -> None:
        if len(seeds) != shape[0]:
            raise ValueError(f"{len(seeds)} seeds for a batch of {shape[0]} (shape {tuple(shape)})")
        self.shape, self.device, self.dtype = tuple(shape), device, dtype
        self.generators = [torch.Generator(generator_device).manual_seed(s) for s in seeds]

    def draw(self) -> Tensor:
        """Next standard normal tensor of `shape`: one (1, ...) draw per generator, stacked."""
        one = (1, *self.shape[1:])
        gen_device = self.generators[0].device
        draws = [
            torch.randn(one, generator=g, device=gen_device, dtype=self.dtype)
            for g in self.generators
        ]
        out = torch.cat(draws)
        return out if self.device is None else queued_copy(out, self.device)

    def __call__(self, sigma: Tensor | None = None, sigma_next: Tensor | None = None) -> Tensor:
        """Noise-sampler interface: i.i.d. draws, whatever the interval."""
        return self.draw()


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """Probability-flow ODE derivative `dx/dsigma = (x - D(x, sigma)) / sigma` (EDM eq. 3)."""
    return (x - denoised) / sigma


def get_ancestral_step(
    sigma: Tensor, sigma_next: Tensor, eta: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Split a step to `sigma_next` into a deterministic step to `sigma_down` plus noise `sigma_up`.

    `sigma_down^2 + sigma_up^2 = sigma_next^2`; eta = 1 gives the DDPM posterior (ancestral
    sampling), eta = 0 a deterministic step. Same as DDIM's sigma_t(eta) (Song et al. 2021,
    eq. 16) rewritten for VE latents.
    """
    sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    sigma_up = torch.minimum(sigma_next, eta * sigma_up)
    return (sigma_next**2 - sigma_up**2) ** 0.5, sigma_up


def _prepare(
    x: Tensor, sigmas: Tensor | Sequence[float], extra_args: dict | None, noise: NoiseSampler | None
) -> tuple[Tensor, Tensor, dict, NoiseSampler, list[float]]:
    """Sigmas (a tensor, or a list as `generate(sigmas=)` takes) on x's device, the (B,) ones to
    broadcast a sigma, extra args, noise sampler, and the sigmas as Python floats.

    The steps' branches (last step? churn?) read the floats: a branch on a GPU tensor waits for
    the GPU to finish the work queued so far, every step. Sigmas given on the CPU (as the
    schedules make them) cost nothing to read; on a GPU, one wait here.
    """
    noise = noise if noise is not None else (lambda sigma, sigma_next: torch.randn_like(x))
    if not isinstance(sigmas, Tensor):
        sigmas = torch.tensor(sigmas, dtype=torch.float32)
    levels = sigmas.tolist()
    return queued_copy(sigmas, x.device), x.new_ones(x.shape[0]), extra_args or {}, noise, levels


def _report(callback: Callback | None, i: int, x: Tensor, sigma: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})


def _churn(x, sigmas, levels, i, noise, s_churn, s_tmin, s_tmax, s_noise) -> tuple[Tensor, Tensor]:
    """Karras et al. 2022 Algorithm 2, lines 4-6: raise sigma to sigma_hat by adding noise."""
    sigma = sigmas[i]
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= levels[i] <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + noise(sigma, sigma_hat) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Euler sampler, Algorithm 2 of Karras et al. 2022 with Euler steps (optional churn).

    Without churn this is DDIM with eta = 0 (Song et al. 2021) on the probability-flow ODE and
    matches diffusers' EulerDiscreteScheduler.
    """
    sigmas, s_in, extra_args, noise, levels = _prepare(x, sigmas, extra_args, noise)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, levels, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoiser(x, sigma_hat * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral Euler sampler (k-diffusion; Ho et al. 2020 ancestral sampling with Euler steps).

    Each step goes deterministically to `sigma_down`, then adds `sigma_up` of fresh noise
    (`get_ancestral_step`). Matches diffusers' EulerAncestralDiscreteScheduler (eta = 1) when
    `noise` draws from the same generators.
    """
    sigmas, s_in, extra_args, noise, levels = _prepare(x, sigmas, extra_args, noise)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, denoised)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        # diffusers also draws (and multiplies by 0) on the last step: the earlier draws agree.
        if eta > 0 and levels[i + 1] > 0:
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM, Song et al. 2021 (eq. 12), in the VE parameterisation.

    `x_next = denoised + sigma_down * eps + sigma_up * z` with `eps = (x - denoised) / sigma`:
    the VP update `sqrt(a') x0 + sqrt(1 - a' - s^2) eps + s z` divided by `sqrt(a')`. eta = 0 is
    deterministic (the Euler step), eta = 1 is DDPM's ancestral sampler. Matches diffusers'
    DDIMScheduler on its timesteps (`get_sigmas_discrete(..., "leading", steps_offset=1)`; with
    `set_alpha_to_one=False` end on `final="sigma_min"` and compare `x / sqrt(1 + sigma_min^2)`).
    """
    sigmas, s_in, extra_args, noise, levels = _prepare(x, sigmas, extra_args, noise)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, denoised)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        x = denoised + to_d(x, sigma, denoised) * sigma_down
        if eta > 0 and levels[i + 1] > 0:
            x = x + noise(sigma, sigma_next) * sigma_up
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Heun sampler, Algorithm 2 of Karras et al. 2022 (2nd order, 2 evaluations per step).

    The last step to sigma 0 is a plain Euler step (the correction would divide by 0).
    """
    sigmas, s_in, extra_args, noise, levels = _prepare(x, sigmas, extra_args, noise)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, levels, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        sigma_next = sigmas[i + 1]
        denoised = denoiser(x, sigma_hat * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], denoised)
        d = to_d(x, sigma_hat, denoised)
        x_2 = x + d * (sigma_next - sigma_hat)
        if levels[i + 1] == 0:
            x = x_2
            continue
        d_2 = to_d(x_2, sigma_next, denoiser(x_2, sigma_next * s_in, **extra_args))
        x = x + (d + d_2) / 2 * (sigma_next - sigma_hat)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
) -> Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 (Algorithm 2), multistep in `lambda = -log sigma`.

    The first step (no history yet: also the first step of an img2img slice) and the step to
    sigma 0 are first order. The latter is diffusers' `final_sigmas_type="zero"` /
    `lower_order_final` behaviour; its second order "midpoint" update is the one used here.
    """
    sigmas, s_in, extra_args, _, levels = _prepare(x, sigmas, extra_args, noise)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, denoised)
        if levels[i + 1] == 0:
            x = denoised  # the first-order update's limit as sigma_next -> 0
        else:
            h = sigma.log() - sigma_next.log()
            denoised_d = denoised
            if old_denoised is not None:
                r = (sigmas[i - 1].log() - sigma.log()) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: Literal["midpoint", "heun"] = "midpoint",
) -> Tensor:
    """DPM-Solver++(2M) SDE, Lu et al. 2022 (k-diffusion's `sample_dpmpp_2m_sde`).

    eta = 1 follows the reverse SDE (diffusers' `algorithm_type="sde-dpmsolver++"`), eta = 0 is
    `sample_dpmpp_2m`. One noise draw per step; i.i.d. draws are exact Brownian increments
    (k-diffusion's Brownian tree only adds consistency across step counts).
    """
    sigmas, s_in, extra_args, noise, levels = _prepare(x, sigmas, extra_args, noise)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, denoised)
        if levels[i + 1] == 0:
            x = denoised
        else:
            h = sigma.log() - sigma_next.log()
            eta_h = eta * h
            phi = -torch.expm1(-h - eta_h)  # 1 - exp(-(1 + eta) h)
            x = (sigma_next / sigma) * torch.exp(-eta_h) * x + phi * denoised
            if old_denoised is not None:
                r = h_last / h
                coef = 0.5 * phi if solver_type == "midpoint" else 1 - phi / (h + eta_h)
                x = x + coef * (1 / r) * (denoised - old_denoised)
            if eta > 0:
                std = sigma_next * (-torch.expm1(-2 * eta_h)) ** 0.5
                x = x + noise(sigma, sigma_next) * s_noise * std
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> Tensor:
    """DPM-Solver++ SDE, Lu et al. 2022: two-stage (2S) ancestral steps, as in k-diffusion.

    Each step takes an ancestral half step to `lambda + r h`, denoises there, and combines both
    estimates. The two noises of a step are increments of one Brownian path in sigma: z1 over
    [sigma_s, sigma] and `(sqrt(a) z1 + sqrt(b) z2) / sqrt(a + b)` over [sigma_next, sigma],
    built from i.i.d. draws of `noise` (k-diffusion uses a Brownian tree).
    """
    sigmas, s_in, extra_args, noise, levels = _prepare(x, sigmas, extra_args, noise)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, denoised)
        if levels[i + 1] == 0:
            x = denoised
            continue
        sigma_s = torch.exp(torch.lerp(sigma.log(), sigma_next.log(), r))  # lambda + r h
        z1, z2 = noise(sigma, sigma_s), noise(sigma_s, sigma_next)
        a, b = sigma - sigma_s, sigma_s - sigma_next
        z = (a**0.5 * z1 + b**0.5 * z2) / (a + b) ** 0.5
        # Stage 1: ancestral DPM-Solver++(1) step to sigma_s.
        x_2 = _ancestral_dpm_step(x, sigma, sigma_s, denoised, z1 * s_noise, eta)
        denoised_2 = denoiser(x_2, sigma_s * s_in, **extra_args)
        # Stage 2: the full step with the blended estimate.
        fac = 1 / (2 * r)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = _ancestral_dpm_step(x, sigma, sigma_next, denoised_d, z * s_noise, eta)
    return x


def _ancestral_dpm_step(
    x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor, z: Tensor, eta: float
) -> Tensor:
    """DPM-Solver++(1) step to `sigma_down`, plus `sigma_up * z`."""
    sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
    return (
        (sigma_down / sigma) * x
        - torch.expm1(sigma_down.log() - sigma.log()) * denoised
        + (z * sigma_up)
    )


@torch.no_grad()
def sample_lcm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    noise: NoiseSampler | None = None,
) -> Tensor:
    """Latent Consistency Model multistep sampler, Luo et al. 2023 (Algorithm 1).

    Jump to the denoised estimate, then re-noise to the next sigma with fresh noise. Meant for
    LCM / LCM-LoRA checkpoints with few (2-8) steps.
    """
    sigmas, s_in, extra_args, noise, levels = _prepare(x, sigmas, extra_args, noise)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, denoised)
        x = denoised
        if levels[i + 1] > 0:
            x = x + noise(sigma, sigma_next) * sigma_next
    return x


Sampler = Callable[..., Tensor]

SAMPLERS: dict[str, Sampler] = {
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_sde": sample_dpmpp_sde,
    "lcm": sample_lcm,
}


def get_sampler(name: str | Sampler) -> Sampler:
    """`SAMPLERS[name]`, or `name` itself if it is a sampler function (your own).

    Raises:
        ValueError: `name` is not in `SAMPLERS` (the message lists the valid names).
    """
    if callable(name):
        return name
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def takes(sampler: Sampler, parameter: str) -> bool:
    """Whether `sampler` takes the keyword `parameter` (by name, or through `**kwargs`)."""
    params = inspect.signature(sampler).parameters
    return parameter in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def callable_name(f: object) -> str:
    """A function of your own named in messages (sampler, schedule, guidance, flow source):
    its `__name__` (a function, a class), else its type's; never its repr's address."""
    return getattr(f, "__name__", type(f).__name__)


def samplers_with(parameter: str) -> list[str]:
    """Names in `SAMPLERS` whose sampler takes the keyword `parameter` (e.g. "eta"), in order."""
    return [name for name, f in SAMPLERS.items() if takes(f, parameter)]
