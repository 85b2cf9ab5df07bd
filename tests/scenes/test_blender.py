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

from pilot.scenes.blender import camera_intrinsics, main, render_frame  # noqa: E402
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


def _blender_pixel(scene, cam, co) -> tuple[float, float]:
    """Where Blender's own projection puts world point `co` (pixel centres at integers)."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    v = world_to_camera_view(scene, cam, Vector(co))
    r = scene.render
    return v.x * r.resolution_x - 0.5, (1 - v.y) * r.resolution_y - 0.5


@pytest.mark.parametrize(
    "size, fit, aspect",
    [
        ((48, 64), "AUTO", (1, 1)),
        ((48, 64), "HORIZONTAL", (1, 1)),  # a shift is a fraction of the width here
        ((64, 48), "VERTICAL", (1, 1)),  # and of the height here
        ((64, 48), "AUTO", (1, 1.5)),  # non-square pixels: fy != fx
        ((64, 48), "VERTICAL", (2, 1)),
    ],
)
def test_intrinsics_follow_blenders_projection(size, fit, aspect):
    import numpy as np

    from pilot.scenes.blender import camera_pose

    _build_scene()
    scene, cam = bpy.context.scene, bpy.context.scene.camera
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = aspect
    cam.data.sensor_fit, cam.data.sensor_height = fit, 20
    cam.data.shift_x, cam.data.shift_y = 0.1, -0.07
    scene.frame_set(2)
    K, W, H = camera_intrinsics(cam, scene)
    w2c = np.linalg.inv(camera_pose(cam))
    for co in [(0, 6, 1), (1.0, 9, 0), (3, 14, 2), (-1, 4, 0.2)]:
        p = w2c[:3] @ np.array([*co, 1.0])
        ours = (K @ p)[:2] / p[2]
        assert np.allclose(ours, _blender_pixel(scene, cam, co), atol=1e-3), (co, ours)


def _ground_height(shot, k: int) -> torch.Tensor:
    """World z of frame k's ground pixels (upward normal, below the box tops) from depth + K +
    c2w: 0 wherever the exported camera matches the one Cycles rendered with."""
    from pilot.scenes.geometry import backproject

    f = shot[k]
    H, W = f.depth.shape[1:]
    world = (f.c2w[:3, :3] @ backproject(f.depth[None], f.K[None])[0].flatten(1)).view(3, H, W)
    z = world[2] + f.c2w[2, 3]
    up = torch.einsum("ij,jhw->ihw", f.c2w[:3, :3], f.normals)[2] > 0.99
    ground = up & (z.abs() < 0.25) & (f.depth[0] < shot.far)
    assert ground.sum() > 0.1 * H * W
    return z[ground]


def test_resolution_percentage_renders_blenders_size(tmp_path):
    """Blender renders resolution * percentage // 100 (33x24 here, not a rounded 34x24), with
    the fitted side and shifts scaled alike; and a non-square pixel, a vertical fit."""
    _build_scene()
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 134, 98
    scene.render.resolution_percentage = 25
    scene.render.pixel_aspect_y = 1.25
    scene.camera.data.sensor_fit, scene.camera.data.shift_y = "VERTICAL", 0.05
    assert main([str(tmp_path), "--frames", "2", "2", "--samples", "1"]) == 0
    shot = Shot(tmp_path)
    assert (shot.width, shot.height) == (33, 24)
    assert _ground_height(shot, 0).abs().max() < 1e-3


def test_camera_switches_and_non_pinhole_cameras_are_refused_before_rendering(tmp_path, capsys):
    _build_scene()
    scene = bpy.context.scene
    cam2 = bpy.data.objects.new("cam2", bpy.data.cameras.new("cam2"))
    scene.collection.objects.link(cam2)
    cam2.location, cam2.rotation_euler = (3, -3, 2), (1.3, 0, 0.5)
    scene.timeline_markers.new("A", frame=1).camera = scene.camera
    scene.timeline_markers.new("B", frame=3).camera = cam2
    out = tmp_path / "shot"
    assert main([str(out), "--frames", "1", "3"]) == 2
    err = capsys.readouterr().err
    assert "camera changes within frames 1..3 ('cam' at 1..2, 'cam2' at 3..3" in err
    assert "--frames 1 2" in err and not out.exists()
    assert main([str(out), "--frames", "3", "3", "--samples", "1"]) == 0  # one camera: fine
    assert Shot(out).meta["provenance"]["camera"] == "cam2"
    cam2.data.type = "ORTHO"
    assert main([str(tmp_path / "o"), "--frames", "3", "3"]) == 2
    assert "camera 'cam2' is orthographic (ORTHO)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_render_settings_of_the_file_leave_the_passes_alone(tmp_path):
    """Depth of field, motion blur, a cropped render region, stereo and Video Sequencer strips
    in the file would blur, crop, rename or replace the passes: the export turns them off."""
    _build_scene()
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 32, 24
    assert main([str(tmp_path / "plain"), "--frames", "1", "2", "--samples", "1"]) == 0
    dof = scene.camera.data.dof
    dof.use_dof, dof.focus_distance, dof.aperture_fstop = True, 2.0, 0.5
    scene.render.use_border = scene.render.use_crop_to_border = True
    scene.render.border_min_x, scene.render.border_max_x = 0.25, 0.75
    scene.render.use_multiview = scene.render.use_motion_blur = True
    scene.sequence_editor_create().sequences.new_effect("red", "COLOR", 1, 1, frame_end=9)
    assert main([str(tmp_path / "file"), "--frames", "1", "2", "--samples", "1"]) == 0
    plain, file = Shot(tmp_path / "plain"), Shot(tmp_path / "file")
    for k in range(2):
        for p in ("depth", "normals", "motion"):
            assert torch.equal(getattr(plain[k], p), getattr(file[k], p)), (k, p)


def test_frames_render_one_at_a_time(tmp_path, monkeypatch):
    """Each frame's EXR (48 bytes a pixel: 100 MB at 1080p) is removed once it is read, so a
    long shot does not fill the disk; it lives in the shot folder (`.shot-resume/scratch`), so
    a kill leaves nothing in the temporary folder."""
    import tempfile

    import pilot.scenes.blender as bridge

    seen = []
    convert = bridge.convert_passes

    def spy(path, *args, **kwargs):
        seen.append((path, sorted(p.name for p in path.parent.iterdir())))
        return convert(path, *args, **kwargs)

    monkeypatch.setattr(bridge, "convert_passes", spy)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _build_scene()
    bpy.context.scene.render.resolution_x, bpy.context.scene.render.resolution_y = 16, 12
    assert main([str(tmp_path / "shot"), "--frames", "1", "3", "--samples", "1"]) == 0
    assert [names for _, names in seen] == [["frame.exr"]] * 3
    assert {path.parent for path, _ in seen} == {tmp_path / "shot" / ".shot-resume" / "scratch"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shot"]
    assert not (tmp_path / "shot" / ".shot-resume").exists()


def test_an_animated_clip_end_keeps_the_surfaces_inside_it(tmp_path):
    """The back wall (30 m) lies beyond the clip end at frame 1 (12 m), inside it at frame 3
    (40 m): frame 3 keeps it whatever frame the file was saved at, and `far` is 40 m."""
    _build_scene()
    scene = bpy.context.scene
    cam = scene.camera.data
    for f, clip in ((1, 12.0), (3, 40.0)):
        cam.clip_end = clip
        cam.keyframe_insert("clip_end", frame=f)
    scene.frame_set(1)
    assert main([str(tmp_path), "--frames", "1", "3", "--samples", "1"]) == 0
    shot = Shot(tmp_path)
    assert shot.far == pytest.approx(40.0)
    assert ((shot[2].depth > 12) & (shot[2].depth < 40)).any()
    assert not ((shot[0].depth > 12) & (shot[0].depth < 40)).any()


def test_a_refused_export_exits_non_zero_inside_blender(tmp_path, monkeypatch, capsys):
    """`blender -b --python blender.py -- OUT` exits 0 after an uncaught error unless told
    otherwise: the script reports a refused export on one line and exits 2."""
    import sys
    from pathlib import Path

    import pilot.scenes.blender as bridge

    _build_scene()
    bpy.context.scene.camera = None
    path = Path(bridge.__file__)
    monkeypatch.setattr(sys, "argv", ["blender", "--python", str(path), "--", str(tmp_path)])
    namespace = {"__name__": "__main__", "__file__": str(path)}
    with pytest.raises(SystemExit) as done:
        exec(compile(path.read_text(), str(path), "exec"), namespace)
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("no active camera at frame 1: set one in Scene Properties > Camera "
                        "(its cameras: 'cam')")  # fmt: skip


def test_sky_in_the_motion_pass_moves_with_the_cameras_rotation(tmp_path):
    """Cycles' Vector pass is 0 on the background; the motion pass holds the flow of points at
    infinity there, the flow `pilot.scenes.geometry` gives the sky (`far`), so `--flow vector`
    pans the sky with the camera as `--flow geometry` does; surfaces keep Blender's vectors."""
    _build_scene()
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 32, 24
    scene.camera.data.clip_end = 20  # the back wall at 30 m is sky now
    assert main([str(tmp_path), "--frames", "1", "3", "--samples", "1"]) == 0
    shot = Shot(tmp_path)
    for k, j, sl in [(1, 0, slice(0, 2)), (1, 2, slice(2, 4)), (0, 1, slice(2, 4))]:
        a, b = shot[k], shot[j]
        flow, _ = reprojection_flow(
            a.depth[None], a.K[None], a.c2w[None], b.K[None], b.c2w[None], shot.far
        )
        sky = a.depth[0] >= shot.far
        assert sky.float().mean() > 0.2 and a.motion[sl][:, sky].abs().max() > 0.5
        assert torch.allclose(a.motion[sl][:, sky], flow[0][:, sky], atol=1e-3)
        assert torch.allclose(a.motion[sl][:, ~sky], flow[0][:, ~sky], atol=1e-3)
    # a range's first and last frames move to the cameras just outside it
    assert main([str(tmp_path / "part"), "--frames", "2", "2", "--samples", "1"]) == 0
    assert torch.allclose(Shot(tmp_path / "part")[0].motion, shot[1].motion, atol=1e-4)


