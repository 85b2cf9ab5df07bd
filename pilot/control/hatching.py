"""Hatched-sketch control images from depth and normals: outlines plus tonal hatching.

The seed's look is a pen sketch: contour lines where the geometry breaks, and parallel hatch
strokes whose density follows the shading and whose direction follows the surface. Drawn here
from a depth and a normal pass (renderer output, or `normals_from_depth`):

- tone: Lambert shading `ambient + (1 - ambient) * max(0, n . light)`;
- strokes: straight stripes across each surface, running perpendicular to the normal's
  projection on the image (so they follow the surface's slope; a 45 degree default where a
  surface faces the camera), at `spacing` pixels; a second, crossing layer below `tone < 0.45`,
  a third, diagonal one below `0.2`; the first layer only below `0.8`;
- outlines: depth discontinuities (relative depth jump > `depth_edge`) and creases (normals of
  neighbours differing by more than `crease_deg`).

The result is white lines on black, (B, 3, H, W) in [0, 1], the line-type ControlNets'
convention (lineart, scribble, softedge); `1 - hatch(...)` is the paper-white drawing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Towards the upper left and the viewer, camera axes (x right, y down, z forward).
DEFAULT_LIGHT = (-0.5, -0.6, -0.62)
_LAYERS = ((0.8, 0.0), (0.45, math.pi / 2), (0.2, math.pi / 4))  # (tone below, angle offset)


def hatch(
    depth: Tensor,
    normals: Tensor,
    *,
    light: tuple[float, float, float] = DEFAULT_LIGHT,
    ambient: float = 0.15,
    spacing: float = 6.0,
    width: float = 1.2,
    depth_edge: float = 0.05,
    crease_deg: float = 30.0,
) -> Tensor:
    """Hatched sketch of a scene (see the module docstring).

    Args:
        depth: (B, 1, H, W) z-depth (any positive unit); non-finite or <= 0 is background.
        normals: (B, 3, H, W) camera-space unit normals facing the camera (OpenCV axes); zero
            vectors are background.
        light: Direction towards the light, camera axes.
        ambient: Tone of unlit surfaces.
        spacing: Distance between hatch strokes, pixels.
        width: Stroke width, pixels.
        depth_edge: Relative depth jump between neighbours drawn as an outline.
        crease_deg: Angle between neighbouring normals drawn as an outline.

    Returns:
        (B, 3, H, W) in [0, 1], 1 = ink.
    """
    if (
        depth.ndim != 4
        or depth.shape[1] != 1
        or normals.shape != (depth.shape[0], 3, *depth.shape[2:])
    ):
        raise ValueError(
            f"depth {tuple(depth.shape)} and normals {tuple(normals.shape)}: expected "
            "(B, 1, H, W) and (B, 3, H, W)"
        )
    surface = (normals != 0).any(1, keepdim=True) & torch.isfinite(depth) & (depth > 0)
    l_dir = F.normalize(torch.tensor(light, dtype=normals.dtype, device=normals.device), dim=0)
    tone = ambient + (1 - ambient) * (normals * l_dir.view(1, 3, 1, 1)).sum(
        1, keepdim=True
    ).clamp_min(0)
    strokes = _strokes(normals, tone, spacing, width)
    ink = torch.maximum(
        strokes * surface, outlines(depth, normals, surface, depth_edge, crease_deg)
    )
    return ink.expand(-1, 3, -1, -1).contiguous()


def _strokes(normals: Tensor, tone: Tensor, spacing: float, width: float) -> Tensor:
    """Anti-aliased hatch layers (B, 1, H, W) in [0, 1]."""
    B, _, H, W = normals.shape
    y, x = torch.meshgrid(
        torch.arange(H, device=normals.device, dtype=normals.dtype),
        torch.arange(W, device=normals.device, dtype=normals.dtype),
        indexing="ij",
    )
    nx, ny = normals[:, :1], normals[:, 1:2]
    slanted = (nx**2 + ny**2) > 1e-4  # the surface is seen at an angle
    # Strokes run perpendicular to the projected normal: their normal (nx, ny) is the stripe axis.
    base = torch.where(slanted, torch.atan2(ny, nx), torch.full_like(nx, math.pi / 4))
    ink = torch.zeros_like(tone)
    for threshold, offset in _LAYERS:
        angle = base + offset
        s = (x * torch.cos(angle) + y * torch.sin(angle)) / spacing
        distance = (s - s.round()).abs() * spacing  # pixels to the nearest stroke centre
        line = (width / 2 + 0.5 - distance).clamp(0, 1)
        ink = torch.maximum(ink, line * (tone < threshold))
    return ink


def outlines(
    depth: Tensor, normals: Tensor, surface: Tensor, depth_edge: float, crease_deg: float
) -> Tensor:
    """Contours (B, 1, H, W) in {0, 1}: silhouettes, depth jumps and normal creases."""
    z = torch.where(surface, depth, torch.full_like(depth, float("inf")))
    edge = torch.zeros_like(depth, dtype=torch.bool)
    cos_limit = math.cos(math.radians(crease_deg))
    for dim in (2, 3):
        z_a, z_b = z.narrow(dim, 0, z.shape[dim] - 1), z.narrow(dim, 1, z.shape[dim] - 1)
        s_a, s_b = (
            surface.narrow(dim, 0, z.shape[dim] - 1),
            surface.narrow(dim, 1, z.shape[dim] - 1),
        )
        n_a, n_b = (
            normals.narrow(dim, 0, z.shape[dim] - 1),
            normals.narrow(dim, 1, z.shape[dim] - 1),
        )
        near = torch.minimum(z_a, z_b)
        jump = (z_a - z_b).abs() > depth_edge * near
        crease = (n_a * n_b).sum(1, keepdim=True) < cos_limit
        hit = (s_a != s_b) | ((s_a & s_b) & (jump | crease))
        # mark the nearer pixel of each pair (the silhouette belongs to the foreground)
        mark_a = hit & ((z_a <= z_b) | ~s_b)
        edge = (
            edge
            | F.pad(mark_a, _pad(dim, after=True))
            | F.pad(hit & ~mark_a, _pad(dim, after=False))
        )
    return edge.to(depth.dtype)


def _pad(dim: int, *, after: bool) -> tuple[int, ...]:
    """F.pad widths restoring one element along `dim` (2 = H, 3 = W) before or after."""
    pad = (0, 1) if after else (1, 0)
    return pad if dim == 3 else (0, 0, *pad)
