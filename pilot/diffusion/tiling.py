"""Tiled and sliced application of maps (VAE encode/decode of images too large for memory).

`tiled` cuts the images into tiles, `sliced` cuts the batch into slices of images (VAE
slicing: a batch's peak memory becomes one slice's). Tiles overlap and are blended with linear
ramps where a neighbour exists, so seams vanish. The VAE's group norms see per-tile statistics,
so a tiled result is close to, not equal to, the whole-image one (the price every tiled VAE
pays); a tile covering the image is exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def tiled(
    fn: Callable[[Tensor], Tensor], x: Tensor, tile: int, scale: float, overlap: int | None = None
) -> Tensor:
    """Apply `fn` to overlapping tiles of `x` (B, C, H, W) and blend the outputs.

    Args:
        fn: Spatial map whose output is `scale` times its input size (8 for a VAE decoder,
            1/8 for an encoder).
        x: Input, (B, C, H, W).
        tile: Tile side in input pixels.
        scale: Output pixels per input pixel.
        overlap: Overlap of neighbouring tiles in input pixels (default tile // 4).

    Returns:
        (B, C', H * scale, W * scale), in the dtype of `fn`'s output.
    """
    align = max(1, round(1 / scale))  # tile corners must land on whole output pixels
    tile = max(align, tile // align * align)
    overlap = (tile // 4 if overlap is None else overlap) // align * align
    H, W = x.shape[-2:]
    if tile >= H and tile >= W:
        return fn(x)
    if overlap >= tile:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile {tile}")
    out = weights = None
    for y0 in _starts(H, tile, tile - overlap):
        for x0 in _starts(W, tile, tile - overlap):
            piece = fn(x[..., y0 : y0 + tile, x0 : x0 + tile])  # (B, C', th * s, tw * s)
            if out is None:
                shape = (*piece.shape[:2], round(H * scale), round(W * scale))
                out = piece.new_zeros(shape, dtype=torch.float32)
                weights = piece.new_zeros(shape[-2:], dtype=torch.float32)
            oy, ox = round(y0 * scale), round(x0 * scale)
            h, w = piece.shape[-2:]
            ramp = round(overlap * scale)
            wy = _ramp(h, ramp, oy > 0, oy + h < out.shape[-2], piece.device)
            wx = _ramp(w, ramp, ox > 0, ox + w < out.shape[-1], piece.device)
            mask = wy[:, None] * wx[None, :]  # (h, w)
            out[..., oy : oy + h, ox : ox + w] += piece.float() * mask
            weights[oy : oy + h, ox : ox + w] += mask
    return (out / weights).to(piece.dtype)


def sliced(fn: Callable[[Tensor], Tensor], x: Tensor, size: int | None) -> Tensor:
    """Apply `fn` to slices of at most `size` items of `x`'s batch, outputs in one tensor.

    Only the output and one slice's work are alive at a time; for a map that treats the items
    of a batch independently (a VAE) the result is the whole-batch one up to float rounding.
    `size` None (or >= the batch) calls `fn` once on all of `x`.

    Raises:
        ValueError: `size` below 1.
    """
    if size is not None and size < 1:
        raise ValueError(f"a slice must hold >= 1 item of the batch (None: all), got {size}")
    n = len(x)
    if size is None or size >= n:
        return fn(x)
    out = None
    for i in range(0, n, size):
        piece = fn(x[i : i + size])
        if out is None:
            out = piece.new_empty((n, *piece.shape[1:]))
        out[i : i + len(piece)] = piece
    return out


def _starts(n: int, tile: int, stride: int) -> list[int]:
    """Tile start offsets covering [0, n), the last tile flush with the end."""
    if n <= tile:
        return [0]
    return [*range(0, n - tile, stride), n - tile]


def _ramp(n: int, ramp: int, before: bool, after: bool, device) -> Tensor:
    """Blend weights along one tile side: linear ramps of `ramp` pixels towards neighbours."""
    w = torch.ones(n, device=device)
    if ramp > 0:
        up = (torch.arange(ramp, device=device) + 0.5) / ramp
        if before:
            w[:ramp] = torch.minimum(w[:ramp], up)
        if after:
            w[-ramp:] = torch.minimum(w[-ramp:], up.flip(0))
    return w