def _saved_scene(tmp_path):
    """The test scene at 32x24, saved as tmp_path/scene.blend (the file an export fingerprints)."""
    _build_scene()
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 32, 24
    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    return blend


def _count_renders(monkeypatch, kill_at=None) -> list[int]:
    """Frames the bridge renders from now on; rendering frame `kill_at` raises as a kill."""
    import pilot.scenes.blender as bridge

    rendered = []

    def render(scene, frame, exr):
        if frame == kill_at:
            raise KeyboardInterrupt  # killed while rendering this frame
        rendered.append(frame)
        render_frame(scene, frame, exr)

    monkeypatch.setattr(bridge, "render_frame", render)
    return rendered


def _files(root):
    """Every file under root (hidden ones included) with its bytes."""
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}


def test_a_killed_export_resumes_at_the_first_missing_frame(tmp_path, monkeypatch, capsys):
    """Killed while rendering frame 3 of 1..4, with a kill -9's EXR left in the scratch folder:
    the rerun renders frames 3 and 4 only, and the shot equals an uninterrupted export byte for
    byte (depth, normals, motion, image, cameras, shot.json), with no leftovers."""
    _saved_scene(tmp_path)
    args = ["--frames", "1", "4", "--samples", "1"]
    rendered = _count_renders(monkeypatch)
    assert main([str(tmp_path / "ref"), *args]) == 0 and rendered == [1, 2, 3, 4]
    out = tmp_path / "shot"
    rendered = _count_renders(monkeypatch, kill_at=3)
    with pytest.raises(KeyboardInterrupt):
        main([str(out), *args])
    assert rendered == [1, 2] and not (out / "shot.json").exists()
    assert sorted(f.name for f in (out / ".shot-resume" / "frames").iterdir()) == [
        "000000.json", "000001.json"
    ]  # fmt: skip
    (out / ".shot-resume" / "scratch" / "frame.exr").write_bytes(b"cut short by kill -9")
    rendered = _count_renders(monkeypatch)
    assert main([str(out), *args]) == 0
    assert rendered == [3, 4]  # frames 1 and 2 were not rendered again
    assert f"{out}: resuming at frame 3 (2 of 4 kept)" in capsys.readouterr().out
    assert _files(out) == _files(tmp_path / "ref")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in (tmp_path / "ref").iterdir()
    )
    rendered = _count_renders(monkeypatch)  # finished: nothing to render, nothing touched
    before = {f: (out / f).stat().st_mtime_ns for f in _files(out)}
    assert main([str(out), *args]) == 0 and rendered == []
    assert "finished shot of these settings, nothing to render" in capsys.readouterr().out
    assert {f: (out / f).stat().st_mtime_ns for f in _files(out)} == before


