"""Blender bridge against real Blender: our reprojection flow vs Cycles' own Vector pass.

A small animated scene (ground, boxes at several depths, a camera sliding, rising, dollying and
panning past them) is rendered with Cycles at 64x48, 1 sample, exported with the bridge, and
the flow we compute from exported depth + cameras is compared with Blender's motion vectors on
pixels our depth test calls visible. Needs the `bpy` module (pip install bpy==4.2.0, CPython
3.11); skipped with the reason printed when it cannot be imported.
"""

import math

import pytest
import torch

bpy = pytest.importorskip(
    "bpy", reason="bpy (Blender as a module, `pip install bpy==4.2.0`, CPython 3.11) not importable"
)

from pilot.scenes.blender import camera_intrinsics, main  # noqa: E402
from pilot.scenes.geometry import reprojection_flow, visibility  # noqa: E402
from pilot.scenes.shot import Shot  # noqa: E402


def _build_scene() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    bpy.ops.mesh.primitive_plane_add(size=60, location=(0, 0, 0))
    for x, y, s in [(-1.5, 6, 1.0), (1.0, 9, 1.5), (3.0, 14, 2.0), (-3.5, 18, 2.5), (0.2, 4, 0.5)]:
        bpy.ops.mesh.primitive_cube_add(size=s, location=(x, y, s / 2))
    bpy.ops.mesh.primitive_plane_add(size=40, location=(0, 30, 0), rotation=(math.pi / 2, 0, 0))
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.data.lens, cam.data.shift_x = 24, 0.05
    keys = [((0.0, -2, 1.5), (1.45, 0, -0.1)), ((0.6, -1.5, 1.7), (1.42, 0, -0.14))]
    keys.append(((1.2, -0.8, 1.8), (1.40, 0, -0.18)))
    for f, (loc, rot) in enumerate(keys, start=1):
        cam.location, cam.rotation_euler = loc, rot
        cam.keyframe_insert("location", frame=f)
        cam.keyframe_insert("rotation_euler", frame=f)
    scene.frame_start, scene.frame_end = 1, 3
    scene.render.resolution_x, scene.render.resolution_y = 64, 48
    scene.render.resolution_percentage = 100


def test_reprojection_flow_matches_blender_vector_pass(tmp_path):
    _build_scene()
    K, W, H = camera_intrinsics(bpy.context.scene.camera, bpy.context.scene)
    assert (W, H) == (64, 48) and math.isclose(K[0, 0], 24 / 36 * 64)
    assert main([str(tmp_path), "--frames", "1", "3", "--samples", "1"]) == 0
    shot = Shot(tmp_path)
    assert len(shot) == 3 and shot.meta["provenance"]["source"] == "blender"
    frames = [shot[k] for k in range(3)]
    epe = {}
    for k, j, sl in [(1, 2, slice(2, 4)), (1, 0, slice(0, 2)), (0, 1, slice(2, 4))]:
        a, b = frames[k], frames[j]
        flow, z = reprojection_flow(a.depth[None], a.K[None], a.c2w[None], b.K[None], b.c2w[None])
        visible = visibility(flow, z, b.depth[None])[0, 0] & (a.depth[0] < shot.far)
        blender = a.motion[sl]
        err = (flow[0] - blender).norm(dim=0)[visible]
        epe[(k, j)] = float(err.mean())
        assert visible.float().mean() > 0.5, (k, j)
        assert flow[0][:, visible].abs().max() > 2  # the camera really moved
    print("mean EPE (px) vs Blender vector pass:", epe)
    assert max(epe.values()) <= 0.5, epe
    normals = frames[1].normals
    assert torch.allclose(
        normals.norm(dim=0)[frames[1].depth[0] < shot.far], torch.tensor(1.0), atol=1e-3
    )


