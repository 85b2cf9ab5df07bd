"""Depth and normal control images in the conventions the public ControlNets were trained on.

Depth (ControlNet 1.0 `depth`, 1.1 `depth` f1p): MiDaS-style relative inverse depth, min-max
normalised per image, near = bright (1), far = dark (0). `depth_to_control` makes that from
metric z-depth, per frame (each image its own range, as MiDaS did) or per shot (one range over
the whole batch, so an animated shot does not flicker).

Normals, with camera axes as in `pilot.scenes` (OpenCV: x right, y down, z forward) and unit
normals facing the camera:

- ControlNet 1.1 `normalbae` (Bae et al. 2021 normals, ScanNet's protocol): RGB = (left, up,
  towards the viewer), i.e. `(1 - n) / 2`. A surface facing the camera is lavender
  (0.5, 0.5, 1); a floor seen from eye level is green-ish (G > 0.5); a wall facing left red.
- ControlNet 1.0 `normal`: its annotator draws `(sobel_x, sobel_y, 2 pi)` of MiDaS inverse
  depth, normalised, which has the same (left, up, towards) colours, but the 1.0 demo (and
  A1111's extension) feed the model that map with its channels reversed: (towards, up, left).
  `convention="midas"` gives that tensor.

Background pixels (zero normals, e.g. the renderer's sky) are given (0.5, 0.5, 0.5) for either.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pilot.scenes.geometry import backproject

NormalConvention = Literal["bae", "midas"]


def depth_to_control(
    depth: Tensor,
    *,
    per: Literal["frame", "shot"] = "frame",
    mode: Literal["inverse", "linear"] = "inverse",
    valid: Tensor | None = None,
    far: float | None = None,
    disparity: bool = False,
) -> Tensor:
    """Near-bright depth control image from metric z-depth (MiDaS convention, see module doc).

    Args:
        depth: (B, 1, H, W) z-depth in metres (> 0), or inverse depth if `disparity`.
        per: "frame" normalises each image on its own; "shot" over the whole batch.
        mode: "inverse" normalises 1 / depth (MiDaS disparity, what the models saw); "linear"
            normalises depth itself, reversed (for flat-looking ranges).
        valid: (B, 1, H, W) bool, False where there is no surface (drawn black, excluded from
            the range). Default: every pixel with finite depth below `far`.
        far: Depth at or beyond which a pixel is background (e.g. the renderer's sky).
        disparity: `depth` already holds inverse depth (near = large, e.g. a MiDaS output or a
            disparity pass); it is normalised as it is, whatever `mode` says.

    Returns:
        (B, 3, H, W) in [0, 1], near = 1.
    """
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth of shape {tuple(depth.shape)}: expected (B, 1, H, W)")
    if valid is None:
        valid = torch.isfinite(depth) & (depth > 0)
        if far is not None:
            valid &= (1 / depth if disparity else depth) < far
    if disparity:
        value = depth
    else:
        value = 1 / depth.clamp_min(1e-6) if mode == "inverse" else -depth
    dims = (0, 1, 2, 3) if per == "shot" else (1, 2, 3)
    lo = torch.where(valid, value, torch.inf).amin(dim=dims, keepdim=True)
    hi = torch.where(valid, value, -torch.inf).amax(dim=dims, keepdim=True)
    scaled = (value - lo) / (hi - lo).clamp_min(1e-12)
    out = torch.where(valid, scaled.clamp(0, 1), 0.0).nan_to_num(0.0)
    return out.expand(-1, 3, -1, -1).contiguous()


def normals_from_depth(depth: Tensor, K: Tensor) -> Tensor:
    """Camera-space unit normals facing the camera from z-depth and pinhole intrinsics.

    Pixels are back-projected to points `z K^-1 (u, v, 1)`; differences to the neighbours along
    u and v span the local tangent plane, and their cross product is the normal. Each axis uses
    the one-sided difference with the smaller step, so a pixel next to a depth discontinuity
    takes its own surface's neighbour; on a plane both differences lie in it: the normal is exact.

    Args:
        depth: (B, 1, H, W) z-depth in metres.
        K: (3, 3) or (B, 3, 3) intrinsics in pixels (OpenCV axes).

    Returns:
        (B, 3, H, W) unit normals, OpenCV camera axes, pointing towards the camera.
    """
    points = backproject(depth, K.to(depth))  # (B, 3, H, W) camera-space points
    du, dv = _tangent(points, 3), _tangent(points, 2)
    n = torch.linalg.cross(du, dv, dim=1)
    n = torch.where((n * points).sum(1, keepdim=True) > 0, -n, n)  # face the camera
    return F.normalize(n, dim=1)


def _tangent(points: Tensor, dim: int) -> Tensor:
    """Per pixel, the shorter of the forward and backward differences of `points` along `dim`."""
    diff = points.diff(dim=dim)
    pad = (0, 0, 1, 0) if dim == 2 else (1, 0)
    before = F.pad(diff, pad, value=float("inf"))
    after = F.pad(diff, pad[::-1] if dim == 3 else (0, 0, 0, 1), value=float("inf"))
    return torch.where(
        before.norm(dim=1, keepdim=True) <= after.norm(dim=1, keepdim=True), before, after
    )


def normals_to_control(
    normals: Tensor,
    convention: NormalConvention = "bae",
    *,
    axes: Literal["opencv", "opengl"] = "opencv",
) -> Tensor:
    """Normal control image from camera-space unit normals facing the camera.

    Args:
        normals: (B, 3, H, W); zero vectors mark background.
        convention: "bae" for ControlNet 1.1 normalbae, "midas" for the 1.0 normal model.
        axes: The normals' camera axes: "opencv" (x right, y down, z forward: pilot's renderer)
            or "opengl" (x right, y up, z backward: Blender's camera-space normal pass).

    Returns:
        (B, 3, H, W) in [0, 1] (see the module docstring for the colours).
    """
    if normals.ndim != 4 or normals.shape[1] != 3:
        raise ValueError(f"normals of shape {tuple(normals.shape)}: expected (B, 3, H, W)")
    if convention not in ("bae", "midas"):
        raise ValueError(f"normal convention {convention!r}: use 'bae' (1.1) or 'midas' (1.0)")
    if axes == "opengl":
        normals = normals * torch.tensor([1.0, -1.0, -1.0], device=normals.device).view(1, 3, 1, 1)
    elif axes != "opencv":
        raise ValueError(f"normal axes {axes!r}: use 'opencv' or 'opengl'")
    image = ((1 - normals) / 2).clamp(0, 1)  # (left, up, towards)
    background = (normals == 0).all(dim=1, keepdim=True)
    image = torch.where(background, 0.5, image)
    return image.flip(1) if convention == "midas" else image
