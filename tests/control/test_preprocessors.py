"""Control preprocessors on synthetic inputs with known answers."""

import math

import pytest
import torch

from pilot.control import (
    PREPROCESSORS,
    canny,
    depth_to_control,
    hatch,
    line_art,
    normals_from_depth,
    normals_to_control,
    soft_edges,
)

H = W = 32
F_PX = 30.0
K = torch.tensor([[F_PX, 0, (W - 1) / 2], [0, F_PX, (H - 1) / 2], [0, 0, 1.0]])


def plane_depth(normal: torch.Tensor, distance: float = 5.0) -> torch.Tensor:
    """(1, 1, H, W) z-depth of the plane through (0, 0, distance) with a camera-facing normal."""
    v, u = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    rays = torch.stack([(u - K[0, 2]) / F_PX, (v - K[1, 2]) / F_PX, torch.ones_like(u)])
    z = normal[2] * distance / torch.einsum("c,chw->hw", normal, rays)
    return z[None, None]


def square(value: float = 1.0) -> torch.Tensor:
    image = torch.zeros(1, 3, H, W)
    image[..., 8:24, 8:24] = value
    return image


def boundary_distance() -> torch.Tensor:
    """(H, W) distance in pixels (Chebyshev) from each pixel to the square's outline."""
    idx = torch.arange(H).float()
    inside = lambda a: torch.minimum(a - 7.5, 23.5 - a)  # noqa: E731  > 0 inside [8, 23]
    dy, dx = inside(idx)[:, None], inside(idx)[None, :]
    return torch.minimum(dy, dx).abs().minimum(torch.maximum(-dy, -dx).clamp_min(0))


def test_tilted_plane_gives_its_normal_and_the_normalbae_colour():
    t = math.radians(30)
    n = torch.tensor([-math.sin(t), 0.0, -math.cos(t)])  # faces the camera, turned left
    normals = normals_from_depth(plane_depth(n), K)
    torch.testing.assert_close(normals, n.view(1, 3, 1, 1).expand(1, 3, H, W), atol=1e-5, rtol=0)
    colour = normals_to_control(normals)[0, :, 10, 20]
    expected = torch.tensor([(1 + math.sin(t)) / 2, 0.5, (1 + math.cos(t)) / 2])  # red = left
    torch.testing.assert_close(colour, expected, atol=1e-5, rtol=0)
    midas = normals_to_control(normals, "midas")[0, :, 10, 20]  # 1.0 model: channels reversed
    torch.testing.assert_close(midas, expected.flip(0), atol=1e-5, rtol=0)
    opengl = normals * torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)  # Blender camera axes
    torch.testing.assert_close(normals_to_control(opengl, axes="opengl")[0, :, 10, 20], expected)


def test_floor_is_green_facing_camera_is_lavender_background_grey():
    floor = torch.tensor([0.0, -math.sin(math.radians(60)), -math.cos(math.radians(60))])
    image = normals_to_control(normals_from_depth(plane_depth(floor), K))
    assert image[0, 1].min() > 0.9 and abs(image[0, 0].mean() - 0.5) < 1e-5  # up = green
    front = torch.zeros(1, 3, 2, 2)
    front[0, 2, 0] = -1  # top row faces the camera, bottom row is background
    colours = normals_to_control(front)[0, :, :, 0].T.tolist()
    assert colours == [[0.5, 0.5, 1.0], [0.5, 0.5, 0.5]]


def test_depth_is_near_bright_inverse_normalised_per_frame_or_shot():
    depth = torch.tensor([1.0, 2.0, 4.0, 1000.0]).view(1, 1, 1, 4)
    frame = depth_to_control(depth, far=1000.0)[0, 0, 0]
    torch.testing.assert_close(frame, torch.tensor([1.0, 1 / 3, 0.0, 0.0]))
    linear = depth_to_control(depth, mode="linear", far=1000.0)[0, 0, 0]
    torch.testing.assert_close(linear, torch.tensor([1.0, 2 / 3, 0.0, 0.0]))
    shot = torch.cat([depth[..., :3], 2 * depth[..., :3]])  # second frame twice as far
    per_shot = depth_to_control(shot, per="shot")
    per_frame = depth_to_control(shot)
    assert torch.equal(per_frame[0], per_frame[1])  # each frame spans [0, 1] on its own
    torch.testing.assert_close(per_shot[1, 0, 0], torch.tensor([3 / 7, 1 / 7, 0.0]))
    assert per_shot.shape == (2, 3, 1, 3)
    inverse = depth_to_control(1 / depth, disparity=True, far=500.0)[0, 0, 0]  # a MiDaS output
    torch.testing.assert_close(inverse, frame)
    with pytest.raises(ValueError, match=r"expected \(B, 1, H, W\)"):
        depth_to_control(torch.ones(1, 3, 4, 4))


