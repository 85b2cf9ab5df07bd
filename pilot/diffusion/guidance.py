"""Denoiser wrappers: classifier-free guidance, mask-blending inpainting and its staged form
(`StagedInpaint`: the feedback sampler's re-noising of disoccluded pixels).

Each wrapper is itself a denoiser `D(x, sigma, **cond) -> denoised`, so they stack and any
sampler takes them. Order matters where batches differ: CFG doubles the batch for the model, so
per-item wrappers go outside it, `InpaintDenoiser(CFGDenoiser(EpsDenoiser(unet), 7.5), ...)`,
and ControlNet (which must see both branches) inside.

A guidance of your own goes where `CFGDenoiser` goes (`SamplingSettings(guidance=...)`): a
function or class `guidance(denoiser, cfg, *, rescale, sigmas) -> guided denoiser`; `guide`
builds it, held to that contract (its docstring).
"""

import inspect
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from pilot.deprecation import renamed_keywords
from pilot.diffusion.denoisers import Denoiser, append_dims
from pilot.diffusion.samplers import callable_name, takes


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


@renamed_keywords(scale="cfg")
def cfg_doubles_batch(cfg: float | Tensor) -> bool:
    """Whether `CFGDenoiser(..., cfg)` calls its inner denoiser with `[uncond, cond]` halves."""
    return not (isinstance(cfg, (int, float)) and cfg == 1)


# A guidance of your own (`guide`): `guidance(denoiser, cfg, *, rescale, sigmas) -> denoiser`.
Guidance = Callable[..., Denoiser]
_SIGNATURE = "guidance(denoiser, cfg, *, rescale, sigmas) -> denoiser"


def doubles_batch(guidance: Guidance, cfg: float | Tensor) -> bool:
    """Whether the guidance calls the model denoiser on `[uncond, cond]` halves, the layout
    ControlNets are told (`control_wrapper`): `CFGDenoiser` (a subclass too) unless `cfg` is
    the number 1 (`cfg_doubles_batch`), a guidance of your own at every step."""
    built_in = isinstance(guidance, type) and issubclass(guidance, CFGDenoiser)
    return cfg_doubles_batch(cfg) if built_in else True


def check_guidance(guidance: object, rescale: float = 0.0) -> None:
    """ValueError unless `guide` can call `guidance`: as `guidance(denoiser, cfg)`, with
    `rescale=` and `sigmas=` where it takes them, and taking `rescale` if it is not 0."""
    if not callable(guidance):
        raise ValueError(f"guidance={guidance!r}: expected a function or class {_SIGNATURE}")
    name = callable_name(guidance)
    keywords = {k: None for k in ("rescale", "sigmas") if takes(guidance, k)}
    try:
        inspect.signature(guidance).bind(None, 1.0, **keywords)
    except TypeError as e:
        raise ValueError(
            f"guidance {name} does not take the arguments of {_SIGNATURE}: {e}"
        ) from None
    if rescale and "rescale" not in keywords:
        raise ValueError(f"guidance {name} takes no rescale (got rescale={rescale})")


