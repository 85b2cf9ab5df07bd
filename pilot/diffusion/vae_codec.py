"""The VAE at the pipeline's API: images in [0, 1] <-> VAE-scaled latents.

`encode_images` (posterior mean, deterministic) and `decode_latents`, each with tiling (large
images) and slicing (`batch`: the VAE's memory of a few images, not B); `decode_latents` also
follows the float32 rules of a half-precision decode (`VAEUpcast`) and takes a decoder of your
own (a `PreviewDecoder`). `check_decode` checks its settings before any sampling.

Apart from the pipeline because it is the pixel / latent boundary, with no sampling in it. The
pipeline itself is `pilot.diffusion.pipeline`, which re-exports these names.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal, get_args

import torch
from torch import Tensor

from pilot.diffusion.pipeline_config import check_size, check_tile
from pilot.diffusion.tiling import sliced, tiled

if TYPE_CHECKING:  # annotations only: the loaders are not imported at run time
    from pilot.weights.loaders import StableDiffusion

# float32 rules of a half-precision VAE decode (`decode_latents`).
VAEUpcast = Literal["auto", "always", "never"]
VAE_UPCASTS: tuple[str, ...] = get_args(VAEUpcast)


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
