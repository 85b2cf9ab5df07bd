"""Smoke runs of `pilot shot render / preview / pairs / export`."""

import json
import math

import cv2
import numpy as np
import pytest

from pilot.cli import main
from tests.conftest import plant_temps


def test_render_then_preview(tmp_path, capsys):
    shot = tmp_path / "shot"
    assert main(["shot", "render", str(shot), "--frames", "3", "--size", "40", "32"]) == 0
    meta = json.loads((shot / "shot.json").read_text())
    passes = ["depth", "normals", "motion", "image", "hatched"]
    assert len(meta["frames"]) == 3 and meta["passes"] == passes
    sheet = tmp_path / "sheet.png"
    assert main(["shot", "preview", str(shot), str(sheet), "--rows", "2"]) == 0
    img = cv2.imread(str(sheet))
    assert img.shape[1] >= 5 * 40 and img.shape[0] >= 2 * 32  # 5 passes x 2 frames
    video = tmp_path / "passes.mp4"
    cut = plant_temps(video, sheet)  # writes a kill -9 cut
    assert main(["shot", "preview", str(shot), str(video)]) == 0
    assert not cut[0].exists() and cut[1].exists()  # its own, not another output's
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


def test_render_over_a_shot_and_into_a_folder_of_yours(tmp_path, capsys):
    shot = tmp_path / "shot"
    assert main(["shot", "render", str(shot), "--frames", "3", "--size", "16", "16"]) == 0
    assert main(["shot", "render", str(shot), "--frames", "2", "--size", "16", "16"]) == 0
    assert sorted(f.name for f in (shot / "depth").iterdir()) == ["000000.npy", "000001.npy"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["shot", "render", str(mine), "--frames", "2", "--size", "16", "16"]) == 2
    assert f"{mine} is not empty and holds no shot" in capsys.readouterr().err
    assert sorted(f.name for f in mine.iterdir()) == ["notes.txt"]


def test_pairs_writes_manifest(tmp_path):
    assert main(["shot", "pairs", str(tmp_path), "--n", "2", "--size", "16"]) == 0
    assert json.loads((tmp_path / "manifest.json").read_text())["count"] == 2


def test_pairs_fixed_fog_density(tmp_path, capsys):
    out = tmp_path / "fixed"
    args = ["shot", "pairs", str(out), "--n", "3", "--size", "16", "--passes", "fog", "depth"]
    assert main([*args, "--fog-density", "0.1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fog_density"] == [0.1, 0.1]
    for item in manifest["items"]:  # fog = 1 - exp(-d ray length) >= 1 - exp(-d depth)
        d = 0.1 * (0.4 if item["layout"] == "walls" else 1)  # open-air yards: 0.4x fog
        fog = cv2.imread(str(out / "fog" / f"{item['file']}.png"), cv2.IMREAD_UNCHANGED) / 255
        depth = np.load(out / "depth" / f"{item['file']}.npy")[0]
        assert (fog >= 1 - np.exp(-d * depth) - 1 / 255).all()
        assert (fog <= 1 - np.exp(-d * depth * 2) + 1 / 255).all()  # fov <= 95 deg: ray < 2 depth
    assert main([*args, "--fog-density", "0.2", "0.1"]) == 2
    assert "--fog-density" in capsys.readouterr().err


def test_errors_name_the_path(tmp_path, capsys):
    assert main(["shot", "preview", str(tmp_path / "nope"), str(tmp_path / "x.png")]) == 2
    assert "nope/shot.json" in capsys.readouterr().err
    assert main(["shot", "export", str(tmp_path / "missing.blend"), str(tmp_path / "o")]) == 2
    assert "missing.blend" in capsys.readouterr().err
    for fps in ("0", "-1", "nan"):
        assert main(["shot", "render", str(tmp_path / "r"), "--fps", fps]) == 2
        assert "--fps: fps=" in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("size", [("0", "0"), ("-8", "8"), ("16", "0")])
def test_sizes_must_be_positive(tmp_path, capsys, size):
    assert main(["shot", "render", str(tmp_path / "r"), "--size", *size]) == 2
    assert f"--size: size {size[0]}x{size[1]} must be positive" in capsys.readouterr().err
    blend = tmp_path / "scene.blend"
    blend.write_bytes(b"BLENDER")
    never = ["--blender", str(tmp_path / "no-blender")]  # refused before Blender runs
    assert main(["shot", "export", str(blend), str(tmp_path / "x"), "--size", *size, *never]) == 2
    assert "--size: size" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "x").exists()


def test_preview_rows_must_be_positive(tmp_path, capsys):
    shot = tmp_path / "shot"
    assert main(["shot", "render", str(shot), "--frames", "2", "--size", "16", "16"]) == 0
    assert main(["shot", "preview", str(shot), str(tmp_path / "s.png"), "--rows", "0"]) == 2
    assert "--rows 0" in capsys.readouterr().err
    out = tmp_path / "new" / "s.txt"  # no image format: named, and no folder made for it
    assert main(["shot", "preview", str(shot), str(out)]) == 2
    assert f"{out}: unknown image suffix '.txt' (e.g. .png, .jpg; a video: .mp4, .gif)" in (
        capsys.readouterr().err
    )
    assert not out.parent.exists()