def test_an_export_of_other_settings_is_refused_until_forced(tmp_path, monkeypatch, capsys):
    """Other samples, frames, size or .blend content never mix with the frames kept: each is
    refused on one line naming what differs, and --force starts over."""
    blend = _saved_scene(tmp_path)
    out = tmp_path / "shot"
    args = ["--frames", "1", "3", "--samples", "1"]
    _count_renders(monkeypatch, kill_at=2)
    with pytest.raises(KeyboardInterrupt):
        main([str(out), *args])
    kept = _files(out)
    capsys.readouterr()
    rendered = _count_renders(monkeypatch)
    for other, differ in [
        (["--samples", "2"], "samples: 1 -> 2"),
        (["--frames", "1", "2"], "frames: [1, 3] -> [1, 2]"),
        (["--size", "16", "12"], "height: 24 -> 12; width: 32 -> 16"),
    ]:
        assert main([str(out), *args, *other]) == 2
        err = capsys.readouterr().err
        assert "holds an unfinished shot of other settings (" in err and differ in err, err
        assert "rerun with its settings to resume it, or start over with --force" in err
        assert err.count("\n") == 1
    bpy.context.scene.objects["Cube"].location.x += 0.5  # the scene is edited and saved
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    assert main([str(out), *args]) == 2
    assert "other settings (blend_sha256: " in capsys.readouterr().err
    assert rendered == [] and _files(out) == kept
    assert main([str(out), *args, "--force"]) == 0 and rendered == [1, 2, 3]
    assert len(Shot(out)) == 3
    assert main([str(out), *args, "--samples", "2"]) == 2
    assert "holds a finished shot of other settings (samples: 1 -> 2)" in capsys.readouterr().err


