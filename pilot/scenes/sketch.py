"""A hatched pass for any shot: pen lines fixed on the surfaces in the world, from depth + normals.

The procedural renderer draws its hatched pass from each plane's own surface coordinates
(`pilot.scenes.materials.hatch`); a Blender export has only depth, normals and cameras. This
module draws the same kind of picture from those: parallel lines at a fixed density in lines
per metre, lying on the surfaces and fixed in world space, so they stay put on the walls as the
camera moves (the picture a walls conditioner was trained on, `pilot conditioner apply`).

- Walls (world normal within 45 degrees of horizontal) get vertical lines: the surface point's
  coordinate along the wall's horizontal direction `z x n` is a multiple of `1 / density`.
- Floors and ceilings get lines of constant world x.
- `cross` adds the crossing layer (horizontal lines on walls, constant world y on floors).

Lines are box-filtered over each pixel's footprint, computed analytically on the local tangent
plane (no finite differences across depth edges), and fade to their mean ink where they would
be denser than two pixels, as the renderer's do. Background (zero normals) is paper. This is
unlike `pilot.control.hatching.hatch`, the ControlNet sketch, whose strokes are laid out in
camera space and shaded by a light.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pilot.scenes.geometry import backproject, pixel_grid
from pilot.scenes.materials import _lines

WALL_NZ = 0.7071  # |world normal . z| below this is a wall


def hatched_pass(
    depth: Tensor,
    normals: Tensor,
    K: Tensor,
    c2w: Tensor,
    *,
    density: float = 10.0,
    width: float = 0.3,
    cross: bool = False,
) -> Tensor:
    """Hatched line drawing (B, 1, H, W) in [0, 1] (1 = paper, 0 = ink) of shot frames.

    Args:
        depth: (B, 1, H, W) z-depth in metres.
        normals: (B, 3, H, W) camera-space unit normals (OpenCV axes); zero where no surface.
        K: (B, 3, 3) intrinsics in pixels.
        c2w: (B, 4, 4) camera-to-world poses (world z up).
        density: Lines per metre.
        width: Line width as a fraction of the spacing, in (0, 1).
        cross: Draw the crossing layer too.
    """
    B, _, H, W = depth.shape
    if normals.shape != (B, 3, H, W) or K.shape != (B, 3, 3) or c2w.shape != (B, 4, 4):
        raise ValueError(
            f"depth {tuple(depth.shape)}, normals {tuple(normals.shape)}, K {tuple(K.shape)}, "
            f"c2w {tuple(c2w.shape)}: expected (B, 1, H, W), (B, 3, H, W), (B, 3, 3), (B, 4, 4)"
        )
    if not (math.isfinite(density) and density > 0 and 0 < width < 1):
        raise ValueError(f"density={density} must be > 0 and width={width} in (0, 1)")
    R = c2w[:, :3, :3]
    surface = (normals != 0).any(1, keepdim=True)
    p_world = _to_world(backproject(depth, K), R, c2w[:, :3, 3])
    n_world = _to_world(normals, R)
    wall = n_world[:, 2:3].abs() < WALL_NZ
    z = torch.zeros_like(n_world)
    z[:, 2] = 1
    along_wall = F.normalize(torch.linalg.cross(z, n_world, dim=1), dim=1)
    x, y = torch.zeros_like(n_world), torch.zeros_like(n_world)
    x[:, 0], y[:, 1] = 1, 1
    axes = [torch.where(wall, along_wall, x)]
    if cross:
        axes.append(torch.where(wall, z, y))
    dp_dx, dp_dy = _point_gradients(depth, normals, K)
    ink = torch.zeros_like(depth)
    for axis in axes:
        coord = (axis * p_world).sum(1, keepdim=True) * density  # line periods
        a_cam = _to_camera(axis, R)
        footprint = (a_cam * dp_dx).sum(1, keepdim=True).abs()
        footprint = (footprint + (a_cam * dp_dy).sum(1, keepdim=True).abs()) * density
        ink = torch.maximum(ink, _lines(coord, torch.tensor(width).to(depth), footprint))
    return torch.where(surface, 1 - ink, torch.ones_like(ink))


def _to_world(v: Tensor, R: Tensor, t: Tensor | None = None) -> Tensor:
    """Camera-space vectors (B, 3, H, W) rotated (and moved by `t`) into the world."""
    out = torch.einsum("bij,bjhw->bihw", R, v)
    return out if t is None else out + t[:, :, None, None]


def _to_camera(v: Tensor, R: Tensor) -> Tensor:
    """World vectors (B, 3, H, W) rotated into camera space."""
    return torch.einsum("bji,bjhw->bihw", R, v)


def _point_gradients(depth: Tensor, normals: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """How each pixel's surface point moves (camera space, metres per pixel) along x and y.

    On the tangent plane through the point P = z r (r = K^-1 [x, y, 1]) with normal n, the
    point seen along r + dr is z (n . r) / (n . (r + dr)) (r + dr), so dP/dx = z (r_x - r (n .
    r_x) / (n . r)) with r_x = K^-1 [1, 0, 0]; likewise for y.
    """
    B, _, H, W = depth.shape
    K_inv = torch.linalg.inv(K)
    pix = torch.cat([pixel_grid(H, W, depth).expand(B, -1, -1, -1), torch.ones_like(depth)], 1)
    r = (K_inv @ pix.flatten(2)).view(B, 3, H, W)
    n_r = (normals * r).sum(1, keepdim=True)
    n_r = torch.where(n_r.abs() < 1e-6, torch.full_like(n_r, -1e-6), n_r)  # grazing: huge
    grads = []
    for col in (0, 1):
        r_d = K_inv[:, :, col, None, None]  # (B, 3, 1, 1)
        n_rd = (normals * r_d).sum(1, keepdim=True)
        grads.append(depth * (r_d - r * n_rd / n_r))
    return grads[0], grads[1]


__all__ = ["hatched_pass"]