def guide(
    guidance: Guidance,
    denoiser: Denoiser,
    cfg: float | Tensor,
    *,
    rescale: float = 0.0,
    sigmas: Tensor | Sequence[float] | None = None,
    controlled: bool = False,
) -> Denoiser:
    """The guided denoiser `guidance(denoiser, cfg, rescale=, sigmas=)`: `CFGDenoiser` (as it
    is) or a guidance of your own, held to the contract below, a broken term a one-line
    ValueError naming the guidance.

    Contract of `guidance(denoiser, cfg, *, rescale, sigmas) -> guided` (a function or a class):
    `rescale` and `sigmas` are passed only if it takes them (a nonzero `rescale` otherwise is
    refused), and `guided(x, sigma, *, context, uncond_context, **kwargs)` returns the guided
    estimate shaped like `x` (B, C, h, w), for sigma (B,) and contexts (B, S, D). With
    ControlNets (`controlled`), `guided` calls `denoiser` on the batch layout they are told
    (`doubles_batch`): `[uncond, cond]` halves (`torch.cat([x, x])`, `context=torch.cat(
    [uncond_context, context])`, 2B items) at every step, whatever `cfg` (a subclass of
    `CFGDenoiser`: as `CFGDenoiser`, the B conditional items alone where `cfg` is 1).

    Args:
        guidance: `CFGDenoiser`, or a guidance of your own (`SamplingSettings.guidance`).
        denoiser: The model denoiser `D(x, sigma, *, context, **kwargs)` (`EpsDenoiser`,
            `VDenoiser`; ControlNets inside where `controlled`).
        cfg: Guidance scale: a number, or a (B,) tensor of per-item scales.
        rescale: Guidance rescale phi in [0, 1] (`CFGDenoiser`).
        sigmas: The (n + 1,) sigmas the sampler runs (img2img: the sliced ones).
        controlled: `denoiser` holds ControlNets told the layout of `doubles_batch`
            (`control_wrapper(cfg=, guidance=)`).
    """
    if guidance is CFGDenoiser:  # the built-in: nothing to check, nothing added per step
        return CFGDenoiser(denoiser, cfg, rescale=rescale)
    check_guidance(guidance, rescale)
    name, kwargs = callable_name(guidance), {}
    if takes(guidance, "rescale"):
        kwargs["rescale"] = rescale
    if takes(guidance, "sigmas"):
        if sigmas is None:
            raise ValueError(f"guidance {name} takes sigmas: pass the sampler's sigmas")
        kwargs["sigmas"] = sigmas
    contract = _Contract(name, doubles_batch(guidance, cfg) if controlled else None)
    guided = guidance(contract.model(denoiser), cfg, **kwargs)
    try:
        inspect.signature(guided).bind(None, None, context=None, uncond_context=None)
    except (TypeError, ValueError) as e:  # ValueError: not callable, or no signature
        raise ValueError(
            f"guidance {name} returned {type(guided).__name__}, not a denoiser "
            f"guided(x, sigma, *, context, uncond_context): {e}"
        ) from None
    return contract.guided(guided)


class _Contract:
    """Checks of a guidance of your own as it runs (`guide`): the shape of its estimate and,
    with ControlNets (`doubled` not None), the batch it calls the model denoiser on. Both are
    read on the host: no wait for the device."""

    def __init__(self, name: str, doubled: bool | None) -> None:
        self.name, self.doubled, self.batch = name, doubled, 0

    def model(self, denoiser: Denoiser) -> Denoiser:
        """`denoiser`, checking it is called on the layout its ControlNets were told."""
        if self.doubled is None:
            return denoiser

        def checked(x: Tensor, sigma: Tensor, **cond) -> Tensor:
            want = self.batch * (2 if self.doubled else 1)
            if x.shape[0] != want:
                how = "[uncond, cond] halves" if self.doubled else "the cond items alone (cfg 1)"
                raise ValueError(
                    f"guidance {self.name} called the model denoiser on {x.shape[0]} items for "
                    f"a batch of {self.batch}: with ControlNets it must call it on {how} "
                    f"({want} items), the layout they were told"
                )
            return denoiser(x, sigma, **cond)

        return checked

    def guided(self, guided: Denoiser) -> Denoiser:
        """`guided`, checking it returns an estimate shaped like `x`."""

        def checked(x: Tensor, sigma: Tensor, **cond) -> Tensor:
            self.batch = x.shape[0]
            out = guided(x, sigma, **cond)
            if not isinstance(out, Tensor) or out.shape != x.shape:
                got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else repr(out)[:60]
                raise ValueError(
                    f"guidance {self.name}: its denoiser returned {got} for x of shape "
                    f"{tuple(x.shape)}: expected the guided estimate, shaped like x"
                )
            return out

        return checked


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
