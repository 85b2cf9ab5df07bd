"""Hatched-sketch control images from depth and normals: outlines plus tonal hatching.

The seed's look is walls in 3D covered with a hatched texture: parallel pen strokes lying on
each surface, in perspective, denser where the surface is darker, plus contour lines where the
geometry breaks. Drawn here from a depth and a normal pass (renderer output, or
`normals_from_depth`) and the camera intrinsics:

- tone: Lambert shading `ambient + (1 - ambient) * max(0, n . light)`;
- strokes: stripes of constant `(axis . P) / spacing_world` on the back-projected points P,
  so they lie on the surface and converge in perspective. Strokes run along the surface's
  "upright" direction (camera up projected on it; camera forward on floors and ceilings); the
  first layer below `tone < 0.8`, a crossing one below `0.45`, a diagonal one below `0.2`.
  `spacing` is the stroke distance in pixels on a surface facing the camera at the median
  depth; strokes that get denser than the pen can draw turn into an even tone (no moire);
- outlines: silhouettes, depth discontinuities (a disparity step that breaks the surface's own
  slope by more than `depth_edge` relative, see `_disparity_jumps`; grazing surfaces such as a
  floor are not outlined) and creases (neighbour normals more than `crease_deg` apart).

The result is white lines on black, (B, 3, H, W) in [0, 1], the line-type ControlNets'
convention (lineart, scribble, softedge); `1 - hatch(...)` is the paper-white drawing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pilot.scenes.camera import intrinsics
from pilot.scenes.geometry import backproject

# Towards the upper left and the viewer, camera axes (x right, y down, z forward).
DEFAULT_LIGHT = (-0.5, -0.6, -0.62)
_LAYERS = (0.8, 0.45, 0.2)  # tone below which each stroke layer is drawn


def hatch(
    depth: Tensor,
    normals: Tensor,
    K: Tensor | None = None,
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
        K: (3, 3) or (B, 3, 3) intrinsics in pixels; default a 50 degree centred pinhole.
        light: Direction towards the light, camera axes.
        ambient: Tone of unlit surfaces.
        spacing: Stroke distance in pixels at the median depth.
        width: Stroke width, pixels.
        depth_edge: Relative disparity jump between neighbours drawn as an outline.
        crease_deg: Angle between neighbouring normals drawn as an outline.

    Returns:
        (B, 3, H, W) in [0, 1], 1 = ink.
    """
    B, _, H, W = depth.shape
    if depth.shape[1] != 1 or normals.shape != (B, 3, H, W):
        raise ValueError(
            f"depth {tuple(depth.shape)} and normals {tuple(normals.shape)}: expected "
            "(B, 1, H, W) and (B, 3, H, W)"
        )
    if min(H, W) < 2:
        raise ValueError(f"depth {W}x{H} (WxH): hatching needs 2 pixels a side or more")
    surface = (normals != 0).any(1, keepdim=True) & torch.isfinite(depth) & (depth > 0)
    K = (intrinsics(50.0, W, H) if K is None else K).to(depth).expand(B, 3, 3)
    l_dir = F.normalize(torch.tensor(light, dtype=normals.dtype, device=normals.device), dim=0)
    lambert = (normals * l_dir.view(1, 3, 1, 1)).sum(1, keepdim=True).clamp_min(0)
    tone = ambient + (1 - ambient) * lambert
    strokes = _strokes(depth, normals, surface, K, tone, spacing, width)
    ink = torch.maximum(
        strokes * surface, outlines(depth, normals, surface, depth_edge, crease_deg)
    )
    return ink.expand(-1, 3, -1, -1).contiguous()


def _stroke_axes(normals: Tensor) -> tuple[Tensor, Tensor]:
    """Unit in-surface directions (B, 3, H, W): along the strokes `d`, across them `t`."""
    up = torch.tensor([0.0, -1.0, 0.0], device=normals.device, dtype=normals.dtype).view(1, 3, 1, 1)
    forward = torch.tensor([0.0, 0.0, 1.0], device=normals.device, dtype=normals.dtype)
    forward = forward.view(1, 3, 1, 1)

    def on_surface(v: Tensor) -> Tensor:
        return v - (v * normals).sum(1, keepdim=True) * normals

    d_up, d_forward = on_surface(up), on_surface(forward)
    upright = d_up.norm(dim=1, keepdim=True) > 0.3  # not a floor or ceiling
    d = F.normalize(torch.where(upright, d_up, d_forward), dim=1)
    return d, torch.linalg.cross(normals, d, dim=1)


