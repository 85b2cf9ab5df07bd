"""Denoiser wrappers: classifier-free guidance, mask-blending inpainting and its staged form
(`StagedInpaint`: the feedback sampler's re-noising of disoccluded pixels).

Each wrapper is itself a denoiser `D(x, sigma, **cond) -> denoised`, so they stack and any
sampler takes them. Order matters where batches differ: CFG doubles the batch for the model, so
per-item wrappers go outside it, `InpaintDenoiser(CFGDenoiser(EpsDenoiser(unet), 7.5), ...)`,
and ControlNet (which must see both branches) inside.
"""

import numbers

import torch
from torch import Tensor

from pilot.deprecation import renamed_keywords
from pilot.diffusion.denoisers import Denoiser, append_dims


class CFGDenoiser:
    """Classifier-free guidance, Ho & Salimans 2022, with guidance rescale (Lin et al. 2023).

    `D = D_uncond + cfg * (D_cond - D_uncond)`, both branches in one batched call
    (`[uncond, cond]`, diffusers' order). Guidance is linear in the model output, so guiding
    denoised estimates equals guiding eps or v predictions.

    Guidance rescale ("Common Diffusion Noise Schedules and Sample Steps Are Flawed", sec. 3.4)
    rescales the guided v prediction to the per-item std of the conditional one and mixes by
    `rescale`: `v = rescale * v_cfg * std(v_cond) / std(v_cfg) + (1 - rescale) * v_cfg`. Quirk:
    diffusers' `guidance_rescale` applies this to the raw model output, i.e. to eps for eps
    models; ours is the paper's (and ComfyUI's RescaleCFG) v space for every model, equal to
    diffusers' for v models.

    Args:
        denoiser: The conditional denoiser; called with `context` and the kwargs, which must
            already cover the doubled batch (ControlNet should wrap the inner denoiser).
        cfg: Guidance scale (1 = no guidance, a single conditional call); a float or a (B,)
            tensor of per-item scales. `scale=` is its deprecated name; the attribute is
            `scale`.
        rescale: Guidance rescale factor phi in [0, 1] (the paper suggests 0.7).
    """

    @renamed_keywords(scale="cfg")
    def __init__(self, denoiser: Denoiser, cfg: float | Tensor = 7.5, *, rescale: float = 0.0):
        check_cfg(cfg)
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"guidance rescale must be in [0, 1], got {rescale}")
        self.denoiser, self.scale, self.rescale = denoiser, cfg, rescale

    def __call__(
        self, x: Tensor, sigma: Tensor, *, context: Tensor, uncond_context: Tensor, **kwargs
    ) -> Tensor:
        """Guided denoised estimate of `x` (B, ...) at `sigma` (B,).

        Args:
            context: Conditional text embeddings, (B, S, D).
            uncond_context: Unconditional (negative prompt) embeddings, (B, S', D).
        """
        if isinstance(self.scale, (int, float)) and self.scale == 1:
            return self.denoiser(x, sigma, context=context, **kwargs)
        sigma = torch.as_tensor(sigma, device=x.device).expand(x.shape[0])
        context_in = _cat_contexts(uncond_context, context)
        x_in, sigma_in = torch.cat([x, x]), torch.cat([sigma, sigma])  # (2B, ...), (2B,)
        out = self.denoiser(x_in, sigma_in, context=context_in, **kwargs)
        uncond, cond = out.chunk(2)  # (B, ...) each
        scale = _as_batch(self.scale, x)
        denoised = uncond + scale * (cond - uncond)
        if self.rescale > 0:
            denoised = _rescale(x, sigma, cond, denoised, self.rescale)
        return denoised


def check_cfg(cfg: object, name: str = "cfg") -> None:
    """ValueError unless a guidance scale is a number or a tensor of per-item scales (a string,
    e.g. a `FeedbackConfig` schedule, would fail deep inside sampling)."""
    if isinstance(cfg, bool) or not isinstance(cfg, (numbers.Real, Tensor)):
        raise ValueError(f"{name}={cfg!r}: expected a number (or a (B,) tensor of scales)")


def _as_batch(value: float | Tensor, x: Tensor) -> float | Tensor:
    if isinstance(value, Tensor):
        return append_dims(value.to(x.device, x.dtype), x.ndim)
    return value