def test_an_unsaved_scene_starts_over_only_when_forced(tmp_path, monkeypatch, capsys):
    """A scene never saved to a file cannot be compared with the frames on disk."""
    _build_scene()
    bpy.context.scene.render.resolution_x, bpy.context.scene.render.resolution_y = 16, 12
    out = tmp_path / "shot"
    args = ["--frames", "1", "2", "--samples", "1"]
    _count_renders(monkeypatch, kill_at=2)
    with pytest.raises(KeyboardInterrupt):
        main([str(out), *args])
    rendered = _count_renders(monkeypatch)
    assert main([str(out), *args]) == 2 and rendered == []
    assert "never saved to a .blend file" in capsys.readouterr().err
    assert main([str(out), *args, "--force"]) == 0 and rendered == [1, 2]


def test_the_last_line_says_whether_the_export_rendered(tmp_path, monkeypatch, capsys):
    """`pilot shot export` (bpy) and the script inside Blender end with "wrote OUT/shot.json"
    after rendering; over a finished shot of the same settings, with "nothing to render" and no
    "wrote" line."""
    from pilot.cli import main as pilot_main

    blend = _saved_scene(tmp_path)
    out = tmp_path / "shot"
    args = [str(out), "--frames", "1", "2", "--samples", "1", "--size", "16", "12"]
    cli = ["shot", "export", str(blend), *args]
    for run, argv, frames in [
        (main, args, [1, 2]),
        (main, args, []),
        (pilot_main, cli, []),
        (pilot_main, [*cli, "--force"], [1, 2]),
    ]:
        capsys.readouterr()
        rendered = _count_renders(monkeypatch)
        assert run(argv) == 0 and rendered == frames
        printed = capsys.readouterr().out
        if frames:
            assert printed.splitlines()[-1] == f"wrote {out / 'shot.json'}"
        else:
            assert printed.splitlines()[-1].endswith("nothing to render (--force renders again)")
            assert "wrote" not in printed, printed


def test_a_frame_step_is_refused_and_time_stretching_gives_every_other_frame(tmp_path, capsys):
    """Blender's vectors point to the adjacent frames, so a step of 2 would leave the motion
    pass wrong: refused before anything renders. What the error advises, Time Stretching Old 2,
    New 1, renders frames 2, 4, 6 at 1, 2, 3, and the motion pass follows them."""
    _build_scene()
    scene = bpy.context.scene
    for curve in scene.camera.animation_data.action.fcurves:  # keys at frames 1, 4, 7
        for i, key in enumerate(curve.keyframe_points):
            shift = 3 * i + 1 - key.co.x
            for point in (key.co, key.handle_left, key.handle_right):
                point.x += shift
    scene.frame_step = 2
    assert main([str(tmp_path / "step"), "--frames", "1", "6", "--samples", "1"]) == 2
    err = capsys.readouterr().err
    assert "has frame step 2" in err and "Time Stretching (Output > Frame Range) to Old 2" in err
    assert not (tmp_path / "step").exists()
    scene.frame_step = 1
    scene.render.frame_map_old, scene.render.frame_map_new = 2, 1
    assert main([str(tmp_path / "shot"), "--frames", "1", "3", "--samples", "1"]) == 0
    shot = Shot(tmp_path / "shot")
    middle_key = torch.tensor([0.6, -1.5, 1.7])  # the camera at frame 4
    assert torch.allclose(shot[1].c2w[:3, 3], middle_key, atol=1e-5)  # Blender frame 2
    a, b = shot[1], shot[2]
    flow, z = reprojection_flow(a.depth[None], a.K[None], a.c2w[None], b.K[None], b.c2w[None])
    visible = visibility(flow, z, b.depth[None])[0, 0] & (a.depth[0] < shot.far)
    assert flow[0][:, visible].abs().max() > 2  # the camera really moved
    assert (flow[0] - a.motion[2:4]).norm(dim=0)[visible].mean() <= 0.5
