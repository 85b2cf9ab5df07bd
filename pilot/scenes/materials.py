"""Procedural plane materials: line hatching and colour textures (bricks, tiles, panels, plaster).

A material is a row of `N_FIELDS` floats (column indices below); planes stack their rows into a
(P, N_FIELDS) tensor, and the renderer hands the shaders one contiguous (N_FIELDS, N) block of
per-pixel fields so every pixel of a batch is shaded in one vectorised pass. The
patterns live in the plane's own (u, v) coordinates in metres, so they follow perspective, and
are anti-aliased with the exact screen-space derivatives of (u, v) (the pixel footprint of each
line direction). Noise is integer
value noise: it hashes lattice coordinates with int64 arithmetic, so a seed gives the same
pattern on every device and batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# Columns of a material row.
KIND, SEED, HATCH_ANGLE, HATCH_DENSITY, HATCH_WIDTH, CROSS = range(6)
RGB = slice(6, 9)  # base colour, linear [0, 1]
JOINT_RGB = slice(9, 12)  # mortar / grout / seam colour
CELL_U, CELL_V, GRAIN, STAIN = range(12, 16)
N_FIELDS = 16

BRICKS, TILES, PANELS, PLASTER = range(4)
KINDS = ("bricks", "tiles", "panels", "plaster")
_JOINT_WIDTH = (0.012, 0.006, 0.004, 0.0)  # metres, per kind


@dataclass(frozen=True)
class MaterialConfig:
    """Ranges the random materials are drawn from (uniform unless stated)."""

    hatch_density: tuple[float, float] = (6.0, 20.0)  # hatch lines per metre
    hatch_width: tuple[float, float] = (0.15, 0.4)  # line width as a fraction of the spacing
    hatch_axis_prob: float = 0.7  # probability the lines run along the u or v axis exactly
    cross_prob: float = 0.25  # probability of a second, perpendicular set of lines
    grain: tuple[float, float] = (0.05, 0.3)  # fine colour noise amplitude
    stain: tuple[float, float] = (0.0, 0.5)  # large dark blotches amplitude


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A muted random colour (3,): random hue, moderate saturation and value."""
    hue, sat, val = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.9)
    phases = np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    return val * (1 - sat * 0.5 * (1 + np.cos(hue - phases)))


def sample_material(rng: np.random.Generator, cfg: MaterialConfig = MaterialConfig()) -> Tensor:
    """One random material row (N_FIELDS,) drawn from `rng`."""
    m = np.zeros(N_FIELDS)
    kind = int(rng.integers(len(KINDS)))
    m[KIND] = kind
    m[SEED] = rng.integers(2**20)
    if rng.uniform() < cfg.hatch_axis_prob:
        m[HATCH_ANGLE] = math.pi / 2 * rng.integers(2)
    else:
        m[HATCH_ANGLE] = rng.uniform(0, math.pi)
    m[HATCH_DENSITY] = rng.uniform(*cfg.hatch_density)
    m[HATCH_WIDTH] = rng.uniform(*cfg.hatch_width)
    m[CROSS] = float(rng.uniform() < cfg.cross_prob)
    m[RGB] = _colour(rng)
    m[JOINT_RGB] = _colour(rng) * 0.6
    cells = {  # (u, v) cell size ranges in metres per kind
        BRICKS: ((0.2, 0.3), (0.06, 0.1)),
        TILES: ((0.15, 0.6), None),
        PANELS: ((0.6, 1.5), (1.0, 2.5)),
        PLASTER: ((1.0, 1.0), (1.0, 1.0)),
    }[kind]
    m[CELL_U] = rng.uniform(*cells[0])
    m[CELL_V] = m[CELL_U] if cells[1] is None else rng.uniform(*cells[1])
    m[GRAIN] = rng.uniform(*cfg.grain)
    m[STAIN] = rng.uniform(*cfg.stain)
    return torch.from_numpy(m).float()


def hash_uniform(ix: Tensor, iy: Tensor, seed: Tensor) -> Tensor:
    """Integer lattice hash to [0, 1): a multiply-xorshift mix of int32 coordinates.

    int32 products wrap around (two's complement) identically on every device.
    """
    h = ix * 73856093 ^ iy * 19349663 ^ seed * 83492791
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).float() / 16777216.0