def _cat_contexts(uncond: Tensor, cond: Tensor) -> Tensor:
    if uncond.shape != cond.shape:
        raise ValueError(
            f"uncond context {tuple(uncond.shape)} and context {tuple(cond.shape)} differ; "
            "encode both to the same number of 77-token chunks"
        )
    return torch.cat([uncond, cond])


def _rescale(x: Tensor, sigma: Tensor, cond: Tensor, guided: Tensor, phi: float) -> Tensor:
    """Lin et al. 2023 rescale on v: `v = (x - (1 + s^2) D) / (s sqrt(1 + s^2))` and back."""
    s = append_dims(sigma, x.ndim).to(x.dtype)
    norm = (1 + s**2) ** 0.5

    def to_v(d: Tensor) -> Tensor:
        return (x - norm**2 * d) / (s * norm)

    v_cond, v_cfg = to_v(cond), to_v(guided)
    dims = list(range(1, x.ndim))
    std_ratio = v_cond.std(dim=dims, keepdim=True) / v_cfg.std(dim=dims, keepdim=True)
    v = phi * v_cfg * std_ratio + (1 - phi) * v_cfg
    return x / norm**2 - s * v / norm


class InpaintDenoiser:
    """Mask-blending inpainting for ordinary checkpoints (the blended-diffusion / RePaint idea,
    Avrahami et al. 2022, Lugmayr et al. 2022; A1111's and diffusers' "legacy" inpainting).

    Mask convention: `mask` is 1 where the image is repainted and 0 where it is kept (values in
    between blend), at latent resolution, (B or 1, 1, h, w). Before each call the kept region
    of `x` is replaced by the init latents re-noised to the current sigma with the fixed `noise`
    (`init + sigma * noise`), and after it the kept region of the estimate is the init latents:
    at sigma 0 the kept region equals `init_latents`.

    Args:
        denoiser: The inner denoiser.
        init_latents: Latents of the image to inpaint, (B, C, h, w), VAE-scaled.
        mask: 1 = repaint, 0 = keep; (B or 1, 1, h, w) in [0, 1].
        noise: Fixed standard normal noise like `init_latents` (draw it once, e.g. from
            `BatchedNoise`, and reuse it for the initial latents).
    """

    def __init__(self, denoiser: Denoiser, init_latents: Tensor, mask: Tensor, noise: Tensor):
        if mask.shape[-2:] != init_latents.shape[-2:] or noise.shape != init_latents.shape:
            raise ValueError(
                f"mask {tuple(mask.shape)}, noise {tuple(noise.shape)} and init latents "
                f"{tuple(init_latents.shape)} must have matching sizes"
            )
        self.denoiser, self.init, self.mask, self.noise = denoiser, init_latents, mask, noise

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device).expand(x.shape[0])
        mask = self.mask.to(x)
        init, noise = self.init.to(x), self.noise.to(x)
        known = init + noise * append_dims(sigma, x.ndim).to(x.dtype)
        denoised = self.denoiser(torch.lerp(known, x, mask), sigma, **cond)
        return torch.lerp(init, denoised, mask)


class StagedInpaint:
    """Masked re-noising: the unmasked region is held at `init + sigma * noise` (inpainting,
    `InpaintDenoiser`) while sigma > `sigma_join`, then sampled freely with the rest.

    With `sigma_join` = the img2img start of the frame's strength, the masked (disoccluded)
    region is denoised from a higher noise level than the region carried from the last frame;
    with `sigma_join` = 0 the carried region is kept as it is (pure inpainting).
    """

    def __init__(
        self, denoiser: Denoiser, init: Tensor, mask: Tensor, noise: Tensor, sigma_join: Tensor
    ) -> None:
        self.denoiser, self.init, self.mask, self.noise = denoiser, init, mask, noise
        self.sigma_join = float(sigma_join)

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        """Inpaint with the mask while sigma > `sigma_join`, with an all-ones mask after (the
        free call exactly: `lerp(a, b, 1) == b`), chosen on the device: no read of sigma."""
        mask = self.mask
        if self.sigma_join > 0:
            sigma_b = torch.as_tensor(sigma, device=x.device).expand(x.shape[0])
            held = append_dims(sigma_b > self.sigma_join * (1 + 1e-6), x.ndim)
            mask = torch.where(held, mask.to(x), 1.0)
        return InpaintDenoiser(self.denoiser, self.init, mask, self.noise)(x, sigma, **cond)