def test_runs_as_blender_python_script(tmp_path, monkeypatch):
    """What `blender -b file --python pilot/scenes/blender.py -- OUT` does: exec the file as
    __main__ in a bare namespace (no package), arguments after `--`."""
    import sys
    from pathlib import Path

    import pilot.scenes.blender as bridge

    _build_scene()
    bpy.context.scene.render.resolution_x, bpy.context.scene.render.resolution_y = 16, 12
    path = Path(bridge.__file__)
    argv = ["blender", "-b", "--python", str(path), "--", str(tmp_path), "--frames", "2", "3"]
    monkeypatch.setattr(sys, "argv", argv)
    namespace = {"__name__": "__main__", "__file__": str(path)}
    with pytest.raises(SystemExit) as done:
        exec(compile(path.read_text(), str(path), "exec"), namespace)
    assert done.value.code == 0
    shot = Shot(tmp_path)
    assert len(shot) == 2 and [f["source_frame"] for f in shot.frames] == [2, 3]


def test_hatched_pass_of_a_blender_export_is_fixed_on_the_surfaces(tmp_path):
    """`pilot shot hatch` on a Blender export: the conventions the bridge converts to (camera
    normals, c2w) put the ground's lines at constant world x, and they move with the scene."""
    from pilot.cli import main as pilot_main
    from pilot.scenes.geometry import backproject, frame_flow, warp

    _build_scene()
    bpy.context.scene.render.resolution_x, bpy.context.scene.render.resolution_y = 128, 96
    assert main([str(tmp_path), "--frames", "1", "3", "--samples", "1"]) == 0
    assert pilot_main(["shot", "hatch", str(tmp_path), "--density", "4"]) == 0
    shot = Shot(tmp_path)
    a, b = shot[0], shot[1]
    # Ground pixels near the camera: ink exactly where world x is near a multiple of 1/4 m.
    p = backproject(b.depth[None], b.K[None])[0].flatten(1)
    world = (b.c2w[:3, :3] @ p + b.c2w[:3, 3:]).view(3, 96, 128)
    ground = (world[2].abs() < 1e-3) & (b.depth[0] < 4)
    phase = (world[0] * 4 - (world[0] * 4).round()).abs()  # 0 on a line, 0.5 between
    ink = 1 - b.hatched[0]
    assert ground.sum() > 500
    assert ink[ground & (phase < 0.05)].mean() > 0.9 and ink[ground & (phase > 0.4)].mean() < 0.1
    # Under the camera's move, frame 0's drawing warped by the true flow is frame 1's.
    pair = frame_flow(b, a)
    flow, visible = pair["flow_ij"], pair["visible_ij"]
    moved = warp(a.hatched[None], flow)[0]
    edges = sum((b.hatched.diff(dim=d)).abs().mean() for d in (1, 2))
    assert flow.norm(dim=1).mean() > 5
    assert (moved - b.hatched).abs()[visible[0]].mean() < 0.5 * edges


def test_scene_units_become_metres(tmp_path):
    _build_scene()
    assert main([str(tmp_path / "m"), "--frames", "1", "2", "--samples", "1"]) == 0
    units = bpy.context.scene.unit_settings
    units.system, units.scale_length = "METRIC", 0.01  # a scene modelled in centimetres
    assert main([str(tmp_path / "cm"), "--frames", "1", "2", "--samples", "1"]) == 0
    m, cm = Shot(tmp_path / "m"), Shot(tmp_path / "cm")
    assert cm.meta["provenance"]["metres_per_unit"] == pytest.approx(0.01)
    assert cm.far == pytest.approx(m.far * 0.01)
    for k in range(2):
        assert torch.allclose(cm[k].depth, m[k].depth * 0.01, rtol=1e-6)
        assert torch.allclose(cm[k].c2w[:3, 3], m[k].c2w[:3, 3] * 0.01, rtol=1e-6)
        assert torch.equal(cm[k].c2w[:3, :3], m[k].c2w[:3, :3])
    a, b = cm[0], cm[1]  # the flow from depth and cameras does not depend on the unit
    flow = reprojection_flow(a.depth[None], a.K[None], a.c2w[None], b.K[None], b.c2w[None])[0]
    a, b = m[0], m[1]
    expected = reprojection_flow(a.depth[None], a.K[None], a.c2w[None], b.K[None], b.c2w[None])[0]
    assert torch.allclose(flow, expected, atol=1e-3)
