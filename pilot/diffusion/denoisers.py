"""Denoisers: `D(x, sigma, **cond) -> denoised x0`, wrapping eps- and v-prediction UNets.

Karras et al. 2022 (EDM, eq. 7) write any network as a denoiser

    D(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma))

with `x = x0 + sigma * eps` (variance exploding). A DDPM-trained UNet takes the VP latent
`x / sqrt(1 + sigma^2)` (so `c_in = 1 / sqrt(1 + sigma^2)`) and its integer timestep, so
`c_noise` is the model's timestep for `sigma` (`DiscreteSchedule.sigma_to_t`). The UNet contract
is `unet(x, t, context, **kwargs) -> model output`, where kwargs are e.g. ControlNet residuals.

Scalings are computed in float32 (or float64 if sigma is) and cast to `x`'s dtype; the UNet is
fed its own parameter dtype, and the result comes back in `x`'s dtype on `x`'s device.
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn

from pilot.diffusion.schedules import DiscreteSchedule

Denoiser = Callable[..., Tensor]


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """View a (B,) or 0-d tensor as (B, 1, ..., 1) with `ndim` dims, for broadcasting."""
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))


def _model_dtype(model: Callable, default: torch.dtype) -> torch.dtype:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.dtype
    return default


def _batch_sigma(x: Tensor, sigma: Tensor | float) -> Tensor:
    """Noise levels as a (B,) tensor on `x`'s device, float32 (or float64 if given so)."""
    sigma = torch.as_tensor(sigma, device=x.device)
    sigma = sigma.float() if sigma.dtype != torch.float64 else sigma
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma


class DiscreteDenoiser:
    """Base for UNets trained on a discrete DDPM schedule (k-diffusion's `DiscreteSchedule`).

    Args:
        unet: `unet(x, t, context, **kwargs) -> output`, e.g. `pilot.models.unet.UNet`.
        schedule: The model's training schedule (SD: `DiscreteSchedule.scaled_linear()`).
        quantize: Feed the UNet the nearest integer timestep instead of the interpolated one
            (what diffusers' DPMSolverMultistepScheduler does with Karras sigmas).
    """

    def __init__(
        self,
        unet: Callable[..., Tensor],
        schedule: DiscreteSchedule | None = None,
        *,
        quantize: bool = False,
    ) -> None:
        self.unet = unet
        self.schedule = schedule if schedule is not None else DiscreteSchedule.scaled_linear()
        self.quantize = quantize

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`(c_skip, c_out, c_in)` for noise levels `sigma`, same shape as `sigma`."""
        raise NotImplementedError

    def __call__(self, x: Tensor, sigma: Tensor, *, context: Tensor, **kwargs) -> Tensor:
        """Denoise `x` (B, C, H, W) at noise levels `sigma` (B,) or 0-d, given text `context`.

        Extra keyword arguments go to the UNet unchanged (e.g. `down_residuals`).
        """
        sigma = _batch_sigma(x, sigma)
        model_in, t = self.model_inputs(x, sigma)
        c_skip, c_out, _ = (append_dims(c, x.ndim).to(x.dtype) for c in self.scalings(sigma))
        out = self.unet(model_in, t, context, **kwargs).to(x.dtype)
        return x * c_skip + out * c_out

    def model_inputs(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """The UNet's inputs for `x` at `sigma`: `c_in * x` in the UNet's dtype and `c_noise`.

        A ControlNet takes the same inputs as the UNet it controls (`ControlDenoiser`).

        Returns:
            `(model_in, t)`: (B, C, H, W) and the timesteps (B,).
        """
        sigma = _batch_sigma(x, sigma)
        c_in = append_dims(self.scalings(sigma)[2], x.ndim).to(x.dtype)
        t = self.schedule.sigma_to_t(sigma, quantize=self.quantize)  # c_noise, (B,)
        return (x * c_in).to(_model_dtype(self.unet, x.dtype)), t


class EpsDenoiser(DiscreteDenoiser):
    """Denoiser for noise-predicting (eps) UNets, Ho et al. 2020: `D = x - sigma * eps`."""

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`(c_skip, c_out, c_in) = (1, -sigma, 1 / sqrt(1 + sigma^2))`."""
        c_in = 1 / (sigma**2 + 1) ** 0.5
        return torch.ones_like(sigma), -sigma, c_in


class VDenoiser(DiscreteDenoiser):
    """Denoiser for v-predicting UNets (Salimans & Ho 2022; SD 2.x 768-v).

    With `v = alpha * eps - sigma_vp * x0` in VP terms, `D = x / (1 + sigma^2) - sigma * v /
    sqrt(1 + sigma^2)`: EDM's scalings with `sigma_data = 1`.
    """

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """EDM's `(c_skip, c_out, c_in)` with `sigma_data = 1`: `(1 / (1 + sigma^2),
        -sigma / sqrt(1 + sigma^2), 1 / sqrt(1 + sigma^2))`."""
        c_in = 1 / (sigma**2 + 1) ** 0.5
        return 1 / (sigma**2 + 1), -sigma / (sigma**2 + 1) ** 0.5, c_in


DENOISERS: dict[str, type[DiscreteDenoiser]] = {"epsilon": EpsDenoiser, "v_prediction": VDenoiser}


def make_denoiser(
    unet: Callable[..., Tensor],
    prediction_type: str = "epsilon",
    schedule: DiscreteSchedule | None = None,
    *,
    quantize: bool = False,
) -> DiscreteDenoiser:
    """Wrap `unet` according to its prediction type ("epsilon" or "v_prediction").

    Raises:
        ValueError: unknown prediction type (the message lists the valid ones).
    """
    if prediction_type not in DENOISERS:
        raise ValueError(
            f"unknown prediction type {prediction_type!r}; valid: {', '.join(DENOISERS)}"
        )
    return DENOISERS[prediction_type](unet, schedule, quantize=quantize)
