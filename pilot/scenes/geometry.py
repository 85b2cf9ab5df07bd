"""Multi-view geometry of shots: reprojection flow from depth, occlusion tests, flow warping.

Conventions (see `pilot.scenes.camera`): OpenCV camera axes, camera-to-world poses, z-depth in
metres, pixel centres at integer coordinates. Background (the sky, or whatever lies beyond the
camera's clip end) is stored at a depth `far` (a shot's `far`, the z-depth written where nothing
was hit); functions given `far` treat pixels at or beyond it as points at infinity, which only a
camera rotation moves (no parallax), and count a background pixel that lands on background as
seen. A flow field `flow_ij` (B, 2, H, W) holds, for
every pixel p of frame i, the displacement (dx, dy) in pixels to where the same surface point
appears in frame j: p_j = p + flow_ij(p). `warp(image_j, flow_ij)` therefore pulls frame j's
pixels into frame i's layout (backward warping), the operation the animation code uses to carry
the previous frame forward.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # annotations only
    from pilot.scenes.shot import Frame


def pixel_grid(height: int, width: int, like: Tensor) -> Tensor:
    """Pixel centre coordinates (1, 2, H, W): channel 0 = x (column), 1 = y (row)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=like.dtype, device=like.device),
        torch.arange(width, dtype=like.dtype, device=like.device),
        indexing="ij",
    )
    return torch.stack([xs, ys])[None]


def _check(depth: Tensor, K: Tensor, c2w: Tensor, name: str) -> None:
    B = depth.shape[0]
    if depth.dim() != 4 or depth.shape[1] != 1:
        raise ValueError(f"{name}: depth must be (B, 1, H, W), got {tuple(depth.shape)}")
    if K.shape != (B, 3, 3) or c2w.shape != (B, 4, 4):
        raise ValueError(
            f"{name}: K {tuple(K.shape)} / c2w {tuple(c2w.shape)} must be ({B}, 3, 3) / ({B}, 4, 4)"
        )


def rigid_inverse(c2w: Tensor) -> Tensor:
    """World-to-camera matrices (B, 4, 4) of rigid poses: [R^T, -R^T t]."""
    R, t = c2w[:, :3, :3], c2w[:, :3, 3:]
    w2c = torch.zeros_like(c2w)
    w2c[:, :3, :3] = R.transpose(1, 2)
    w2c[:, :3, 3:] = -R.transpose(1, 2) @ t
    w2c[:, 3, 3] = 1.0
    return w2c


def backproject(depth: Tensor, K: Tensor) -> Tensor:
    """Camera-space points (B, 3, H, W) of every pixel: z-depth times K^-1 [x, y, 1]."""
    B, _, H, W = depth.shape
    pix = pixel_grid(H, W, depth).expand(B, -1, -1, -1)
    ones = torch.ones_like(depth)
    rays = torch.linalg.inv(K) @ torch.cat([pix, ones], 1).flatten(2)  # (B, 3, HW), z = 1
    return rays.view(B, 3, H, W) * depth


def reproject(
    depth_i: Tensor,
    K_i: Tensor,
    c2w_i: Tensor,
    K_j: Tensor,
    c2w_j: Tensor,
    far: float = math.inf,
) -> tuple[Tensor, Tensor]:
    """Where frame i's pixels land in camera j: coords (B, 2, H, W) and z-depth in j (B, 1, H, W).

    Points behind camera j (z <= 0) get coordinates far outside the image. Background pixels
    (depth >= `far`, module docstring) are directions at infinity: only the rotation between
    the cameras moves them, and their z-depth in j is inf (in front of camera j).
    """
    _check(depth_i, K_i, c2w_i, "frame i")
    _check(depth_i, K_j, c2w_j, "frame j")
    B, _, H, W = depth_i.shape
    p_i = backproject(depth_i, K_i).flatten(2)  # (B, 3, HW)
    T = rigid_inverse(c2w_j) @ c2w_i  # camera i -> camera j
    rotated = T[:, :3, :3] @ p_i
    background = (depth_i >= far).flatten(2)  # (B, 1, HW)
    p_j = torch.where(background, rotated, rotated + T[:, :3, 3:])  # (B, 3, HW)
    z = p_j[:, 2:]
    uv = (K_j @ p_j)[:, :2] / torch.where(z > 1e-9, z, 1e-9)
    uv = torch.where(z > 1e-9, uv, torch.full_like(uv, -1e9))
    z = torch.where(background & (z > 1e-9), math.inf, z)
    return uv.view(B, 2, H, W), z.view(B, 1, H, W)


def reprojection_flow(
    depth_i: Tensor,
    K_i: Tensor,
    c2w_i: Tensor,
    K_j: Tensor,
    c2w_j: Tensor,
    far: float = math.inf,
) -> tuple[Tensor, Tensor]:
    """Optical flow i -> j (B, 2, H, W) in pixels induced by camera motion over static geometry.

    Returns the flow and the z-depth of frame i's points seen from camera j (B, 1, H, W), inf
    for background pixels (depth >= `far`, at infinity: see `reproject`).
    """
    uv, z = reproject(depth_i, K_i, c2w_i, K_j, c2w_j, far)
    return uv - pixel_grid(*depth_i.shape[2:], depth_i), z


