"""Procedural renderer: exact depth/normals on known planes, hatching orientation, cameras."""

import math

import numpy as np
import pytest
import torch

from pilot.scenes import materials
from pilot.scenes.camera import CameraPath, catmull_rom, intrinsics, look_at
from pilot.scenes.layouts import LAYOUT_BUILDERS, LAYOUTS, fly_through
from pilot.scenes.render import Scene, render, stack_scenes


def _wall(distance: float, angle: float = 0.0, kind: int = materials.BRICKS) -> Scene:
    """One 20 m square wall at y = distance, facing the origin, u along world x."""
    m = torch.zeros(materials.N_FIELDS)
    m[materials.KIND], m[materials.HATCH_ANGLE] = kind, angle
    m[materials.HATCH_DENSITY], m[materials.HATCH_WIDTH] = 4.0, 0.3
    m[materials.RGB], m[materials.CELL_U], m[materials.CELL_V] = 0.5, 0.25, 0.08
    return Scene(
        center=torch.tensor([[[0.0, distance, 0.0]]]),
        u=torch.tensor([[[1.0, 0.0, 0.0]]]),
        v=torch.tensor([[[0.0, 0.0, 1.0]]]),
        half=torch.tensor([[[10.0, 10.0]]]),
        material=m[None, None],
        valid=torch.ones(1, 1, dtype=torch.bool),
        light=torch.tensor([[0.0, -1.0, 0.0]]),
        ambient=torch.tensor([0.5]),
        fog_density=torch.tensor([0.1]),
        fog_rgb=torch.tensor([[0.8, 0.8, 0.9]]),
    )


def _front_camera(size: int = 32, fov: float = 60.0) -> tuple[torch.Tensor, torch.Tensor]:
    c2w = look_at(torch.zeros(1, 3), torch.tensor([[0.0, 1.0, 0.0]]))
    return intrinsics(fov, size, size)[None], c2w