def test_export_of_a_file_blender_cannot_read(tmp_path, capsys):
    pytest.importorskip("bpy", reason="bpy (pip install bpy==4.2.0) not importable")
    blend = tmp_path / "junk.blend"
    blend.write_text("junk")
    assert main(["shot", "export", str(blend), str(tmp_path / "x")]) == 2
    assert f"{blend}: Blender cannot open it" in capsys.readouterr().err


def test_export_blend_file(tmp_path):
    bpy = pytest.importorskip("bpy", reason="bpy (pip install bpy==4.2.0) not importable")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    bpy.ops.mesh.primitive_cube_add(size=2, location=(0, 6, 1))
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.rotation_euler = (math.pi / 2, 0, 0)  # look along +y
    for f, x in ((1, 0.0), (2, 0.3)):
        cam.location = (x, 0, 1)
        cam.keyframe_insert("location", frame=f)
    scene.render.resolution_x, scene.render.resolution_y = 32, 24
    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    out = tmp_path / "shot"
    assert (
        main(["shot", "export", str(blend), str(out), "--frames", "1", "2", "--samples", "1"]) == 0
    )
    meta = json.loads((out / "shot.json").read_text())
    assert meta["width"] == 32 and meta["provenance"]["file"].endswith("scene.blend")
    # the camera looks along world +y: OpenCV z axis (third column) is (0, 1, 0)
    assert [round(r[2], 6) for r in meta["frames"][0]["c2w"][:3]] == [0, 1, 0]


def test_export_through_a_blender_executable(tmp_path):
    """Without bpy, or with --blender, it runs `blender -b FILE --python bridge -- ...`."""
    import stat
    import sys

    log = tmp_path / "argv.json"
    fake = tmp_path / "blender"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(log)!r}, 'w'))\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    blend = tmp_path / "scene.blend"
    blend.write_bytes(b"BLENDER")
    out = tmp_path / "shot"
    args = ["--frames", "3", "9", "--samples", "2", "--size", "64", "48", "--blender", str(fake)]
    args.append("--force")
    assert main(["shot", "export", str(blend), str(out), *args]) == 0
    argv = json.loads(log.read_text())
    assert argv[:5] == ["-b", str(blend), "--python-exit-code", "1", "--python"]
    assert argv[5].endswith("scenes/blender.py")
    assert argv[6:] == [
        "--",
        str(out),
        "--samples",
        "2",
        "--frames",
        "3",
        "9",
        "--size",
        "64",
        "48",
        "--force",
    ]


def test_pairs_refuses_a_folder_of_yours(tmp_path, capsys):
    (tmp_path / "mine" / "hatched").mkdir(parents=True)
    (tmp_path / "mine" / "hatched" / "000000.png").write_bytes(b"my sketch")
    assert main(["shot", "pairs", str(tmp_path / "mine"), "--n", "1", "--size", "16"]) == 2
    assert "holds no pairs of write_pairs" in capsys.readouterr().err
    assert (tmp_path / "mine" / "hatched" / "000000.png").read_bytes() == b"my sketch"


@pytest.mark.parametrize("samples", ["0", "-4"])
def test_export_samples_must_be_positive(tmp_path, capsys, samples):
    """Cycles would clamp them to 1 silently (and shot.json would say 0)."""
    blend = tmp_path / "scene.blend"
    blend.write_bytes(b"BLENDER")
    never = ["--blender", str(tmp_path / "no-blender")]  # refused before Blender runs
    assert (
        main(["shot", "export", str(blend), str(tmp_path / "x"), "--samples", samples, *never]) == 2
    )
    assert f"--samples {samples}: Cycles renders at least 1 sample" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_render_and_hatch_errors_name_the_flag(tmp_path, capsys):
    for flag, value, message in [
        ("--frames", "1", "--frames 1: a fly-through needs at least 2 frames"),
        ("--seed", "-1", "--seed -1 must be >= 0"),
    ]:
        assert main(["shot", "render", str(tmp_path / "r"), flag, value]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    shot = tmp_path / "shot"
    assert main(["shot", "render", str(shot), "--frames", "2", "--size", "16", "16"]) == 0
    before = (shot / "shot.json").read_bytes()
    for flag, value in [("--density", "nan"), ("--density", "0"), ("--width", "1")]:
        assert main(["shot", "hatch", str(shot), "--force", flag, value]) == 2, value
        assert f"error: {flag} {float(value)}" in capsys.readouterr().err
    assert (shot / "shot.json").read_bytes() == before  # the shot's hatched pass is kept


def test_preview_video_makes_each_sheet_as_the_writer_takes_it(tmp_path, monkeypatch):
    import pilot.animation.video as video
    import pilot.scenes.preview as preview

    shot = tmp_path / "shot"
    assert main(["shot", "render", str(shot), "--frames", "3", "--size", "16", "16"]) == 0
    made, seen = [], []
    sheet, write = preview.contact_sheet, video.write_video

    def counted_sheet(*args, **kwargs):
        made.append(1)
        return sheet(*args, **kwargs)

    def watched_write(frames, path, **kwargs):
        assert len(made) == 0  # nothing made before the writer asks

        def drawn():
            for frame in frames:
                seen.append(len(made))  # sheets made when the writer gets this one
                yield frame

        return write(drawn(), path, **kwargs)

    monkeypatch.setattr(preview, "contact_sheet", counted_sheet)
    monkeypatch.setattr(video, "write_video", watched_write)
    assert main(["shot", "preview", str(shot), str(tmp_path / "p.gif")]) == 0
    assert seen == [1, 2, 3]
