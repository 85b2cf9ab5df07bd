"""Shot folders: round trip of a procedural fly-through, and clear errors on broken folders."""

import json

import cv2
import numpy as np
import pytest
import torch

from pilot.locks import LOCK_FILE
from pilot.scenes.geometry import forward_backward_error, frame_flow, reprojection_flow
from pilot.scenes.procedural import fly_through_shot
from pilot.scenes.shot import Shot, ShotWriter, png_bytes


@pytest.fixture(scope="module")
def shot_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shot")
    fly_through_shot(root, seed=3, n_frames=4, width=32, height=24)
    return root


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_round_trip_and_motion(shot_dir):
    shot = Shot(shot_dir)
    assert len(shot) == 4 and (shot.width, shot.height) == (32, 24)
    f1, f2 = shot[1], shot[2]
    assert f1.depth.shape == (1, 24, 24 + 8) and f1.normals.shape == (3, 24, 32)
    assert f1.motion.shape == (4, 24, 32) and f1.image.shape == (3, 24, 32)
    assert f1.hatched.shape == (1, 24, 32) and 0 <= f1.hatched.min() < f1.hatched.max() <= 1
    flow, _ = reprojection_flow(f1.depth[None], f1.K[None], f1.c2w[None], f2.K[None], f2.c2w[None])
    assert torch.allclose(f1.motion[2:], flow[0], atol=1e-3)
    pair = frame_flow(f1, f2)
    assert torch.equal(pair["flow_ij"], flow) and pair["visible_ij"].any()
    err = forward_backward_error(pair["flow_ij"], pair["flow_ji"])[pair["visible_ij"]]
    assert err.max() < 0.05  # metres-long steps between 4 frames: big, but consistent
    assert shot[-1].index == 3
    with pytest.raises(IndexError, match="frame 4"):
        shot[4]


def test_fly_through_shot_writes_each_batch_before_rendering_the_next(tmp_path, monkeypatch):
    """A fly-through is rendered `batch` frames at a time, each written before the next batch
    is rendered (its memory does not grow with the frames; it used to render them all first),
    and its frames are those of the whole render, motion across batches included."""
    from pilot.scenes import procedural

    events, render, add = [], procedural.render, ShotWriter.add

    def spy_render(*args, **kwargs):
        events.append("render")
        return render(*args, **kwargs)

    def spy_add(self, *args, **kwargs):
        events.append("add")
        return add(self, *args, **kwargs)

    monkeypatch.setattr(procedural, "render", spy_render)
    monkeypatch.setattr(ShotWriter, "add", spy_add)
    fly_through_shot(tmp_path / "s", seed=3, n_frames=5, width=16, height=16, batch=2)
    assert events == ["render", "add", "add", "render", "add", "add", "render", "add"]
    whole = procedural.render_fly_through(3, 5, 16, 16, batch=5)
    shot = Shot(tmp_path / "s")
    for k in range(5):
        assert torch.equal(shot[k].motion, whole["motion"][k]), k
        assert torch.equal(shot[k].depth, whole["depth"][k]), k
    with pytest.raises(ValueError, match="batch .* must be >= 1, got 0"):
        procedural.fly_through_batches(0, 3, 16, 16, batch=0)  # before any frame is drawn


def test_frame_reads_only_the_passes_asked_for(shot_dir, tmp_path):
    root = _copy(shot_dir, tmp_path / "s")
    (root / "image" / "000001.png").write_bytes(b"not a png")
    shot = Shot(root)
    depth = shot.frame(1, ["depth"])
    assert depth.normals is None and depth.motion is None and depth.image is None
    assert torch.equal(depth.depth, Shot(shot_dir)[1].depth)
    assert torch.equal(depth.c2w, Shot(shot_dir)[1].c2w) and depth.index == 1
    with pytest.raises(ValueError, match=r"frame 1: unreadable image .*000001\.png"):
        shot[1]
    with pytest.raises(ValueError, match=r"no fog pass \(has \['depth', 'normals'"):
        shot.frame(1, ["depth", "fog"])