def test_look_at_is_opencv_and_orthonormal():
    c2w = look_at(torch.zeros(3), torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(c2w[:3, :3], torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]))
    with pytest.raises(ValueError, match="parallel"):
        look_at(torch.zeros(3), torch.tensor([0.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="a target coincides with its eye"):
        look_at(torch.zeros(3), torch.zeros(3))  # was told "parallel to the up vector"


def test_bad_render_sizes_and_batches_name_the_value():
    """Were a singular-matrix error from `linalg.inv` and "range() arg 3 must not be zero"."""
    from pilot.scenes.procedural import render_fly_through

    scene, c2w, fov = LAYOUT_BUILDERS["room"](np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"image size 0x8 \(WxH\) must be positive integers"):
        render(scene, intrinsics(fov, 0, 8)[None], c2w[None], 8, 0)
    with pytest.raises(ValueError, match="batch .* must be >= 1, got 0"):
        render_fly_through(0, 3, 16, 16, batch=0)


def test_intrinsics_centre_and_focal():
    K = intrinsics(90.0, 64, 48)
    assert K[0, 2] == 31.5 and K[1, 2] == 23.5 and math.isclose(float(K[0, 0]), 32.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="fov"):
        intrinsics(180.0, 8, 8)


def test_spline_passes_through_keys_and_path_poses():
    keys = torch.tensor([[0.0, 0, 0], [1, 2, 0], [3, 2, 1], [4, 0, 1]])
    assert torch.allclose(catmull_rom(keys, torch.arange(4.0)), keys, atol=1e-6)
    poses = CameraPath(keys, keys + torch.tensor([1.0, 0, 0]), 60.0).poses(7)
    assert poses.shape == (7, 4, 4) and torch.allclose(poses[0, :3, 3], keys[0])
    assert torch.allclose(poses[-1, :3, 3], keys[-1], atol=1e-6)


def test_fronto_parallel_wall_depth_normals_fog():
    K, c2w = _front_camera()
    out = render(_wall(5.0), K, c2w, 32, 32)
    assert torch.allclose(out["depth"], torch.full_like(out["depth"], 5.0), atol=1e-5)
    normals = out["normals"].flatten(2)
    assert torch.allclose(normals, torch.tensor([0.0, 0.0, -1.0])[None, :, None], atol=1e-6)
    assert (out["plane"] == 0).all()
    # fog is exponential in the ray length: 5 m on the optical axis between the centre pixels
    ray = 5.0 * math.sqrt(1 + (0.5 / float(K[0, 0, 0])) ** 2 * 2)
    assert math.isclose(float(out["fog"][0, 0, 15, 15]), 1 - math.exp(-0.1 * ray), rel_tol=1e-4)
    for name in ("hatched", "textured", "fog", "image"):
        assert out[name].min() >= 0 and out[name].max() <= 1, name


def test_hatching_follows_the_plane_axes():
    K, c2w = _front_camera(64)
    vertical = render(_wall(3.0, angle=0.0), K, c2w, 64, 64)["hatched"][0, 0]  # lines of const u
    horizontal = render(_wall(3.0, angle=math.pi / 2), K, c2w, 64, 64)["hatched"][0, 0]
    # only the anti-aliasing width varies along a line (the footprint grows off-axis)
    assert vertical.std(0).max() < 0.03 and vertical.std(1).min() > 0.2
    assert horizontal.std(1).max() < 0.03 and horizontal.std(0).min() > 0.2


def test_sky_and_padding():
    K, c2w = _front_camera()
    far_wall = _wall(5.0)
    behind = Scene(**{**vars(far_wall), "center": torch.tensor([[[0.0, -5.0, 0.0]]])})
    out = render(stack_scenes([behind, far_wall]), K.expand(2, 3, 3), c2w.expand(2, 4, 4), 32, 32)
    assert (out["plane"][0] == -1).all() and (out["depth"][0] == 1000.0).all()
    assert (out["fog"][0] == 1).all() and (out["normals"][0] == 0).all()
    with pytest.raises(ValueError, match="one batch"):
        render(far_wall, K.expand(2, 3, 3), c2w, 32, 32)


@pytest.mark.parametrize("name", LAYOUTS)
def test_layouts_put_surfaces_in_view(name):
    import numpy as np

    scene, c2w, fov = LAYOUT_BUILDERS[name](np.random.default_rng(1))
    out = render(scene, intrinsics(fov, 32, 32)[None], c2w[None], 32, 32)
    assert (out["plane"] >= 0).float().mean() > 0.2
    assert torch.isfinite(out["depth"]).all() and (out["depth"] > 0).all()


def test_fly_through_stays_inside_corridor():
    import numpy as np

    scene, path = fly_through(np.random.default_rng(0))
    poses = path.poses(6)
    out = render(stack_scenes([scene] * 6), path.intrinsics(24, 24).expand(6, 3, 3), poses, 24, 24)
    assert (out["plane"] >= 0).all()  # a closed corridor: every ray hits a wall


@pytest.mark.gpu
def test_cuda_render_matches_cpu():
    from pilot.data.walls import render_pairs

    cpu = render_pairs(4, 48, seed=2)
    gpu = render_pairs(4, 48, seed=2, device="cuda")
    for k in ("depth", "normals", "plane"):
        assert (gpu[k].cpu().float() - cpu[k].float()).abs().mean() < 1e-3, k
    for k in ("hatched", "textured", "fog"):
        assert (gpu[k].cpu() - cpu[k]).abs().mean() < 1e-2, k


def test_layout_builders_are_named_apart_from_the_diffusion_samplers():
    """`LAYOUT_BUILDERS` builds one of each of `LAYOUTS`; its old name `SAMPLERS` (the name of
    `pilot.diffusion.SAMPLERS`, the samplers) still works, with a DeprecationWarning."""
    from pilot.scenes import layouts

    assert tuple(LAYOUT_BUILDERS) == LAYOUTS
    with pytest.warns(DeprecationWarning, match="use LAYOUT_BUILDERS"):
        assert layouts.SAMPLERS is LAYOUT_BUILDERS
    with pytest.raises(AttributeError, match="no attribute 'SAMPLER'"):
        layouts.SAMPLER  # noqa: B018
