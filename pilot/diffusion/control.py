"""ControlNet guidance as a denoiser wrapper (Zhang et al. 2023), any number of ControlNets.

`ControlDenoiser(denoiser, controls, sigmas)` is a denoiser `D(x, sigma, **cond)`: it runs each
active ControlNet on the inputs the UNet will get (`DiscreteDenoiser.model_inputs`), sums their
residuals (MultiControlNet) and calls the inner denoiser with them as the UNet's
`down_residuals` / `mid_residual` keyword arguments. It goes inside CFG, which doubles the batch
to `[uncond, cond]` (both halves are controlled, as in diffusers), and inside inpainting:

    InpaintDenoiser(CFGDenoiser(ControlDenoiser(EpsDenoiser(unet), controls, sigmas), 7.5), ...)

`controlled_cfg(...)` builds the CFG part and tells the ControlNets how the batch is laid out;
`control_wrapper(...)` does the latter for a pipeline that adds CFG itself.

Start / end: each control acts on the sampling steps i (of n = len(sigmas) - 1) with
`start <= i / n` and `(i + 1) / n <= end`, diffusers' `control_guidance_start/end` rule. The
wrapper finds i from sigma: the step whose sigma is nearest in log-sigma (ties to the earlier
step), so samplers that evaluate between grid points (Heun, DPM2, DPM++ 2S / SDE, churn) work.
For img2img pass the sliced sigmas the sampler runs (diffusers' fractions are of those steps).

Guess mode (diffusers' `guess_mode`): residuals scaled from 0.1 (first skip) to 1 (mid block),
and under CFG applied to the conditional half only, the unconditional half getting none.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from pilot.deprecation import renamed_keywords
from pilot.diffusion.denoisers import DiscreteDenoiser
from pilot.diffusion.guidance import CFGDenoiser, Guidance, doubles_batch
from pilot.diffusion.guidance import cfg_doubles_batch as cfg_doubles_batch
from pilot.models.controlnet import ControlNet, ControlNetConfig
from pilot.models.unet import UNetConfig

if TYPE_CHECKING:  # annotations only: the loaders are not imported at run time
    from pilot.weights.loaders import StableDiffusion


@dataclass(frozen=True, eq=False)
class Control:
    """One ControlNet and how it steers sampling.

    Attributes:
        controlnet: The ControlNet (its UNet config must match the controlled UNet's).
        image: Control image, (B or 1, C, H, W) in [0, 1], `controlnet.cfg.downscale` (8) times
            the latents' height and width; RGB unless the model says otherwise.
        scale: Conditioning scale (diffusers' `controlnet_conditioning_scale`); 0 = no control.
        start: Fraction of the sampling steps before which the control is off.
        end: Fraction of the sampling steps after which the control is off.
        guess_mode: Log-spaced per-block scales, conditional branch only (see module docstring).
    """

    controlnet: ControlNet
    image: Tensor
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    guess_mode: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, (numbers.Real, Tensor)):
            raise ValueError(
                f"control scale={self.scale!r}: expected a number (keyframed scales: "
                "pilot.animation.inputs.ControlTrack)"
            )
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(
                f"control start={self.start}, end={self.end}: need 0 <= start <= end <= 1"
            )
        channels = self.controlnet.cfg.conditioning_channels
        if self.image.ndim != 4 or self.image.shape[1] != channels:
            raise ValueError(
                f"control image of shape {tuple(self.image.shape)}: expected (B, {channels}, H, W)"
            )

    @property
    def always_active(self) -> bool:
        """Acts at every step (start 0, end 1): no need to look at the step, on the host."""
        return self.start == 0.0 and self.end == 1.0

    def active(self, step: Tensor, num_steps: int) -> Tensor:
        """Whether the control acts at sampling steps `step` (B,) of `num_steps`; bool (B,)."""
        i = step.double()
        return ~((i / num_steps < self.start) | ((i + 1) / num_steps > self.end))  # diffusers


class ControlDenoiser:
    """ControlNet residuals for the inner denoiser's UNet, summed over any number of controls.

    Args:
        denoiser: The inner denoiser: a `DiscreteDenoiser` (`EpsDenoiser`, `VDenoiser`) whose
            UNet takes `down_residuals` and `mid_residual`.
        controls: The ControlNets with their images, scales, step windows and modes.
        sigmas: The (n + 1,) sigmas the sampler runs (img2img: the sliced ones), for start / end
            (a tensor or a list).
        cfg_batch: True when called by a guiding `CFGDenoiser`: the batch is `[uncond, cond]`
            halves and guess-mode controls act on the second half only. `controlled_cfg` sets it.
    """

    def __init__(
        self,
        denoiser: DiscreteDenoiser,
        controls: Sequence[Control],
        sigmas: Tensor | Sequence[float],
        *,
        cfg_batch: bool = False,
    ) -> None:
        if not isinstance(denoiser, DiscreteDenoiser):
            raise TypeError(
                f"ControlDenoiser wraps a DiscreteDenoiser (EpsDenoiser / VDenoiser), not "
                f"{type(denoiser).__name__}: put CFG and inpainting outside it"
            )
        self.denoiser, self.controls, self.cfg_batch = denoiser, tuple(controls), cfg_batch
        sigmas = torch.as_tensor(sigmas)  # a list too, as the samplers take
        grid = sigmas[:-1].double()  # where the steps start; the last sigma ends the last step
        if grid.numel() == 0 or not (grid > 0).all():
            raise ValueError(f"sigmas {sigmas.tolist()}: need positive noise levels, then the end")
        self.log_grid, self.num_steps = grid.log(), len(sigmas) - 1
        self._log_grids: dict[torch.device, Tensor] = {}  # log_grid per device, copied once
        self._hints: dict[tuple, Tensor] = {}  # memoised hint features (no-grad calls only)

    def step_index(self, sigma: Tensor) -> Tensor:
        """Sampling step (B,) of noise levels `sigma` (B,): nearest grid sigma in log-sigma."""
        if sigma.device not in self._log_grids:  # a copy from host waits for the GPU's queue
            self._log_grids[sigma.device] = self.log_grid.to(sigma.device)
        log_grid = self._log_grids[sigma.device]
        distance = (sigma.double().log()[:, None] - log_grid[None]).abs()  # (B, n)
        bias = torch.arange(len(log_grid), device=sigma.device) * 1e-6  # ties -> earlier step
        return (distance + bias).argmin(dim=1)

    def __call__(self, x: Tensor, sigma: Tensor, *, context: Tensor, **kwargs) -> Tensor:
        """Denoised estimate of `x` (B, C, h, w) at `sigma` (B,) under control."""
        sigma = torch.as_tensor(sigma, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
        windowed = any(not c.always_active for c in self.controls)
        step = self.step_index(sigma) if windowed else None
        model_in, t = self.denoiser.model_inputs(x, sigma)
        down, mid = kwargs.pop("down_residuals", None), kwargs.pop("mid_residual", None)
        for k, control in enumerate(self.controls):
            if control.scale == 0:
                continue
            # always a (B,) tensor: a CUDA-graphed ControlNet then replays one graph whatever
            # the scale (a float argument is part of a graph's signature)
            if control.always_active:  # decided on the host: no wait for the GPU
                scale = x.new_full((x.shape[0],), control.scale)
            else:
                active = control.active(step, self.num_steps)
                if not active.any():  # reads the GPU: only controls with a start / end
                    continue  # exactly the uncontrolled call when nothing is active
                scale = control.scale * active.to(x.dtype)
            d, m = self._residuals(k, control, model_in, t, context, scale)
            down = d if down is None else [a + b for a, b in zip(down, d, strict=True)]
            mid = m if mid is None else mid + m
        if down is not None:
            kwargs = {**kwargs, "down_residuals": down, "mid_residual": mid}
        return self.denoiser(x, sigma, context=context, **kwargs)

    def _residuals(
        self,
        k: int,
        control: Control,
        model_in: Tensor,
        t: Tensor,
        context: Tensor,
        scale: float | Tensor,
    ) -> tuple[list[Tensor], Tensor]:
        """One ControlNet's residuals; guess mode under CFG runs on the cond half only."""
        cond_only = control.guess_mode and self.cfg_batch
        if cond_only:
            half = model_in.shape[0] // 2
            model_in, t, context = model_in[half:], t[half:], context[half:]
            scale = scale[half:] if isinstance(scale, Tensor) else scale
        hint = self._hint(k, control, model_in, self.cfg_batch and not cond_only)
        dtype = control.controlnet.conv_in.weight.dtype  # may differ from the UNet's
        down, mid = control.controlnet(
            model_in.to(dtype),
            t,
            context.to(dtype),
            hint=hint,
            scale=scale,
            guess_mode=control.guess_mode,
        )
        down, mid = [r.to(model_in.dtype) for r in down], mid.to(model_in.dtype)
        if cond_only:  # zero residuals for the unconditional half (diffusers)
            down = [torch.cat([torch.zeros_like(r), r]) for r in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
        return down, mid

    def _hint(self, k: int, control: Control, model_in: Tensor, doubled: bool) -> Tensor:
        """Hint features of the control image for a batch like `model_in` (memoised).

        `doubled`: `model_in` holds `[uncond, cond]` halves of B items each, else B items.
        """
        n, image = model_in.shape[0], control.image
        items = n // 2 if doubled else n
        if image.shape[0] not in (1, items):
            where = f"[uncond, cond] halves of {items}" if doubled else f"{items}"
            cfg = 2 * image.shape[0] == n
            advice = " (under CFG: `controlled_cfg` or cfg_batch=True)" if cfg else ""
            raise ValueError(
                f"control image batch {image.shape[0]}: expected (B or 1, C, H, W) for a model "
                f"batch of {where} items{advice}"
            )
        key = (k, n, model_in.device, model_in.dtype)
        if key in self._hints:
            return self._hints[key]
        image = image.to(model_in.device).repeat(n // image.shape[0], 1, 1, 1)  # [img, img] CFG
        hint = control.controlnet.embed_hint(image)
        if not torch.is_grad_enabled():
            self._hints[key] = hint
        return hint


def check_controlnet_family(
    unet_cfg: UNetConfig, controlnet_cfg: ControlNetConfig, name: str
) -> None:
    """ValueError unless a ControlNet config was made for this UNet config's family (SD 1.x vs
    2.x, sizes), naming the ControlNet `name` and every key that differs."""
    keys = ("cross_attention_dim", "block_out_channels", "in_channels", "use_linear_projection")
    ours = controlnet_cfg.unet
    differ = {k: (getattr(ours, k), getattr(unet_cfg, k)) for k in keys}
    differ = {k: v for k, v in differ.items() if v[0] != v[1]}
    if differ:
        detail = ", ".join(f"{k}: ControlNet {a} vs model {b}" for k, (a, b) in differ.items())
        families = {768: "SD 1.x", 1024: "SD 2.x"}  # by text-embedding width
        a, b = differ.get("cross_attention_dim", (None, None))
        hint = (
            f" (an {families[a]} ControlNet on an {families[b]} model)"
            if {a, b} <= set(families)
            else ""
        )
        raise ValueError(f"ControlNet {name} does not fit the model{hint}: {detail}")


def check_controlnet_fits(sd: StableDiffusion, controlnet: ControlNet, name: str) -> None:
    """ValueError unless `controlnet` fits the pipeline `sd`, naming it `name`: made for the
    UNet's family (`check_controlnet_family`), with a hint encoder as coarse as the VAE."""
    check_controlnet_family(sd.unet.cfg, controlnet.cfg, name)
    if controlnet.cfg.downscale != sd.vae.cfg.downsample_factor:
        raise ValueError(
            f"ControlNet {name} takes images {controlnet.cfg.downscale}x its latents, but the "
            f"model's VAE downsamples {sd.vae.cfg.downsample_factor}x"
        )


def check_controls(
    sd: StableDiffusion,
    controls: Sequence[Control],
    batch: int,
    size: tuple[int, int] | None = None,
) -> None:
    """ValueError unless every control fits `sd` (`check_controlnet_fits`, named `controls[k]`)
    and has 1 or `batch` images of floats in [0, 1], of the output's (height, width) `size` if
    given (the hint encoder would take a few pixels more or less and shift the control)."""
    for k, control in enumerate(controls):
        check_controlnet_fits(sd, control.controlnet, f"controls[{k}]")
        if size is not None and tuple(control.image.shape[-2:]) != tuple(size):
            h, w = control.image.shape[-2:]
            raise ValueError(
                f"controls[{k}]: control image of {w}x{h} (WxH) for a {size[1]}x{size[0]} image: "
                "resize it to the output's size (pilot.control.read_image(path, (height, width)))"
            )
        if control.image.shape[0] not in (1, batch):
            raise ValueError(
                f"controls[{k}]: control image batch {control.image.shape[0]} for {batch} "
                "prompts: expected (B or 1, C, H, W)"
            )
        if not control.image.is_floating_point():
            raise ValueError(
                f"controls[{k}]: control image of dtype {control.image.dtype}: expected float "
                "in [0, 1]"
            )
        if control.image.device.type != "meta":
            from pilot.diffusion.pipeline import check_unit_range  # pipeline imports this module

            check_unit_range(control.image, f"controls[{k}]: control image")


@renamed_keywords(cfg_scale="cfg")
def control_wrapper(
    controls: Sequence[Control],
    sigmas: Tensor,
    *,
    cfg: float | Tensor,
    guidance: Guidance = CFGDenoiser,
) -> Callable[[DiscreteDenoiser], ControlDenoiser]:
    """`denoiser -> ControlDenoiser(denoiser, controls, sigmas, cfg_batch=...)`, for a pipeline
    that builds the model denoiser itself and puts CFG (guidance scale `cfg`; `cfg_scale=` is
    its deprecated name), or the `guidance` of your own, around the result (`guide`): the
    layout is `doubles_batch(guidance, cfg)`."""
    doubled = doubles_batch(guidance, cfg)
    return lambda denoiser: ControlDenoiser(denoiser, controls, sigmas, cfg_batch=doubled)


@renamed_keywords(scale="cfg")
def controlled_cfg(
    denoiser: DiscreteDenoiser,
    controls: Sequence[Control],
    sigmas: Tensor,
    cfg: float | Tensor = 7.5,
    *,
    rescale: float = 0.0,
) -> CFGDenoiser:
    """Classifier-free guidance over a ControlNet-controlled denoiser.

    `CFGDenoiser(ControlDenoiser(denoiser, controls, sigmas, cfg_batch=...), cfg, rescale)`,
    with `cfg_batch` set to whether CFG doubles the batch (every guidance scale `cfg` but the
    number 1; `scale=` is its deprecated name).
    """
    inner = control_wrapper(controls, sigmas, cfg=cfg)(denoiser)
    return CFGDenoiser(inner, cfg, rescale=rescale)
