"""Reprojection flow, warping and occlusion against answers worked out by hand."""

import math

import pytest
import torch

from pilot.scenes import materials
from pilot.scenes.camera import intrinsics, look_at
from pilot.scenes.geometry import (
    flow_pair,
    forward_backward_error,
    reprojection_flow,
    visibility,
    warp,
)
from pilot.scenes.render import RenderConfig, Scene, render

H, W = 48, 64


def _pose(t=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """Camera looking down world +z (identity rotation), at position t. (1, 4, 4)"""
    c2w = torch.eye(4)[None]
    c2w[0, :3, 3] = torch.tensor(t)
    return c2w


def test_translation_over_fronto_parallel_plane_is_analytic():
    K = intrinsics(70.0, W, H)[None]
    f = float(K[0, 0, 0])
    Z = 7.0
    depth = torch.full((1, 1, H, W), Z)
    # sideways translation (tx, ty): every pixel moves by -f t / Z
    flow, z = reprojection_flow(depth, K, _pose(), K, _pose((0.3, -0.2, 0.0)))
    assert torch.allclose(flow[0, 0], torch.full((H, W), -f * 0.3 / Z), atol=1e-4)
    assert torch.allclose(flow[0, 1], torch.full((H, W), f * 0.2 / Z), atol=1e-4)
    assert torch.allclose(z, depth)
    # forward translation tz: radial expansion (p - c) * tz / (Z - tz)
    flow, z = reprojection_flow(depth, K, _pose(), K, _pose((0.0, 0.0, 2.0)))
    xs = torch.arange(W) - float(K[0, 0, 2])
    assert torch.allclose(flow[0, 0, 5], xs * 2.0 / (Z - 2.0), atol=1e-4)
    assert torch.allclose(z, depth - 2.0)


def test_warp_integer_shift_is_exact_and_zero_flow_is_identity():
    image = torch.rand(2, 3, H, W)
    assert torch.allclose(warp(image, torch.zeros(2, 2, H, W)), image, atol=1e-5)
    flow = torch.zeros(2, 2, H, W)
    flow[:, 0], flow[:, 1] = 3.0, -2.0  # out(y, x) = image(y - 2, x + 3)
    out = warp(image, flow)
    assert torch.allclose(out[:, :, 2:, : W - 3], image[:, :, : H - 2, 3:], atol=1e-5)
    with pytest.raises(ValueError, match="flow"):
        warp(image, torch.zeros(2, 2, H, W + 1))


def _plane(center, half, u=(1.0, 0, 0), v=(0, 1.0, 0)) -> dict:
    return {"center": center, "half": half, "u": u, "v": v}


def _scene(planes: list[dict]) -> Scene:
    n = len(planes)
    m = torch.zeros(n, materials.N_FIELDS)
    m[:, materials.HATCH_DENSITY], m[:, materials.CELL_U], m[:, materials.CELL_V] = 4, 0.3, 0.3
    return Scene(
        center=torch.tensor([[p["center"] for p in planes]]),
        u=torch.tensor([[p["u"] for p in planes]]),
        v=torch.tensor([[p["v"] for p in planes]]),
        half=torch.tensor([[p["half"] for p in planes]]),
        material=m[None],
        valid=torch.ones(1, n, dtype=torch.bool),
        light=torch.tensor([[0.0, 0.0, -1.0]]),
        ambient=torch.tensor([0.5]),
        fog_density=torch.tensor([0.05]),
        fog_rgb=torch.ones(1, 3),
    )


def test_occluder_hides_the_predicted_band():
    """Back wall at z = 10, 2 m square occluder at z = 5; the camera steps 1 m right.

    Back-wall points with X in [-3, -2) and |Y| < 2 are visible from the first camera and hidden
    by the occluder from the second (see the docstring arithmetic in the test body).
    """
    K = intrinsics(90.0, W, H)[None]
    f, cx, cy = float(K[0, 0, 0]), float(K[0, 0, 2]), float(K[0, 1, 2])
    scene = _scene([_plane((0, 0, 10.0), (30, 30)), _plane((0, 0, 5.0), (1, 1))])
    c2w_i, c2w_j = _pose(), _pose((1.0, 0, 0))
    depth_i = render(scene, K, c2w_i, H, W)["depth"]
    depth_j = render(scene, K, c2w_j, H, W)["depth"]
    out = flow_pair(depth_i, depth_j, K, c2w_i, K, c2w_j)
    visible = out["visible_ij"][0, 0]
    xs, ys = torch.arange(W)[None].float(), torch.arange(H)[:, None].float()
    X, Y = (xs - cx) * 10 / f, (ys - cy) * 10 / f  # back-wall coordinates of frame i pixels
    band = (X > -3 + 0.3) & (X < -2 - 0.3) & (Y.abs() < 2 - 0.3)
    clear = (X > 2.5) & (Y.abs() < 2) & (xs - f * 1.0 / 10 < W - 2)  # right of the occluder
    assert band.sum() > 10 and (~visible[band]).all()
    assert clear.sum() > 50 and visible[clear].all()
    # disocclusion: frame j sees back-wall band X in [2, 3) (camera coords X - 1 in [1, 2))
    assert (~out["visible_ji"][0, 0]).sum() > 10


def _turned(degrees: float, t=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """Camera at t turned `degrees` to the right (about its y axis) from `_pose`. (1, 4, 4)"""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    c2w = _pose(t)
    c2w[0, :3, :3] = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return c2w


def _landing(K: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where directions at infinity land after a rotation R (3, 3): the homography K R K^-1.
    Returns (x, y) pixel coordinates, each (H, W)."""
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    p = torch.stack([xs, ys, torch.ones_like(xs)]).view(3, -1)
    q = K[0] @ R @ torch.linalg.inv(K[0]) @ p
    return (q[0] / q[2]).view(H, W), (q[1] / q[2]).view(H, W)


def _sample(mask: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mask (H, W) at the nearest pixel of (x, y), False outside the image (1 px margin)."""
    inside = (x >= 1) & (x <= W - 2) & (y >= 1) & (y <= H - 2)
    xi, yi = x.round().long().clamp(0, W - 1), y.round().long().clamp(0, H - 1)
    return inside & mask[yi, xi]


def test_sky_is_at_infinity_and_seen_wherever_it_stays_sky():
    """A 3 m square wall 5 m ahead with sky all around; the camera steps 1 m right and turns
    5 degrees right. Sky (depth `far`) moves by the rotation alone, K R K^-1, and is seen where
    it lands on sky, however far from the centre (a depth test on z = far fails there: turned
    5 degrees, the z-depth of a 45-degree ray changes by 8%); the sky the wall hid is not."""
    far = RenderConfig().far
    K = intrinsics(90.0, W, H)[None]
    scene = _scene([_plane((0, 0, 5.0), (1.5, 1.5))])
    c2w_i, c2w_j = _pose(), _turned(5.0, (1.0, 0, 0))
    depth_i, depth_j = (render(scene, K, c2w, H, W)["depth"] for c2w in (c2w_i, c2w_j))
    sky_i, sky_j = depth_i[0, 0] >= far, depth_j[0, 0] >= far
    assert 0.05 < (~sky_i).float().mean() < 0.5 and 0.05 < (~sky_j).float().mean() < 0.5
    out = flow_pair(depth_i, depth_j, K, c2w_i, K, c2w_j, far=far)
    R_ij = c2w_j[0, :3, :3].T  # camera i -> camera j (c2w_i is the identity)
    x, y = _landing(K, R_ij)
    grid_x, grid_y = torch.meshgrid(torch.arange(W).float(), torch.arange(H).float(), indexing="xy")
    flow = out["flow_ij"][0]
    assert torch.allclose(flow[0][sky_i], (x - grid_x)[sky_i], atol=1e-3)
    assert torch.allclose(flow[1][sky_i], (y - grid_y)[sky_i], atol=1e-3)
    near_wall_j = torch.nn.functional.max_pool2d((~sky_j).float()[None, None], 5, 1, 2)[0, 0] > 0
    stays_sky = sky_i & _sample(~near_wall_j, x, y)
    assert stays_sky.float().mean() > 0.5
    assert out["visible_ij"][0, 0][stays_sky].all()
    # disocclusion: sky of frame j that lay behind the wall in frame i
    x, y = _landing(K, R_ij.T)
    inner_wall_i = -torch.nn.functional.max_pool2d(-(~sky_i).float()[None, None], 5, 1, 2)[0, 0]
    was_hidden = sky_j & _sample(inner_wall_i > 0, x, y)
    assert was_hidden.sum() > 10
    assert not out["visible_ji"][0, 0][was_hidden].any()
    # without `far` the sky is a plane at 1000 m: the depth test fails it at the edges
    plain = flow_pair(depth_i, depth_j, K, c2w_i, K, c2w_j)
    assert not plain["visible_ij"][0, 0][stays_sky].all()


def test_forward_backward_round_trip_unoccluded():
    """Frame-to-frame motion (a few pixels) over three planes, one tilted and floating.

    With much larger motions (20-40 px) the mean stays ~1e-3 px but a handful of pixels whose
    bilinear stencil straddles two surfaces less than 1% apart in depth pass the depth test and
    reach ~0.04 px.
    """
    K = intrinsics(75.0, W, H)[None]
    scene = _scene(
        [
            _plane((0, 0, 9.0), (30, 30)),
            _plane((-1.0, 0.5, 4.0), (0.8, 1.2), u=(math.cos(0.6), 0, math.sin(0.6))),
            _plane((0, 2.0, 6.0), (30, 30), v=(0, 0, 1.0)),  # floor-like plane
        ]
    )
    c2w_i = look_at(torch.zeros(1, 3), torch.tensor([[0.1, 0.05, 1.0]]), up=(0, -1, 0))
    eye_j, target_j = torch.tensor([[0.06, -0.02, 0.07]]), torch.tensor([[0.12, 0.04, 1.0]])
    c2w_j = look_at(eye_j, target_j, up=(0, -1, 0))
    depth_i = render(scene, K, c2w_i, H, W)["depth"]
    depth_j = render(scene, K, c2w_j, H, W)["depth"]
    out = flow_pair(depth_i, depth_j, K, c2w_i, K, c2w_j)
    err = forward_backward_error(out["flow_ij"], out["flow_ji"])[out["visible_ij"]]
    assert out["visible_ij"].float().mean() > 0.7
    assert out["flow_ij"].abs().max() > 2  # a real motion, not a no-op
    assert err.max() < 0.01 and err.mean() < 1e-3, (float(err.max()), float(err.mean()))


def test_shape_errors_name_the_frame():
    K, depth = intrinsics(60.0, W, H)[None], torch.ones(1, 1, H, W)
    with pytest.raises(ValueError, match="frame j"):
        reprojection_flow(depth, K, _pose(), K.expand(2, 3, 3), _pose())


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_warp_is_exact_for_zero_and_integer_flow(padding_mode, dtype):
    image = torch.rand(2, 3, H, W).to(dtype)
    zero = torch.zeros(2, 2, H, W)
    assert torch.equal(warp(image, zero, padding_mode=padding_mode), image)
    flow = torch.zeros(2, 2, H, W)
    flow[:, 0], flow[:, 1] = 3.0, -2.0  # out(y, x) = image(y - 2, x + 3)
    out = warp(image, flow, padding_mode=padding_mode)
    assert out.dtype == dtype
    assert torch.equal(out[:, :, 2:, : W - 3], image[:, :, : H - 2, 3:])
    if padding_mode == "zeros":
        assert (out[:, :, :2] == 0).all() and (out[:, :, :, W - 3 :] == 0).all()
    else:
        assert torch.equal(out[:, :, 2:, W - 3 :], image[:, :, : H - 2, -1:].expand(-1, -1, -1, 3))


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_warp_matches_grid_sample_for_fractional_flow(padding_mode):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, H, W, generator=g, dtype=torch.float64)
    flow = torch.randn(2, 2, H, W, generator=g, dtype=torch.float64) * 6  # some land outside
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    x = (xs + flow[:, 0]) / (W - 1) * 2 - 1
    y = (ys + flow[:, 1]) / (H - 1) * 2 - 1
    reference = torch.nn.functional.grid_sample(
        image, torch.stack([x, y], -1), padding_mode=padding_mode, align_corners=True
    )
    assert torch.allclose(warp(image, flow, padding_mode=padding_mode), reference, atol=1e-12)


def test_warp_and_visibility_check_batches_and_sizes():
    image = torch.rand(2, 3, H, W)
    with pytest.raises(ValueError, match=r"flow batch 1 differs from image batch 2"):
        warp(image, torch.zeros(1, 2, H, W))
    with pytest.raises(ValueError, match=r"visibility: flow_ij \(1, 2, 48, 64\), z_ij"):
        visibility(torch.zeros(1, 2, H, W), torch.ones(1, 1, H, W), torch.ones(1, 1, H, W - 1))


def test_visibility_interpolates_inverse_depth():
    """A plane whose depth in frame j grows from 1 to 6 m over 8 columns (a large camera move
    sees such slopes); frame i's pixels land half a pixel to the right. Inverse depth is linear
    across a plane in the image, so all pixels inside frame j are visible; interpolating depth
    itself misses by up to 8% at the far end and marks them occluded."""
    x = torch.arange(8.0).expand(1, 1, 4, 8)
    depth_j = 1 / (1 - 0.12 * x)
    z_ij = 1 / (1 - 0.12 * (x + 0.5))
    flow_ij = torch.zeros(1, 2, 4, 8)
    flow_ij[:, 0] = 0.5
    visible = visibility(flow_ij, z_ij, depth_j)
    # Column 0: the stencil test's one-sided slope is 0 at the image border (replicate padding);
    # the last column lands outside frame j.
    assert visible[..., 1:7].all() and not visible[..., 7].any()