def warp(
    image: Tensor, flow: Tensor, mode: str = "bilinear", padding_mode: str = "border"
) -> Tensor:
    """Backward warp: out[..., y, x] = image[..., y + flow_y, x + flow_x].

    Bilinear sampling with "border" or "zeros" padding gathers the four neighbours with
    fractional weights computed from pixel coordinates (`_bilinear`), so zero flow is the
    identity and integer shifts are exact; other modes use grid_sample (align_corners=True).
    Coordinates are float32 (float64 for float64 images) whatever the image dtype.

    Args:
        image: (B, C, H, W) frame j, any floating dtype.
        flow: (B, 2, H, W) flow i -> j in pixels.
        mode: "bilinear", "nearest" or "bicubic".
        padding_mode: for samples outside frame j: "border", "zeros" or "reflection".

    Returns:
        (B, C, H, W) frame j resampled onto frame i's pixels, in the image's dtype.
    """
    if flow.dim() != 4 or flow.shape[1] != 2 or flow.shape[2:] != image.shape[2:]:
        raise ValueError(
            f"warp: flow {tuple(flow.shape)} must be (B, 2, H, W) matching image "
            f"{tuple(image.shape)}"
        )
    if flow.shape[0] != image.shape[0]:
        raise ValueError(
            f"warp: flow batch {flow.shape[0]} differs from image batch {image.shape[0]} "
            f"(flow {tuple(flow.shape)}, image {tuple(image.shape)})"
        )
    H, W = image.shape[2:]
    work = torch.promote_types(image.dtype, torch.float32)  # coordinates and sums
    flow = flow.to(work)
    coords = pixel_grid(H, W, flow) + flow  # (B, 2, H, W)
    if mode == "bilinear" and padding_mode in ("border", "zeros"):
        return _bilinear(image, coords, padding_mode == "zeros").to(image.dtype)
    scale = torch.tensor([max(W - 1, 1), max(H - 1, 1)], dtype=work, device=coords.device)
    grid = (2 * coords / scale[None, :, None, None] - 1).permute(0, 2, 3, 1)  # (B, H, W, 2)
    out = F.grid_sample(
        image.to(work), grid, mode=mode, padding_mode=padding_mode, align_corners=True
    )
    return out.to(image.dtype)