def test_png_encoder_round_trips():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    back = cv2.imdecode(np.frombuffer(png_bytes(rgb), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert np.array_equal(back, rgb)
    grey = rgb[:, :, 1]
    back = cv2.imdecode(np.frombuffer(png_bytes(grey), np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.shape == (5, 7) and np.array_equal(back, grey)


def test_hatched_pass_is_the_renders_line_drawing(shot_dir):
    from pilot.scenes.layouts import fly_through
    from pilot.scenes.render import render

    shot = Shot(shot_dir)
    frame = shot.frame(2, ["hatched"])
    assert frame.image is None and frame.depth is None
    scene, _ = fly_through(np.random.default_rng(3))
    drawn = render(scene, frame.K[None], frame.c2w[None], 24, 32)["hatched"][0]
    assert (frame.hatched - drawn.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit rounding


def test_writer_checks_the_8_bit_passes(tmp_path):
    w = ShotWriter(tmp_path, 8, 6)
    K, c2w = np.array([[8.0, 0, 3.5], [0, 8, 2.5], [0, 0, 1]]), np.eye(4)
    with pytest.raises(ValueError, match="frame 0: hatched must be uint8"):
        w.add(K, c2w, np.ones((6, 8)), hatched=np.ones((6, 8)))
    with pytest.raises(ValueError, match=r"frame 0: hatched has shape \(6, 8, 3\)"):
        w.add(K, c2w, np.ones((6, 8)), hatched=np.ones((6, 8, 3), np.uint8))


def test_missing_frame_names_frame_and_file(shot_dir, tmp_path):
    root = _copy(shot_dir, tmp_path / "s")
    (root / "normals" / "000002.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"frame 2: .*normals/000002\.npy"):
        Shot(root)


def test_mismatched_resolution_and_nan_depth(shot_dir, tmp_path):
    root = _copy(shot_dir, tmp_path / "s")
    np.save(root / "depth" / "000001.npy", np.ones((24, 31), np.float32))
    bad = np.ones((24, 32), np.float32)
    bad[3, 4] = np.nan
    np.save(root / "depth" / "000003.npy", bad)
    shot = Shot(root)  # files exist: opening is fine, loading the frames is not
    with pytest.raises(ValueError, match=r"frame 1: .*000001\.npy has shape \(24, 31\)"):
        shot[1]
    with pytest.raises(ValueError, match=r"frame 3: .*000003\.npy has 1 NaN/inf"):
        shot[3]


def test_garbage_depth_file_is_named_without_numpys_pickle_advice(shot_dir, tmp_path):
    root = _copy(shot_dir, tmp_path / "s")
    (root / "depth" / "000003.npy").write_text("garbage\n")
    with pytest.raises(ValueError, match=r"frame 3: unreadable depth file .*000003\.npy") as e:
        Shot(root)[3]
    assert "allow_pickle" not in str(e.value) and "pickled" in str(e.value)


def test_size_must_be_positive(shot_dir, tmp_path):
    with pytest.raises(ValueError, match="size 0x6 must be positive"):
        ShotWriter(tmp_path / "new", 0, 6)
    root = _copy(shot_dir, tmp_path / "s")
    meta = json.loads((root / "shot.json").read_text())
    (root / "shot.json").write_text(json.dumps(dict(meta, width=-32)))
    with pytest.raises(ValueError, match=r"s/shot.json: size -32x24 must be positive"):
        Shot(root)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("c2w", [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "not an invertible"),
        ("K", [[0, 0, 16], [0, 20, 12], [0, 0, 1]], "not an invertible pinhole"),
        ("c2w", [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, float("nan")], [0, 0, 0, 1]], "NaN"),
    ],
)
def test_bad_camera_names_frame(shot_dir, tmp_path, key, value, message):
    root = _copy(shot_dir, tmp_path / "s")
    meta = json.loads((root / "shot.json").read_text())
    meta["frames"][2][key] = value
    (root / "shot.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"shot.json frame 2: .*{message}"):
        Shot(root)


@pytest.mark.parametrize("fps", [0, -1, float("nan"), float("inf")])
def test_fps_must_be_positive_and_finite(shot_dir, tmp_path, fps):
    with pytest.raises(ValueError, match=r"fps=.* must be a positive, finite frame rate"):
        ShotWriter(tmp_path / "new", 8, 6, fps=fps)
    assert not (tmp_path / "new").exists()
    root = _copy(shot_dir, tmp_path / "s")
    meta = json.loads((root / "shot.json").read_text())
    (root / "shot.json").write_text(json.dumps(dict(meta, fps=fps)))
    with pytest.raises(ValueError, match=r"s/shot.json: fps=.* must be a positive"):
        Shot(root)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["frames"][2].pop("K"), "shot.json frame 2: missing key 'K'"),
        (lambda m: m["frames"][1].pop("c2w"), "shot.json frame 1: missing key 'c2w'"),
        (lambda m: m["frames"].__setitem__(3, [1, 2]), "shot.json frame 3: expected an object"),
        (lambda m: m["frames"][0].__setitem__("K", "eye"), "frame 0: K and c2w must be matrices"),
        (lambda m: m["frames"][0]["c2w"].pop(), "frame 0: K must be 3x3 and c2w 4x4"),
        (lambda m: m["frames"][0]["K"][0].pop(), "frame 0: K and c2w must be matrices"),
        (lambda m: m.__setitem__("frames", None), 'shot.json: "frames" must be a non-empty list'),
        (lambda m: m.__setitem__("frames", []), 'shot.json: "frames" must be a non-empty list'),
        (lambda m: m.__setitem__("frames", {"0": 1}), '"frames" must be a non-empty list'),
    ],
)
def test_malformed_frame_entries_name_the_file_and_frame(shot_dir, tmp_path, edit, message):
    root = _copy(shot_dir, tmp_path / "s")
    meta = json.loads((root / "shot.json").read_text())
    edit(meta)
    (root / "shot.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        Shot(root)


def test_writer_rejects_inconsistent_frames(tmp_path):
    w = ShotWriter(tmp_path, 8, 6)
    K, c2w = np.array([[8.0, 0, 3.5], [0, 8, 2.5], [0, 0, 1]]), np.eye(4)
    w.add(K, c2w, np.ones((6, 8)))
    with pytest.raises(ValueError, match="frame 1: depth has shape"):
        w.add(K, c2w, np.ones((6, 7)))
    with pytest.raises(ValueError, match="frame 1: passes"):
        w.add(K, c2w, np.ones((6, 8)), normals=np.zeros((6, 8, 3)))
    assert Shot(w.root if (w.close()) else None)[0].depth.shape == (1, 6, 8)
    with pytest.raises(FileNotFoundError, match="shot.json"):
        Shot(tmp_path / "nothing")


def _write(root, n, depth, normals=True):
    """A small shot of n frames of constant depth (8x6), with or without normals."""
    w = ShotWriter(root, 8, 6)
    K, c2w = np.array([[8.0, 0, 3.5], [0, 8, 2.5], [0, 0, 1]]), np.eye(4)
    for _ in range(n):
        w.add(K, c2w, np.full((6, 8), depth), normals=np.zeros((6, 8, 3)) if normals else None)
    return w


def test_rewriting_a_shot_removes_the_old_one_first(tmp_path):
    """An interrupted re-render is an unfinished shot, never the old shot.json over new frames."""
    root = tmp_path / "s"
    _write(root, 3, 1.0).close()
    (root / "notes.txt").write_text("mine")
    _write(root, 1, 2.0, normals=False)  # interrupted: never closed
    with pytest.raises(FileNotFoundError, match="no shot.json"):
        Shot(root)
    assert sorted(f.name for f in (root / "depth").iterdir()) == ["000000.npy"]
    assert not (root / "normals").exists()
    _write(root, 2, 3.0, normals=False).close()  # the rerun is accepted and finishes
    shot = Shot(root)
    assert len(shot) == 2 and shot.passes == ["depth"] and shot[1].depth.eq(3).all()
    assert sorted(f.name for f in root.iterdir()) == ["depth", "notes.txt", "shot.json"]


def test_a_bad_first_frame_leaves_the_old_shot(tmp_path):
    root = tmp_path / "s"
    _write(root, 3, 1.0).close()
    K, c2w = np.array([[8.0, 0, 3.5], [0, 8, 2.5], [0, 0, 1]]), np.eye(4)
    with pytest.raises(ValueError, match="frame 0: depth has shape"):
        ShotWriter(root, 8, 6).add(K, c2w, np.ones((6, 7)))
    assert len(Shot(root)) == 3


def test_writer_refuses_a_folder_that_holds_no_shot(tmp_path):
    (tmp_path / "mine" / "depth").mkdir(parents=True)
    (tmp_path / "mine" / "depth" / "000000.npy").write_bytes(b"not a frame")
    (tmp_path / "mine" / "depth" / "notes.txt").write_text("mine")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "shot.json").write_text('{"format": "someone-else"}')
    (tmp_path / "file").write_text("")
    for name in ("mine", "other"):
        with pytest.raises(ValueError, match=f"{tmp_path / name} is not empty and holds no shot"):
            ShotWriter(tmp_path / name, 8, 6)
    with pytest.raises(ValueError, match="is a file"):
        ShotWriter(tmp_path / "file", 8, 6)
    assert (tmp_path / "mine" / "depth" / "000000.npy").read_bytes() == b"not a frame"
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty", 1, 1.0).close()
    (tmp_path / "mine" / "depth" / "notes.txt").unlink()  # only frame files: an unfinished shot
    _write(tmp_path / "mine", 1, 1.0).close()
    assert len(Shot(tmp_path / "mine")) == 1


def test_a_shot_is_a_pairs_folder_for_a_conditioner(shot_dir):
    """hatched/ and image/ are matched by name: an artist's own renders train a conditioner."""
    from pilot.data.paired import PairedConfig, PairedImages

    cfg = PairedConfig(
        inputs=("hatched",),
        input_channels=(1,),
        targets=("image",),
        target_channels=(3,),
        image_size=16,
        load_size=16,
    )
    pairs = PairedImages(shot_dir, cfg, augment=False)
    assert len(pairs) == 4
    item = pairs[2]
    assert item["A"].shape == (1, 16, 16) and item["B"].shape == (3, 16, 16)


@pytest.mark.parametrize("far, metres", [(100.0, 1.0), (120.0, 0.01), (333.0, 0.0254)])
def test_blender_background_depth_is_the_shots_far(tmp_path, far, metres):
    """Misses and depths beyond the clip end hold exactly the shot's `far` (a float64
    `far * metres` lies above the float32 depth for these scales: sky taken for a surface)."""
    from pilot.scenes.blender import background_depth, depth_in_metres

    z = np.array([[1e10, np.inf, far * 2], [far * 0.5, 1.0, far]], np.float32)  # Blender units
    depth = depth_in_metres(z, far, metres)
    writer = ShotWriter(tmp_path / "shot", 3, 2, far=background_depth(far, metres))
    writer.add(np.array([[2.0, 0, 1], [0, 2.0, 0.5], [0, 0, 1]]), np.eye(4), depth)
    shot = Shot(writer.close().parent)
    background = shot.frame(0, ["depth"]).depth[0] >= shot.far
    assert background.tolist() == [[True, True, True], [False, False, True]]
    assert depth[1, 0] == pytest.approx(far * 0.5 * metres)


def _random_frame(k):
    """Frame k of a resumable test shot (8x6): its camera and every pass, seeded by k."""
    rng = np.random.default_rng(k)
    K, c2w = np.array([[8.0, 0, 3.5], [0, 8, 2.5], [0, 0, 1]]), np.eye(4)
    c2w[:3, 3] = rng.normal(size=3)
    passes = {
        "depth": rng.uniform(1, 5, (6, 8)),
        "normals": rng.normal(size=(6, 8, 3)),
        "motion": rng.normal(size=(6, 8, 4)),
        "image": rng.integers(0, 256, (6, 8, 3), dtype=np.uint8),
    }
    return K, c2w, passes


def _resumable(root, settings=None, force=False):
    settings = {"seed": 1} if settings is None else settings
    return ShotWriter(root, 8, 6, provenance={"source": "test"}, settings=settings, force=force)


def _add(writer, ks):
    for k in ks:
        K, c2w, passes = _random_frame(k)
        writer.add(K, c2w, source_frame=10 + k, **passes)


def _files(root):
    """Every file under root (hidden ones included, not a live writer's lock) with its bytes."""
    files = (f for f in root.rglob("*") if f.is_file() and f.name != LOCK_FILE)
    return {str(f.relative_to(root)): f.read_bytes() for f in files}


def test_an_interrupted_writer_with_settings_resumes_at_the_first_missing_frame(tmp_path):
    """A kill after 2 frames (the 3rd half written) loses nothing: the rerun keeps frames 0-1
    with their cameras and the result equals an uninterrupted writer's, byte for byte."""
    ref = _resumable(tmp_path / "ref")
    _add(ref, range(5))
    ref.close()
    root = tmp_path / "s"
    _add(_resumable(root), range(2))  # killed before frame 2: never closed
    K, c2w, passes = _random_frame(2)
    np.save(root / "depth" / "000002.npy", passes["depth"])  # frame 2 half written, no record
    (root / "depth" / ".000003.npy.tmp").write_bytes(b"cut short")
    (root / ".shot-resume" / "scratch").mkdir()
    (root / ".shot-resume" / "scratch" / "frame.exr").write_bytes(b"a renderer's leftover")
    kept = {k: v for k, v in _files(root).items() if "000002" not in k and ".tmp" not in k}
    writer = _resumable(root)
    assert len(writer.frames) == 2 and writer.passes == ["depth", "normals", "motion", "image"]
    assert [f["source_frame"] for f in writer.frames] == [10, 11] and not writer.complete
    assert not (root / "depth" / "000002.npy").exists()  # an unfinished frame is redone
    assert not (root / ".shot-resume" / "scratch").exists()  # leftovers removed
    assert {k: v for k, v in _files(root).items() if k in kept} == {
        k: v for k, v in kept.items() if "scratch" not in k
    }  # finished frames untouched
    _add(writer, range(2, 5))
    writer.close()
    assert _files(root) == _files(tmp_path / "ref")  # shot.json included; no hidden files left
    assert json.loads((root / "shot.json").read_text())["settings"] == {
        "seed": 1, "width": 8, "height": 6, "fps": 24.0, "far": 1000.0
    }  # fmt: skip
    assert len(Shot(root)) == 5


def test_a_writer_of_other_settings_is_refused_until_forced(tmp_path):
    root = tmp_path / "s"
    _add(_resumable(root), range(2))  # interrupted
    before = _files(root)
    with pytest.raises(ValueError) as e:
        _resumable(root, {"seed": 2})
    message = str(e.value)
    assert "holds an unfinished shot of other settings (seed: 1 -> 2)" in message
    assert "rerun with its settings to resume it, or start over with --force" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match=r"height: 6 -> 4; width: 8 -> 9"):
        ShotWriter(root, 9, 4, settings={"seed": 1})
    assert _files(root) == before  # refused: nothing changed
    writer = _resumable(root, {"seed": 2}, force=True)
    assert writer.frames == [] and _files(root) == before  # nothing removed before a frame
    _add(writer, [7])
    writer.close()
    shot = Shot(root)
    assert len(shot) == 1 and shot.frames[0]["source_frame"] == 17
    assert shot.meta["settings"]["seed"] == 2


def test_a_finished_shot_of_the_same_settings_has_nothing_to_write(tmp_path):
    root = tmp_path / "s"
    writer = _resumable(root)
    _add(writer, range(3))
    writer.close()
    (root / ".shot-unfinished").touch()  # e.g. a forced rerun killed before its first frame
    before = {k: v for k, v in _files(root).items() if k != ".shot-unfinished"}
    writer = _resumable(root)
    assert writer.complete and len(writer.frames) == 3
    with pytest.raises(ValueError, match="the shot is finished"):
        _add(writer, [3])
    assert writer.close() == root / "shot.json" and _files(root) == before
    with pytest.raises(ValueError, match=r"holds a finished shot of other settings \(seed: 1 -> 3"):
        _resumable(root, {"seed": 3})
    (root / "depth" / "000001.npy").unlink()
    with pytest.raises(ValueError, match=r"finished shot is broken \(frame 1: missing depth"):
        _resumable(root)


def test_shots_without_settings_are_replaced_or_refused(tmp_path, shot_dir):
    """A settings-less writer (`pilot shot render`) replaces what is there, an interrupted
    resumable shot included; a resumable one refuses a shot with no settings to compare."""
    root = _copy(shot_dir, tmp_path / "fly")
    with pytest.raises(ValueError, match="finished shot with no recorded settings .*procedural"):
        _resumable(root)
    _add(_resumable(tmp_path / "s"), range(2))  # an interrupted resumable shot
    fly_through_shot(tmp_path / "s", seed=3, n_frames=4, width=32, height=24)
    assert _files(tmp_path / "s") == _files(shot_dir)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / ".shot-unfinished").touch()  # an older writer's: nothing to resume
    _add(_resumable(tmp_path / "old"), [0])
    assert sorted(_files(tmp_path / "old")) == [
        ".shot-resume/frames/000000.json", ".shot-resume/settings.json", ".shot-unfinished",
        "depth/000000.npy", "image/000000.png", "motion/000000.npy", "normals/000000.npy",
    ]  # fmt: skip


@pytest.mark.parametrize("first", ["pilot.scenes.shot", "pilot.scenes.shot_writer"])
def test_the_writers_names_stay_importable_from_shot(first):
    """The writing side lives in `shot_writer`; every name it took is still importable from
    `pilot.scenes.shot`, as the same object, whichever module a fresh Python imports first."""
    import subprocess
    import sys

    code = (
        f"import {first}; import pilot.scenes.shot as s, pilot.scenes.shot_writer as w; "
        "from pilot.scenes.shot import ShotWriter, write_pass, remove_frames, written_settings; "
        "from pilot.scenes.shot import START_OVER, png_bytes, _save_atomic, _clear; "
        "assert all(getattr(s, n) is getattr(w, n) for n in s.WRITER_NAMES); "
        "assert not hasattr(s, 'no_such_name') and 'torch' not in __import__('sys').modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