def _strokes(
    depth: Tensor,
    normals: Tensor,
    surface: Tensor,
    K: Tensor,
    tone: Tensor,
    spacing: float,
    width: float,
) -> Tensor:
    """Anti-aliased perspective hatch layers (B, 1, H, W) in [0, 1]."""
    z = torch.where(surface, depth, torch.ones_like(depth))
    points = backproject(z, K)  # (B, 3, H, W)
    median = torch.stack(
        [
            zi[si].median() if si.any() else zi.new_ones(())
            for zi, si in zip(z, surface, strict=True)
        ]
    )
    world = spacing * median.view(-1, 1, 1, 1) / K[:, 0, 0].view(-1, 1, 1, 1)  # stroke distance
    d, t = _stroke_axes(normals)
    ink = torch.zeros_like(tone)
    for axis, threshold in zip((t, d, (t + d) / math.sqrt(2)), _LAYERS, strict=True):
        phase = (axis * points).sum(1, keepdim=True) / world  # stroke index, continuous
        rate = _phase_rate(phase)  # strokes per pixel
        distance = (phase - phase.round()).abs() / rate  # pixels to the nearest stroke centre
        line = (width / 2 + 0.5 - distance).clamp(0, 1)
        even = (width * rate).clamp(max=1)  # the average ink where strokes are too dense
        line = torch.where(rate > 1 / (2 * width + 1), even, line)
        ink = torch.maximum(ink, line * (tone < threshold))
    return ink


def _phase_rate(phase: Tensor) -> Tensor:
    """|grad phase| per pixel, each axis from the smaller one-sided difference (so a jump
    between surfaces does not count), at least 1e-6."""
    squares = torch.zeros_like(phase)
    for dim in (2, 3):
        diff = phase.diff(dim=dim).abs()
        before = F.pad(diff, _pad(dim, after=False), value=float("inf"))
        after = F.pad(diff, _pad(dim, after=True), value=float("inf"))
        rate = torch.minimum(before, after)
        squares = squares + torch.where(torch.isinf(rate), 0.0, rate) ** 2
    return squares.sqrt().clamp_min(1e-6)


def outlines(
    depth: Tensor, normals: Tensor, surface: Tensor, depth_edge: float, crease_deg: float
) -> Tensor:
    """Contours (B, 1, H, W) in {0, 1}: silhouettes, depth jumps and normal creases."""
    z = torch.where(surface, depth, torch.full_like(depth, float("inf")))
    edge = torch.zeros_like(depth, dtype=torch.bool)
    cos_limit = math.cos(math.radians(crease_deg))
    for dim in (2, 3):
        (z_a, z_b), (s_a, s_b), (n_a, n_b) = (_neighbours(v, dim) for v in (z, surface, normals))
        jump = _disparity_jumps(1 / z, dim, depth_edge)
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


def _disparity_jumps(disparity: Tensor, dim: int, threshold: float) -> Tensor:
    """Steps between neighbours along `dim` that break the surface's own slope.

    Disparity (1 / z) is affine in pixel coordinates on a plane, so its steps are equal along a
    surface, however grazing. A step is a jump when it differs from the steps on both sides by
    more than `threshold` times the nearer disparity (a crease changes the slope on one side
    only). Returns (B, 1, ...) bool with one fewer entry along `dim`.
    """
    step = disparity.diff(dim=dim)
    nan = float("nan")
    before = F.pad(step.narrow(dim, 0, step.shape[dim] - 1), _pad(dim, after=False), value=nan)
    after = F.pad(step.narrow(dim, 1, step.shape[dim] - 1), _pad(dim, after=True), value=nan)
    a, b = _neighbours(disparity, dim)
    limit = threshold * torch.maximum(a, b)

    def breaks(other: Tensor) -> Tensor:
        return ((step - other).abs() > limit) | other.isnan()

    return breaks(before) & breaks(after) & ~(before.isnan() & after.isnan())


def _neighbours(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Each pixel and its next neighbour along `dim` (one fewer along it)."""
    n = x.shape[dim] - 1
    return x.narrow(dim, 0, n), x.narrow(dim, 1, n)


def _pad(dim: int, *, after: bool) -> tuple[int, ...]:
    """F.pad widths restoring one element along `dim` (2 = H, 3 = W) before or after."""
    pad = (0, 1) if after else (1, 0)
    return pad if dim == 3 else (0, 0, *pad)
