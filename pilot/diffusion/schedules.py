"""Noise schedules: the model's discrete sigmas and sampling grids, all with a trailing zero.

Everything here works in the variance-exploding ("sigma") parameterisation of Karras et al. 2022:
a latent at noise level `sigma` is `x = x0 + sigma * eps`. A discrete DDPM schedule with
cumulative products `alphas_cumprod` maps to it by `sigma_t = sqrt((1 - a_t) / a_t)`, and a VP
latent `x_vp = sqrt(a_t) x0 + sqrt(1 - a_t) eps` is `x / sqrt(1 + sigma_t^2)`.

Sampling grids are pure functions returning a float32 tensor of `n + 1` decreasing sigmas whose
last entry is 0 (or `sigma_min`, see `get_sigmas_discrete`). img2img starts at `sigmas[k:]`.
`SCHEDULES` maps the names offered on the command line to `(n, schedule) -> sigmas`.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

Spacing = Literal["leading", "trailing", "linspace"]
FinalSigma = Literal["zero", "sigma_min"]


@dataclass(frozen=True, eq=False)
class DiscreteSchedule:
    """A trained model's discrete noise levels with timestep <-> sigma interpolation.

    The idea of k-diffusion's `DiscreteSchedule`: the UNet was trained on integer timesteps
    `t = 0 .. T-1`, each with a noise level `sigmas[t]`; samplers work with continuous sigmas and
    the UNet is fed the fractional timestep found by linear interpolation in log-sigma.

    Attributes:
        sigmas: (T,) float32, increasing with t.
    """

    sigmas: Tensor
    # device -> float64 log-sigmas: a copy to a GPU each call would wait for the GPU's queue
    _log_sigmas: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def scaled_linear(
        cls,
        beta_start: float = 0.00085,  # Stable Diffusion 1.x / 2.x
        beta_end: float = 0.012,
        num_train_timesteps: int = 1000,
    ) -> "DiscreteSchedule":
        """Stable Diffusion's schedule: betas linear in sqrt(beta), Rombach et al. 2022.

        Computed in float32 exactly as diffusers' schedulers do, so sigmas match bit for bit.
        """
        betas = (
            torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32)
            ** 2
        )
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        return cls.from_alphas_cumprod(alphas_cumprod)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor) -> "DiscreteSchedule":
        """Schedule from a DDPM's cumulative alpha products, (T,)."""
        return cls(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of training timesteps (1000 for SD)."""
        return self.sigmas.shape[0]

    @property
    def sigma_min(self) -> float:
        """Smallest trained noise level, `sigmas[0]` (t = 0)."""
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        """Largest trained noise level, `sigmas[-1]` (t = T - 1)."""
        return self.sigmas[-1].item()

    @property
    def alphas_cumprod(self) -> Tensor:
        """DDPM's cumulative alpha products (T,), float64: `1 / (1 + sigma^2)`."""
        return 1 / (1 + self.sigmas.double() ** 2)

    def log_sigmas(self, device: torch.device) -> Tensor:
        """`log(sigmas)` in float64 on `device`, copied there once: a copy from host memory
        waits for the GPU's queued work, and the denoiser asks for it every step."""
        device = torch.device(device)
        if device not in self._log_sigmas:  # a normal tensor, usable in and out of inference mode
            with torch.inference_mode(False), torch.no_grad():
                self._log_sigmas[device] = self.sigmas.to(device, torch.float64).log()
        return self._log_sigmas[device]

    def sigma_to_t(self, sigma: Tensor, *, quantize: bool = False) -> Tensor:
        """Fractional timestep of each sigma, by linear interpolation in log-sigma.

        Args:
            sigma: Noise levels, any shape; clamped to the trained range.
            quantize: Round to the nearest integer timestep (diffusers' DPM-Solver does this
                for Karras sigmas; the sigma itself is not changed).

        Returns:
            Timesteps in [0, T-1], float32, on `sigma`'s device.
        """
        # float64 so a sigma taken from `self.sigmas` maps back to its integer t exactly.
        log_sigmas = self.log_sigmas(sigma.device)
        log_sigma = sigma.to(torch.float64).clamp(min=1e-10).log()
        dists = log_sigma - log_sigmas.view(-1, *([1] * log_sigma.ndim))  # (T, *sigma.shape)
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=len(log_sigmas) - 2)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        t = low + w
        return (t.round() if quantize else t).to(torch.float32)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Sigma at (fractional) timesteps, log-linear between the trained ones (float32)."""
        t = t.to(torch.float64).clamp(0, self.num_train_timesteps - 1)
        log_sigmas = self.log_sigmas(t.device)
        low = t.floor().long().clamp(max=self.num_train_timesteps - 2)
        w = t - low
        log_sigma = (1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]
        return log_sigma.exp().to(torch.float32)


def spaced_timesteps(
    n: int,
    spacing: Spacing = "leading",
    *,
    steps_offset: int = 0,
    num_train_timesteps: int = 1000,
    dpm_solver_grid: bool = False,
) -> Tensor:
    """The `n` decreasing timesteps diffusers' schedulers visit (Lin et al. 2023, table 2).

    Args:
        n: Number of sampling steps.
        spacing: "leading" (`arange(n) * (T // n) + steps_offset`, SD's DDIM/PNDM default),
            "trailing" (`round(arange(T, 0, -T / n)) - 1`, starts at T - 1; its first n
            values, see `_trailing_timesteps`) or "linspace"
            (`linspace(0, T - 1, n)`, fractional).
        steps_offset: Added to "leading" timesteps (1 in SD's scheduler configs).
        num_train_timesteps: T.
        dpm_solver_grid: Reproduce diffusers' DPMSolverMultistepScheduler, which spaces
            `n + 1` points, drops the lowest one (its final step goes to sigma 0 anyway) and
            rounds "linspace" to integers.

    Returns:
        (n,) float64 timesteps, decreasing.
    """
    if spacing not in ("leading", "trailing", "linspace"):
        raise ValueError(f"unknown spacing {spacing!r}; valid: 'leading', 'trailing', 'linspace'")
    if not 0 < n <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {n}")
    T = num_train_timesteps
    if spacing == "trailing":  # the same grid for DPM-Solver; round() is half-to-even like numpy
        return _trailing_timesteps(n, T)
    m = n + 1 if dpm_solver_grid else n
    if spacing == "leading":
        t = torch.arange(m, dtype=torch.float64) * (T // m) + steps_offset
    else:
        t = torch.linspace(0, T - 1, m, dtype=torch.float64)
        t = t.round() if dpm_solver_grid else t
    t = t.flip(0)
    return t[:-1] if dpm_solver_grid else t


def _trailing_timesteps(n: int, T: int) -> Tensor:
    """`round(arange(T, 0, -T / n)) - 1` as numpy computes it (diffusers), exactly n values.

    Quirk: numpy's float `arange` steps by `delta = (T - T / n) - T` and, by float rounding,
    returns n + 1 values for 62 step counts in 1..1000 (n = 61, 103, 121, ...), the extra one
    t = -1; diffusers then runs n + 1 steps. We compute numpy's values `T + i * delta` for
    i < n only: the same first n timesteps, bit for bit (halves like 937.4999... included).
    """
    delta = (T - T / n) - T
    return (T + torch.arange(n, dtype=torch.float64) * delta).round() - 1


def get_sigmas_discrete(
    schedule: DiscreteSchedule,
    n: int,
    spacing: Spacing = "leading",
    *,
    steps_offset: int = 0,
    final: FinalSigma = "zero",
    dpm_solver_grid: bool = False,
) -> Tensor:
    """The model's own sigmas at `spaced_timesteps(...)`, then a final sigma.

    Args:
        schedule: The model's discrete schedule.
        n: Number of sampling steps.
        spacing, steps_offset, dpm_solver_grid: See `spaced_timesteps`.
        final: "zero" (k-diffusion; diffusers' Euler/DPM default) or "sigma_min": end at the
            model's sigma(t=0) instead, as diffusers' DDIMScheduler does with
            `set_alpha_to_one=False` (SD's config): its result is then still slightly noisy.

    Returns:
        (n + 1,) float32 sigmas.
    """
    t = spaced_timesteps(
        n,
        spacing,
        steps_offset=steps_offset,
        num_train_timesteps=schedule.num_train_timesteps,
        dpm_solver_grid=dpm_solver_grid,
    )
    # Quirk: diffusers interpolates fractional timesteps ("linspace") linearly in sigma; we
    # interpolate in log-sigma so that `sigma_to_t` returns exactly these timesteps to the UNet.
    # Integer timesteps give identical sigmas either way.
    return _append_final(schedule.t_to_sigma(t), schedule, final)


def get_sigmas_karras(
    n: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Karras et al. 2022 noise levels (eq. 5): linear in `sigma^(1/rho)`, then a zero.

    Returns:
        (n + 1,) float32 sigmas from `sigma_max` down to `sigma_min`, then 0.

    Raises:
        ValueError: `n` < 1.
    """
    _check_steps(n)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas.float(), sigmas.new_zeros(1, dtype=torch.float32)]).to(device)


def get_sigmas_exponential(
    n: int, sigma_min: float, sigma_max: float, device: torch.device | str | None = None
) -> Tensor:
    """Noise levels evenly spaced in log-sigma (k-diffusion's exponential schedule), then a zero.

    Returns:
        (n + 1,) float32 sigmas from `sigma_max` down to `sigma_min`, then 0.

    Raises:
        ValueError: `n` < 1.
    """
    _check_steps(n)
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    return torch.cat([sigmas.float(), sigmas.new_zeros(1, dtype=torch.float32)]).to(device)


def _check_steps(n: int) -> None:
    """ValueError unless `n` is a step count >= 1 (no upper bound off the trained grid)."""
    if n < 1:
        raise ValueError(f"steps must be >= 1, got {n}")


def prior_std(sigma: Tensor | float, *, data_std: float | None = None) -> Tensor | float:
    """Std of the initial latent at noise level `sigma`: `x_T = noise * prior_std(sigmas[0])`.

    Args:
        sigma: First sigma of the sampling grid.
        data_std: None gives `sigma` (k-diffusion's convention). 1.0 gives
            `sqrt(1 + sigma^2)`, the std of noised unit-variance data: diffusers' choice for
            every VP scheduler (DDIM, DPM-Solver: `init_noise_sigma = 1` in VP space) and, quirk,
            for its Euler schedulers with "leading" spacing only.
    """
    return sigma if data_std is None else (sigma**2 + data_std**2) ** 0.5


def _append_final(sigmas: Tensor, schedule: DiscreteSchedule, final: FinalSigma) -> Tensor:
    if final not in ("zero", "sigma_min"):
        raise ValueError(f"unknown final sigma {final!r}; valid: 'zero', 'sigma_min'")
    last = schedule.sigmas[:1] if final == "sigma_min" else sigmas.new_zeros(1)
    return torch.cat([sigmas, last.to(sigmas)])


def _leading(n: int, schedule: DiscreteSchedule) -> Tensor:
    # steps_offset=1 as in SD 1.x / 2.x scheduler configs.
    return get_sigmas_discrete(schedule, n, "leading", steps_offset=1)


def _trailing(n: int, schedule: DiscreteSchedule) -> Tensor:
    return get_sigmas_discrete(schedule, n, "trailing")


def _linspace(n: int, schedule: DiscreteSchedule) -> Tensor:
    return get_sigmas_discrete(schedule, n, "linspace")


def _karras(n: int, schedule: DiscreteSchedule) -> Tensor:
    # The full trained range (k-diffusion / A1111); diffusers instead takes the end points of its
    # spaced timesteps, the same with its default "linspace" spacing.
    return get_sigmas_karras(n, schedule.sigma_min, schedule.sigma_max)


def _exponential(n: int, schedule: DiscreteSchedule) -> Tensor:
    return get_sigmas_exponential(n, schedule.sigma_min, schedule.sigma_max)


# A named sampling grid: `(n, schedule) -> (n + 1,) sigmas`; your own may be passed too.
ScheduleFn = Callable[[int, DiscreteSchedule], Tensor]

SCHEDULES: dict[str, ScheduleFn] = {
    "leading": _leading,
    "trailing": _trailing,
    "linspace": _linspace,
    "karras": _karras,
    "exponential": _exponential,
}


def get_sigmas(name: str | ScheduleFn, n: int, schedule: DiscreteSchedule) -> Tensor:
    """Sampling grid `SCHEDULES[name]` with `n` steps for a model's schedule; `name` may also be
    a function of your own with the same signature, `(n, schedule) -> (n + 1,) sigmas`.

    Raises:
        ValueError: `name` is not in `SCHEDULES` (the message lists the valid names), or your
            function returned another number of sigmas than `n + 1`.
    """
    if callable(name):
        sigmas = name(n, schedule)
        shape = tuple(torch.as_tensor(sigmas).shape)
        if shape != (n + 1,):  # else fewer steps than asked, with no word
            from pilot.diffusion.samplers import callable_name  # samplers -> denoisers -> here

            raise ValueError(
                f"schedule {callable_name(name)} returned sigmas of shape {shape} for {n} "
                f"steps: expected ({n + 1},), the steps' starts and the final sigma (0)"
            )
        return sigmas
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](n, schedule)