def test_canny_finds_the_squares_outline_and_nothing_else():
    edges = canny(square())
    assert edges.shape == (1, 3, H, W) and set(edges.unique().tolist()) == {0.0, 1.0}
    on = edges[0, 0] > 0
    assert boundary_distance()[on].max() <= 1.0  # every edge pixel on the outline
    for side in (on[7:9, 10:22], on[23:25, 10:22], on[10:22, 7:9].T, on[10:22, 23:25].T):
        assert side.any(0).all()  # each side is traced along its length
    assert not canny(torch.full((1, 3, H, W), 0.7)).any()
    with pytest.raises(ValueError, match="low=200, high=100"):
        canny(square(), 200, 100)


def test_soft_edges_peak_on_the_outline_and_vanish_on_flat_areas():
    soft = soft_edges(square())[0, 0]
    assert soft.max() == 1.0
    assert boundary_distance()[soft > 0.9].max() <= 1.0 and boundary_distance()[soft > 0].max() <= 6
    assert soft[16, 16] == 0 and soft[0, 0] == 0


def test_line_art_draws_lines_beside_the_outline_only():
    lines = line_art(square())[0, 0]
    assert boundary_distance()[lines > 0.5].max() <= 3.0
    assert lines[16, 16] == 0 and lines[1, 1] == 0 and lines[16, 6] > 0.5
    assert (
        not line_art(torch.zeros(1, 3, H, W)).any() and not line_art(torch.ones(1, 3, H, W)).any()
    )


def test_hatching_outlines_depth_steps_and_darkens_with_shade():
    depth = torch.full((1, 1, H, W), 10.0)
    depth[..., 8:24, 8:24] = 5.0
    normals = torch.zeros(1, 3, H, W)
    normals[:, 2] = -1
    lit = hatch(depth, normals, light=(0.0, 0.0, -1.0), spacing=4)[0, 0]  # tone 1: no strokes
    assert lit[8, 8:24].eq(1).all() and lit[8:24, 23].eq(1).all()  # the near square's outline
    assert lit[7, 10:22].eq(0).all()  # the far side of the step stays blank
    assert lit[12:20, 12:20].eq(0).all() and lit[0:6, 0:6].eq(0).all()
    shaded = hatch(depth, normals, light=(0.0, 0.0, 1.0), spacing=4)[0, 0]  # unlit: 3 layers
    half = hatch(depth, normals, light=(0.0, 0.7, -0.5), spacing=4)[0, 0]
    assert shaded[12:20, 12:20].mean() > half[12:20, 12:20].mean() > 0


def test_hatch_strokes_follow_a_slanted_surface():
    t = math.radians(40)
    n = torch.tensor([-math.sin(t), 0.0, -math.cos(t)])  # normal projects onto the image x axis
    depth = plane_depth(n)
    ink = hatch(depth, normals_from_depth(depth, K), light=(0.0, 1.0, 0.0), ambient=0.6)[0, 0]
    inner = ink[2:-2, 2:-2]
    assert inner.max() == 1  # strokes are vertical: every row alike
    torch.testing.assert_close(inner, inner[:1].expand_as(inner), atol=0.02, rtol=0)


def test_hatch_strokes_converge_in_perspective_on_a_floor():
    floor = torch.tensor([0.0, -1.0, 0.0])  # horizontal floor below a level camera
    v, u = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    depth = torch.where(v > K[1, 2] + 2, 1.5 * F_PX / (v - K[1, 2]), torch.inf)[None, None]
    normals = torch.where(torch.isfinite(depth), floor.view(1, 3, 1, 1), 0.0)
    ink = hatch(depth, normals, K, light=(0.0, -0.5, -1.0), spacing=6)[0, 0]  # one layer

    def strokes(row: int) -> int:
        return int(((ink[row, 1:] > 0.5) & (ink[row, :-1] <= 0.5)).sum())

    assert strokes(24) > strokes(31) > 0  # farther rows hold more (converging) strokes
    assert ink[18:20].min() > 0.5  # strokes too dense to draw become an even tone, no moire
    assert not ink[:17].any()  # nothing above the horizon, no outline across the floor


@pytest.mark.parametrize("shape", [(1, 3, 5, 3), (2, 3, 2, 9), (1, 3, 3, 1), (1, 3, 1, 1)])
def test_preprocessors_on_images_smaller_than_their_kernels(shape):
    """Reflection cannot pad a side shorter than the blur radius: those sides replicate; a side
    of 1 pixel has no gradient: soft edges and hatching say so."""
    image = torch.rand(shape)
    for name, preprocess in PREPROCESSORS.items():
        if min(shape[2:]) < 2 and name in ("softedge", "hatch"):
            with pytest.raises(ValueError, match=r"\(WxH\): .* need"):
                preprocess(image)
            continue
        out = preprocess(image)
        assert out.shape == shape and torch.isfinite(out).all(), name
