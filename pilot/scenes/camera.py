"""Pinhole cameras in the OpenCV convention, look-at poses and keyframed camera paths.

Conventions used everywhere in `pilot.scenes`:

* camera axes: x right, y down, z forward (OpenCV). A pose is a camera-to-world matrix `c2w`
  (4x4, rotation columns = camera axes in world coordinates, last column = camera centre).
* world: right-handed, z up, metres (the same as Blender's world, so Blender scenes export
  without a world rotation).
* pixels: the centre of the top-left pixel is (0, 0), x grows right, y grows down, so a centred
  principal point is ((W - 1) / 2, (H - 1) / 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def intrinsics(fov_x_deg: float | Tensor, width: int, height: int) -> Tensor:
    """Pinhole intrinsics K (3, 3) with square pixels and a centred principal point.

    Args:
        fov_x_deg: horizontal field of view in degrees, in (0, 180); a 0-d tensor keeps its dtype.
        width: image width in pixels.
        height: image height in pixels.
    """
    fov = torch.as_tensor(fov_x_deg, dtype=torch.float32)
    if not (0 < float(fov) < 180):
        raise ValueError(f"fov_x_deg must be in (0, 180), got {float(fov)}")
    f = (width / 2) / torch.tan(torch.deg2rad(fov) / 2)
    K = torch.zeros(3, 3, dtype=fov.dtype)
    K[0, 0], K[1, 1], K[2, 2] = f, f, 1.0
    K[0, 2], K[1, 2] = (width - 1) / 2, (height - 1) / 2
    return K


def look_at(eye: Tensor, target: Tensor, up: tuple[float, float, float] = (0, 0, 1)) -> Tensor:
    """Camera-to-world poses (..., 4, 4) looking from `eye` to `target` (..., 3), OpenCV axes.

    The camera's x axis is horizontal (perpendicular to `up`) and its y axis points down.
    Raises ValueError when the view direction is parallel to `up` (the roll is undefined).
    """
    z = target - eye
    if (z.norm(dim=-1) < 1e-12).any():
        raise ValueError("look_at: a target coincides with its eye (no view direction)")
    z = z / z.norm(dim=-1, keepdim=True)
    up_t = torch.tensor(up, dtype=eye.dtype, device=eye.device).expand_as(z)
    x = torch.linalg.cross(z, up_t)
    norm = x.norm(dim=-1, keepdim=True)
    if (norm < 1e-6).any():
        raise ValueError("look_at: view direction is parallel to the up vector")
    x = x / norm
    y = torch.linalg.cross(z, x)  # points down when z is forward and x right
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = x, y, z, eye
    c2w[..., 3, 3] = 1.0
    return c2w


def catmull_rom(keys: Tensor, t: Tensor) -> Tensor:
    """Uniform Catmull-Rom spline through `keys` (K, D) evaluated at `t` (N,) in [0, K - 1].

    The curve passes through every key (key k at t = k) and has a continuous tangent; the end
    segments use mirrored phantom keys so the path starts and ends on the first and last key.
    """
    if keys.shape[0] < 2:
        raise ValueError(f"a spline needs at least 2 keys, got {keys.shape[0]}")
    first, last = 2 * keys[0] - keys[1], 2 * keys[-1] - keys[-2]
    p = torch.cat([first[None], keys, last[None]])  # (K + 2, D)
    t = t.clamp(0, keys.shape[0] - 1)
    i = t.floor().long().clamp(max=keys.shape[0] - 2)  # segment index
    s = (t - i)[:, None]  # (N, 1) position inside the segment
    p0, p1, p2, p3 = p[i], p[i + 1], p[i + 2], p[i + 3]
    return 0.5 * (
        2 * p1
        + (p2 - p0) * s
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s**2
        + (3 * p1 - p0 - 3 * p2 + p3) * s**3
    )


@dataclass(frozen=True)
class CameraPath:
    """A keyframed camera move: position and look-at target splines plus a field of view.

    Attributes:
        positions: (K, 3) camera centres at the keys, world metres.
        targets: (K, 3) points looked at, world metres.
        fov_x_deg: horizontal field of view in degrees.
    """

    positions: Tensor
    targets: Tensor
    fov_x_deg: float = 70.0

    def poses(self, n_frames: int) -> Tensor:
        """Camera-to-world poses (n_frames, 4, 4), keys spread evenly over the frames."""
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        k = self.positions.shape[0]
        t = torch.linspace(0, k - 1, n_frames, dtype=self.positions.dtype)
        return look_at(catmull_rom(self.positions, t), catmull_rom(self.targets, t))

    def intrinsics(self, width: int, height: int) -> Tensor:
        """K (3, 3) of the path's camera at a resolution."""
        return intrinsics(self.fov_x_deg, width, height)