def _bilinear(image: Tensor, coords: Tensor, zeros: bool) -> Tensor:
    """Bilinear samples (B, C, H, W) of `image` at pixel `coords` (B, 2, H, W), gather-based.

    `zeros`: neighbours outside the image weigh nothing (grid_sample's "zeros"); otherwise
    coordinates are clamped into the image ("border"). Sums run in the coordinates' dtype.
    """
    B, C, H, W = image.shape
    coords = torch.nan_to_num(coords, nan=-2.0)  # NaN flow samples outside, not garbage
    x, y = coords[:, 0], coords[:, 1]  # (B, H, W)
    if not zeros:
        x, y = x.clamp(0, W - 1), y.clamp(0, H - 1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0  # exactly 0 at integer coordinates
    flat = image.reshape(B, C, H * W).to(coords.dtype)
    out = torch.zeros_like(flat)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            weight = wx * wy
            if zeros:
                weight = weight * ((xi >= 0) & (xi <= W - 1) & (yi >= 0) & (yi <= H - 1))
            index = (yi.clamp(0, H - 1) * W + xi.clamp(0, W - 1)).long()  # (B, H, W)
            index = index.view(B, 1, H * W).expand(B, C, H * W)
            out = out + flat.gather(2, index) * weight.view(B, 1, H * W)
    return out.view(B, C, H, W)


def _slope(z: Tensor) -> Tensor:
    """Per-pixel |dz/dx| + |dz/dy| (B, 1, H, W), each the smaller one-sided difference.

    Taking the smaller side keeps a pixel next to a depth edge at its own surface's slope.
    """
    p = F.pad(z, (1, 1, 1, 1), mode="replicate")
    c = p[..., 1:-1, 1:-1]
    gx = torch.minimum((p[..., 1:-1, 2:] - c).abs(), (c - p[..., 1:-1, :-2]).abs())
    gy = torch.minimum((p[..., 2:, 1:-1] - c).abs(), (c - p[..., :-2, 1:-1]).abs())
    return gx + gy


def visibility(
    flow_ij: Tensor,
    z_ij: Tensor,
    depth_j: Tensor,
    rel_tol: float = 0.01,
    far: float = math.inf,
) -> Tensor:
    """Depth test: True (B, 1, H, W) where frame i's pixel is seen in frame j.

    A background pixel of frame i (z_ij inf, from `reprojection_flow(..., far)`) is visible when
    it lands inside frame j on background: the four pixels of its bilinear stencil all at depth
    >= `far` (the sky stays sky; sky landing on a surface was hidden by it: disoccluded). Any
    other pixel is visible when it lands inside frame j, in front of camera j, and both
    (1) its depth in camera j agrees with frame j's depth there within `rel_tol` (bilinear in
    inverse depth, exact on planes), and
    (2) each of the four pixels of that bilinear stencil is within `rel_tol` plus two pixels'
    worth of the point's own depth slope. (1) finds occlusion; (2) rejects stencils straddling
    two surfaces, whose blended depth can pass (1) by chance while the flow sampled there blends
    two motions.
    """
    _check_visibility(flow_ij, z_ij, depth_j)
    background = z_ij.isinf() & (z_ij > 0)
    z_ij = torch.where(background, 0.0, z_ij)  # finite: no NaN in the tests below
    H, W = depth_j.shape[2:]
    grid = pixel_grid(H, W, flow_ij)
    uv = grid + flow_ij
    inside = (uv[:, :1] >= 0) & (uv[:, :1] <= W - 1) & (uv[:, 1:] >= 0) & (uv[:, 1:] <= H - 1)
    # Inverse depth is what is linear in the image on a plane seen in perspective: interpolating
    # depth itself is off by a few percent under large motion and marks visible pixels occluded.
    inverse = warp(1 / depth_j.clamp_min(1e-9), flow_ij)
    agree = (z_ij * inverse - 1).abs() <= rel_tol * z_ij * inverse
    # (B, 1, H, W): max and min over pixels [y, y+1]x[x, x+1]; a 2x2 max-pool: 26x the time
    p = F.pad(depth_j, (0, 1, 0, 1), mode="replicate")
    corners = (p[..., :-1, :-1], p[..., :-1, 1:], p[..., 1:, :-1], p[..., 1:, 1:])
    d_max = torch.maximum(torch.maximum(corners[0], corners[1]), torch.maximum(*corners[2:]))
    d_min = torch.minimum(torch.minimum(corners[0], corners[1]), torch.minimum(*corners[2:]))
    corner = uv.clamp(min=0).floor() - grid  # flow to the stencil's top-left pixel
    d_max, d_min = warp(d_max, corner, mode="nearest"), warp(d_min, corner, mode="nearest")
    tol = rel_tol * z_ij + 2 * _slope(z_ij)
    stencil = (d_max - z_ij <= tol) & (z_ij - d_min <= tol)
    return inside & torch.where(background, d_min >= far, (z_ij > 0) & agree & stencil)


def _check_visibility(flow_ij: Tensor, z_ij: Tensor, depth_j: Tensor) -> None:
    B, _, H, W = depth_j.shape if depth_j.dim() == 4 else (0, 0, 0, 0)
    if (
        depth_j.dim() != 4
        or depth_j.shape[1] != 1
        or tuple(flow_ij.shape) != (B, 2, H, W)
        or tuple(z_ij.shape) != (B, 1, H, W)
    ):
        raise ValueError(
            f"visibility: flow_ij {tuple(flow_ij.shape)}, z_ij {tuple(z_ij.shape)} and depth_j "
            f"{tuple(depth_j.shape)} must be (B, 2, H, W), (B, 1, H, W) and (B, 1, H, W)"
        )


def forward_backward_error(flow_ij: Tensor, flow_ji: Tensor) -> Tensor:
    """Round-trip error (B, 1, H, W) in pixels: |flow_ij(p) + flow_ji(p + flow_ij(p))|."""
    return (flow_ij + warp(flow_ji, flow_ij)).norm(dim=1, keepdim=True)


def flow_pair(
    depth_i: Tensor,
    depth_j: Tensor,
    K_i: Tensor,
    c2w_i: Tensor,
    K_j: Tensor,
    c2w_j: Tensor,
    rel_tol: float = 0.01,
    far: float = math.inf,
) -> dict[str, Tensor]:
    """Forward and backward reprojection flow between two frames with their visibility masks
    (background at depth >= `far`: at infinity, module docstring).

    Returns:
        `flow_ij`, `flow_ji` (B, 2, H, W) and `visible_ij` (frame i pixels seen in j; False =
        occluded or out of view), `visible_ji` (frame j pixels seen in i; False = disoccluded).
    """
    flow_ij, z_ij = reprojection_flow(depth_i, K_i, c2w_i, K_j, c2w_j, far)
    flow_ji, z_ji = reprojection_flow(depth_j, K_j, c2w_j, K_i, c2w_i, far)
    return {
        "flow_ij": flow_ij,
        "flow_ji": flow_ji,
        "visible_ij": visibility(flow_ij, z_ij, depth_j, rel_tol, far),
        "visible_ji": visibility(flow_ji, z_ji, depth_i, rel_tol, far),
    }


def frame_flow(
    frame_i: Frame, frame_j: Frame, rel_tol: float = 0.01, far: float = math.inf
) -> dict[str, Tensor]:
    """`flow_pair` between two `pilot.scenes.shot.Frame`s (pass the shot's `far`, so its
    background is at infinity); every result has batch size 1."""
    return flow_pair(
        frame_i.depth[None],
        frame_j.depth[None],
        frame_i.K[None],
        frame_i.c2w[None],
        frame_j.K[None],
        frame_j.c2w[None],
        rel_tol,
        far,
    )