def value_noise(x: Tensor, y: Tensor, seed: Tensor) -> Tensor:
    """Value noise in [0, 1): hashed lattice values blended with a smoothstep (Perlin 1985)."""
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = x0.int(), y0.int()
    a, b = hash_uniform(ix, iy, seed), hash_uniform(ix + 1, iy, seed)
    c, d = hash_uniform(ix, iy + 1, seed), hash_uniform(ix + 1, iy + 1, seed)
    return torch.lerp(torch.lerp(a, b, fx), torch.lerp(c, d, fx), fy)


def _lines(x: Tensor, width: Tensor, footprint: Tensor) -> Tensor:
    """Coverage in [0, 1] of lines at integer `x` of relative `width`, box-filtered.

    `x` and `footprint` are in line periods; as the period nears two pixels (the Nyquist limit,
    footprint 0.3 -> 0.5) the coverage fades to the mean ink `width` instead of aliasing.
    """
    d = (x - x.round()).abs()
    ink = ((width / 2 - d) / footprint.clamp_min(1e-4) + 0.5).clamp(0, 1)
    return torch.lerp(ink, width, ((footprint - 0.3) / 0.2).clamp(0, 1))


def _footprint(grad: Tensor, cu: Tensor | float, cv: Tensor | float) -> Tensor:
    """Pixel footprint (N,) of the coordinate t = cu * u + cv * v: |dt/dx| + |dt/dy|."""
    return (grad[0] * cu + grad[2] * cv).abs() + (grad[1] * cu + grad[3] * cv).abs()


def hatch(u: Tensor, v: Tensor, m: Tensor, grad: Tensor) -> Tensor:
    """Line hatching (N,) in [0, 1] (1 = paper, 0 = ink) along the plane's UV axes.

    Args:
        u, v: (N,) surface coordinates in metres.
        m: (N_FIELDS, N) material fields of the pixels (field-major: each field contiguous).
        grad: (4, N) du/dx, du/dy, dv/dx, dv/dy in metres per pixel (`render.uv_gradients`).
    """
    a, density, width = m[HATCH_ANGLE], m[HATCH_DENSITY], m[HATCH_WIDTH]
    cos, sin = a.cos(), a.sin()
    ink = _lines((u * cos + v * sin) * density, width, _footprint(grad, cos, sin) * density)
    fp_cross = _footprint(grad, -sin, cos) * density
    cross = _lines((v * cos - u * sin) * density, width, fp_cross) * m[CROSS]
    return 1 - torch.maximum(ink, cross)


def albedo(u: Tensor, v: Tensor, m: Tensor, grad: Tensor) -> Tensor:
    """Procedural colour (3, N) in [0, 1]: running-bond bricks, tiles, panels or plaster.

    Arguments as for `hatch`. Each cell gets a hashed brightness jitter, joints are
    box-filtered lines of the joint colour, then fine grain and large stains (value noise)
    modulate the result.
    """
    kind, seed = m[KIND].long(), m[SEED].int()
    cu, cv = m[CELL_U], m[CELL_V]
    y = v / cv
    row = y.floor()
    x = u / cu + torch.where(kind == BRICKS, 0.5 * torch.remainder(row, 2), 0.0)
    col = x.floor()
    joint_w = torch.tensor(_JOINT_WIDTH, dtype=u.dtype, device=u.device)[kind]
    fu, fv = _footprint(grad, 1.0, 0.0), _footprint(grad, 0.0, 1.0)  # metres per pixel
    joint_u = _lines(x, joint_w / cu, fu / cu)  # joints between columns, in cell periods
    joint_v = _lines(y, joint_w / cv, fv / cv)
    joint = torch.maximum(joint_u, joint_v) * (joint_w > 0)
    jitter = hash_uniform(col.int(), row.int(), seed) - 0.5  # (N,) per cell
    base = m[RGB] * (1 + 0.35 * jitter)  # (3, N)
    colour = torch.lerp(base, m[JOINT_RGB], joint)
    fade = (1 - torch.maximum(fu, fv) * 30).clamp(0, 1)  # grain period ~3 cm: fade, not alias
    grain = value_noise(u * 40, v * 40, seed) - 0.5
    stain = ((value_noise(u * 0.9, v * 0.9, seed + 1) - 0.5) / 0.3).clamp(0, 1)
    shade = (1 + m[GRAIN] * grain * fade) * (1 - m[STAIN] * stain)
    return (colour * shade).clamp(0, 1)
