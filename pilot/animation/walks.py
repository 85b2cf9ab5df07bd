"""Latent walks: paths through random points of a Gaussian latent space, for GAN latents and
diffusion noise alike.

Keypoints are drawn one generator per seed, so point k is the same whatever the number of points
or the batch it is drawn in. Between keypoints the path is spherical (slerp, Shoemake 1985, the
usual choice for Gaussian latents: it keeps the norm near that of a typical sample) or linear.
A looping walk returns to its first point, and its last frame is not a repeat of the first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

WalkMode = Literal["slerp", "lerp"]
_PARALLEL = 0.9995  # |cos| above which slerp falls back to lerp (the angle is numerically ~0)


def slerp(v0: Tensor, v1: Tensor, t: float | Tensor) -> Tensor:
    """Spherical linear interpolation (Shoemake 1985) between two tensors of the same shape.

    The angle is measured between the whole tensors, flattened (one latent vector, or one noise
    image (C, H, W)); near-parallel inputs fall back to lerp.

    Args:
        v0: start, any shape.
        v1: end, same shape as v0.
        t: a float (returns v0's shape) or a 1-D tensor of T fractions (returns (T, *v0.shape));
            0 gives v0, 1 gives v1.
    """
    if v0.shape != v1.shape:
        raise ValueError(f"slerp needs equal shapes, got {tuple(v0.shape)} and {tuple(v1.shape)}")
    scalar = not isinstance(t, Tensor)
    ts = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    a, b = v0.double().flatten(), v1.double().flatten()
    cos = (a @ b / (a.norm() * b.norm()).clamp_min(1e-12)).clamp(-1.0, 1.0)
    if cos.abs() > _PARALLEL:
        out = (1 - ts)[:, None] * a + ts[:, None] * b
    else:
        theta = torch.arccos(cos)
        w0 = torch.sin((1 - ts) * theta) / torch.sin(theta)
        w1 = torch.sin(ts * theta) / torch.sin(theta)
        out = w0[:, None] * a + w1[:, None] * b
    out = out.reshape(-1, *v0.shape).to(v0.dtype)
    return out[0] if scalar else out


def lerp(v0: Tensor, v1: Tensor, t: float | Tensor) -> Tensor:
    """Linear interpolation with the same shape rules as `slerp`."""
    if v0.shape != v1.shape:
        raise ValueError(f"lerp needs equal shapes, got {tuple(v0.shape)} and {tuple(v1.shape)}")
    scalar = not isinstance(t, Tensor)
    ts = torch.as_tensor(t, dtype=v0.dtype).reshape(-1, *([1] * v0.ndim))
    out = v0 + ts * (v1 - v0)
    return out[0] if scalar else out


def seeded_points(seeds: Sequence[int], shape: Sequence[int]) -> Tensor:
    """Standard-normal points (len(seeds), *shape), point k drawn from its own `seeds[k]`."""
    points = [torch.randn(*shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(points)


def walk(
    points: Tensor,
    n_frames: int,
    *,
    mode: WalkMode = "slerp",
    loop: bool = True,
    ease: bool = False,
) -> Tensor:
    """Frames (n_frames, *point shape) along the path through `points` (K, *shape), in order.

    Frames are spread evenly over the K - 1 segments (K with `loop`, the last one returning to
    the first point). Without `loop` the last frame is the last point; with it, the frame after
    the last would be the first point again, so the video loops seamlessly.

    Args:
        points: keypoints (K, *shape), K >= 2.
        n_frames: number of frames, >= 2.
        mode: "slerp" or "lerp" between neighbouring points.
        loop: close the path back to the first point.
        ease: smoothstep within each segment (pauses at keypoints) instead of constant speed.
    """
    if points.shape[0] < 2 or n_frames < 2:
        raise ValueError(f"need >= 2 points and >= 2 frames, got {points.shape[0]}, {n_frames}")
    if mode not in ("slerp", "lerp"):
        raise ValueError(f"mode={mode!r} is not one of ('slerp', 'lerp')")
    k = points.shape[0]
    segments = k if loop else k - 1
    # position along the path in segment units: [0, segments) looping, [0, segments] otherwise
    pos = torch.arange(n_frames, dtype=torch.float64) * segments
    pos = pos / n_frames if loop else pos / (n_frames - 1)
    idx = pos.floor().long().clamp(max=segments - 1)
    frac = pos - idx
    if ease:
        frac = frac * frac * (3 - 2 * frac)
    interp = slerp if mode == "slerp" else lerp
    pairs = zip(idx.tolist(), frac.tolist(), strict=True)
    frames = [interp(points[i], points[(i + 1) % k], f) for i, f in pairs]
    return torch.stack(frames)


def latent_walk(
    shape: Sequence[int],
    n_frames: int,
    *,
    n_points: int = 4,
    seed: int = 0,
    mode: WalkMode = "slerp",
    loop: bool = True,
    ease: bool = False,
) -> Tensor:
    """A walk through `n_points` Gaussian points with seeds seed, seed + 1, ...; see `walk`.

    Returns:
        (n_frames, *shape) latents, float32 on the CPU.
    """
    points = seeded_points(range(seed, seed + n_points), shape)
    return walk(points, n_frames, mode=mode, loop=loop, ease=ease)


def angle(v0: Tensor, v1: Tensor) -> float:
    """Angle in radians between two tensors, flattened (a check on slerp paths)."""
    a, b = v0.double().flatten(), v1.double().flatten()
    return math.acos(float((a @ b / (a.norm() * b.norm())).clamp(-1, 1)))
