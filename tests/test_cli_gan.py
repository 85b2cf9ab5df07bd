"""Smoke tests of `pilot train`, `pilot walk` and `pilot conditioner apply`."""

import json
import os
import shutil
import tracemalloc

import cv2
import numpy as np
import pytest
from PIL import Image

from pilot.cli import main
from pilot.models.dcgan import DCGAN_PRESETS, DCGANGenerator
from pilot.models.pix2pix import Pix2PixConfig, UNetGenerator
from pilot.weights.gan import export_generator
from tests.conftest import plant_temps


@pytest.fixture
def dcgan_file(tmp_path):
    path = tmp_path / "g.safetensors"
    export_generator("dcgan", DCGANGenerator(DCGAN_PRESETS["tiny"]), path)
    return path


@pytest.fixture
def pix2pix_file(tmp_path):
    cfg = Pix2PixConfig(
        image_size=64,
        in_channels=1,
        head_names=("texture", "fog"),
        head_channels=(3, 1),
        base_channels=4,
        max_mult=2,
    )
    path = tmp_path / "c.safetensors"
    export_generator("pix2pix", UNetGenerator(cfg), path)
    return path


def test_walk_writes_gif_and_mp4(tmp_path, dcgan_file, capsys):
    out = tmp_path / "walk.gif"
    cut = plant_temps(out, tmp_path / "walk.mp4", tmp_path / "other.gif")  # kill -9's
    args = ["walk", "--checkpoint", str(dcgan_file), "--frames", "6", "--grid", "2"]
    assert main([*args, "--out", str(out), "--scale", "2"]) == 0
    assert not cut[0].exists() and cut[1].exists() and cut[2].exists()  # its own output's
    with Image.open(out) as gif:
        assert gif.n_frames == 6 and gif.size == (128, 128)  # 2 x 2 cells of 32 px, scaled x2
    assert main([*args, "--out", str(tmp_path / "walk.mp4")]) == 0
    assert (tmp_path / "walk.mp4").stat().st_size > 0 and not cut[1].exists()


def test_walk_errors_are_clear(tmp_path, pix2pix_file, dcgan_file, capsys):
    assert main(["walk", "--checkpoint", str(tmp_path / "none.ckpt")]) == 2
    assert "none.ckpt" in capsys.readouterr().err
    assert main(["walk", "--checkpoint", str(pix2pix_file)]) == 2
    assert "holds a pix2pix generator, expected dcgan" in capsys.readouterr().err
    assert main(["walk", "--checkpoint", str(dcgan_file), "--frames", "1"]) == 2
    assert "--frames 1: must be at least 2" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--points", "1"], "--points 1: must be at least 2"),
        (["--fps", "-2"], "--fps -2.0: must be a positive frame rate"),
        (["--seed", str(2**64)], f"--seed {2**64}: the walk uses seeds"),
        (["--scale", "200", "--grid", "2"], "--grid 2 x 32 px x --scale 200: "),
        (["--scale", "300", "--out", "w.gif"], "9600x9600 px are too large (at most 8190"),
        (["--out", "folder.mp4"], "folder.mp4: is a folder, not a video file"),
        (["--out", "file.txt/w.gif"], "file.txt is a file, not a folder"),
    ],
)
def test_walk_names_the_flag_at_fault(tmp_path, monkeypatch, dcgan_file, capsys, flags, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "file.txt").touch()
    assert main(["walk", "--checkpoint", str(dcgan_file), "--frames", "2", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder.mp4", "g.safetensors"]


def test_walk_makes_frames_as_the_writer_takes_them(tmp_path, dcgan_file, capsys):
    """Memory does not grow with --frames: 100 frames of 256 px hold 19.7 MB as uint8."""
    out = tmp_path / "walk.mp4"
    args = ["walk", "--checkpoint", str(dcgan_file), "--frames", "100", "--scale", "8"]
    tracemalloc.start()
    try:
        assert main([*args, "--out", str(out)]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8e6
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 100 and capture.get(cv2.CAP_PROP_FPS) == 24


def test_conditioner_apply_over_a_shot(tmp_path, pix2pix_file):
    shot = tmp_path / "shot" / "hatched"
    shot.mkdir(parents=True)
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (50, 70), dtype=np.uint8)
        Image.fromarray(pixels, "L").save(shot / f"{i:04d}.png")
    out, frames, heads = tmp_path / "out.gif", tmp_path / "frames", tmp_path / "heads"
    cut = plant_temps(out, frames / "0001.png", heads / "fog" / "0002.png",
                      heads / "texture" / "0000.png")  # a kill -9 cut these writes # fmt: skip
    args = ["conditioner", "apply", "--checkpoint", str(pix2pix_file), "--shot", str(shot.parent)]
    args += ["--out", str(out), "--frames-dir", str(frames), "--heads-dir", str(heads)]
    assert main(args) == 0
    assert not any(p.exists() for p in cut)
    with Image.open(out) as gif:
        assert gif.n_frames == 3 and gif.size == (64 * 3, 64)  # input | texture | fog
    assert len(list(frames.glob("*.png"))) == 3
    with Image.open(frames / "0001.png") as row, Image.open(heads / "fog" / "0001.png") as fog:
        assert fog.mode == "L" and fog.size == (64, 64)
        assert np.array_equal(np.asarray(fog), np.asarray(row)[:, 128:, 0])  # the fog panel
    with Image.open(heads / "texture" / "0002.png") as texture:
        assert texture.mode == "RGB" and texture.size == (64, 64)


def test_conditioner_apply_over_a_rendered_shot(tmp_path, pix2pix_file, capsys):
    shot = tmp_path / "shot"
    args = ["shot", "render", str(shot), "--frames", "2", "--size", "32", "32", "--fps", "5"]
    assert main(args) == 0
    out = tmp_path / "out.gif"
    args = ["conditioner", "apply", "--checkpoint", str(pix2pix_file), "--shot", str(shot)]
    assert main([*args, "--out", str(out)]) == 0
    with Image.open(out) as gif:
        assert gif.n_frames == 2 and gif.size == (64 * 3, 64)
        assert gif.info["duration"] == 200  # the shot's 5 fps (not the default 12)
    shutil.rmtree(shot / "hatched")  # a shot without the pass, as Blender exports write
    meta = json.loads((shot / "shot.json").read_text())
    meta["passes"].remove("hatched")
    (shot / "shot.json").write_text(json.dumps(meta))
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no hatched pass (passes ['depth', 'normals', 'motion', 'image'])" in err


def test_conditioner_apply_reads_the_shots_frames_and_refuses_an_unfinished_one(
    tmp_path, pix2pix_file, capsys
):
    shot = tmp_path / "shot"
    assert main(["shot", "render", str(shot), "--frames", "3", "--size", "32", "32"]) == 0
    shutil.copy(shot / "hatched" / "000001.png", shot / "hatched" / "0001.png")  # not a frame
    out = tmp_path / "out.gif"
    args = ["conditioner", "apply", "--checkpoint", str(pix2pix_file), "--shot", str(shot)]
    assert main([*args, "--out", str(out)]) == 0
    with Image.open(out) as gif:
        assert gif.n_frames == 3  # shot.json's frames, once each
    (shot / ".shot-unfinished").touch()  # an interrupted re-render
    (shot / "shot.json").unlink()
    assert main([*args, "--out", str(out)]) == 2
    assert "shot.json: no shot.json (not a shot folder, or unfinished)" in capsys.readouterr().err


def test_conditioner_apply_refuses_another_shots_heads(tmp_path, pix2pix_file, capsys):
    shot = tmp_path / "shot"
    assert main(["shot", "render", str(shot), "--frames", "3", "--size", "32", "32"]) == 0
    heads = tmp_path / "heads"
    args = ["conditioner", "apply", "--checkpoint", str(pix2pix_file), "--shot", str(shot)]
    args += ["--out", str(tmp_path / "out.gif"), "--heads-dir", str(heads)]
    assert main(args) == 0
    assert main(args) == 0  # the same shot again: its own frames are replaced
    assert main(["shot", "render", str(shot), "--frames", "2", "--size", "32", "32"]) == 0
    assert main(args) == 2  # a shorter shot would leave frame 2 of the other
    err = capsys.readouterr().err
    assert f"{heads / 'texture'} holds 1 file(s) this run does not write (000002.png)" in err
    assert len(list((heads / "fog").iterdir())) == 3  # nothing deleted, nothing written


def test_conditioner_apply_errors(tmp_path, pix2pix_file, dcgan_file, capsys):
    (tmp_path / "empty").mkdir()
    args = ["conditioner", "apply", "--checkpoint", str(pix2pix_file), "--shot"]
    assert main([*args, str(tmp_path / "empty")]) == 2
    assert "no images" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "missing")]) == 2
    assert "no such shot folder" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "empty"), "--size", "0"]) == 2
    assert "--size=0 must be a multiple" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "empty"), "--out", "x.avi"]) == 2  # before any frame
    assert "unknown video suffix '.avi'" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "empty"), "--fps", "-3"]) == 2
    assert "fps=-3.0 must be a positive frame rate" in capsys.readouterr().err
    bad = ["conditioner", "apply", "--checkpoint", str(dcgan_file), "--shot", str(tmp_path)]
    assert main(bad) == 2
    assert "expected pix2pix" in capsys.readouterr().err


def test_conditioner_apply_refuses_a_multi_input_model(tmp_path, capsys):
    cfg = Pix2PixConfig(image_size=64, in_channels=2, base_channels=4, max_mult=2)
    path = tmp_path / "two_in.safetensors"
    export_generator("pix2pix", UNetGenerator(cfg), path)
    Image.fromarray(np.zeros((64, 64), np.uint8), "L").save(tmp_path / "0001.png")
    args = ["conditioner", "apply", "--checkpoint", str(path), "--shot", str(tmp_path)]
    assert main([*args, "--out", str(tmp_path / "out.gif")]) == 2
    err = capsys.readouterr().err
    assert "two_in.safetensors: the model takes 2 input channels" in err
    assert "reads one image (1 or 3 channels) per frame" in err


def test_conditioner_apply_checks_frame_sizes_before_running(tmp_path, pix2pix_file, capsys):
    shot = tmp_path / "odd"
    shot.mkdir()
    for name, (h, w) in {"a.png": (70, 100), "b.png": (91, 37), "c.png": (30, 1000)}.items():
        Image.fromarray(np.zeros((h, w), np.uint8), "L").save(shot / name)
    frames = tmp_path / "frames"
    args = ["conditioner", "apply", "--checkpoint", str(pix2pix_file), "--shot", str(shot)]
    args += ["--out", str(tmp_path / "odd.mp4"), "--frames-dir", str(frames)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{shot / 'a.png'} runs at 64x64 and {shot / 'b.png'} at 64x128" in err
    assert "--square" in err
    assert not frames.exists()  # no frame was computed
    assert main([*args, "--square"]) == 0


def test_train_fast_dev_run(tmp_path, recwarn):
    pytest.importorskip("lightning")
    from tests.train.helpers import dcgan_config, write_yaml

    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path))
    assert main(["train", "dcgan", "--config", str(cfg), "--fast-dev-run", "--threads", "1"]) == 0
    assert not (tmp_path / "timelapse").exists()  # a config check writes nothing
    quiet = ("LightningCLI's args parameter", "Using ModelCheckpoint with manual", "`isinstance")
    noise = [str(w.message)[:80] for w in recwarn if str(w.message).startswith(quiet)]
    assert not noise, noise  # Lightning's noise, filtered by train.cli.QUIET


def test_train_refuses_to_start_over_a_run(tmp_path, capsys):
    pytest.importorskip("lightning")
    from tests.train.helpers import dcgan_config, write_yaml

    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=2))
    assert main(["train", "dcgan", "--config", str(cfg), "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "dcgan", "--config", str(cfg), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert f"pilot train: error: an earlier run is there ({tmp_path / 'ckpt'} holds" in err
    assert "resume it with --ckpt_path last" in err
    other = tmp_path / "other"  # the config fixes both dirpaths: the advice names them
    args = ["train", "dcgan", "--config", str(cfg), "--trainer.default_root_dir", str(other)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "run elsewhere with --trainer.default_root_dir DIR --checkpoint.dirpath DIR/ckpt "
        "--timelapse.dirpath DIR/timelapse (the config sets checkpoint.dirpath and "
        "timelapse.dirpath" in err
    )
    assert not other.exists()  # refused before the config copy and the logs are written


def test_train_wandb_online_without_login_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("lightning")
    pytest.importorskip("wandb")
    from tests.train.helpers import dcgan_config, write_yaml

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=2))
    args = ["train", "dcgan", "--config", str(cfg), "--threads", "1", "--wandb", "online"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pilot train: error: wandb='online' needs W&B credentials" in err
    assert "`wandb login`" in err and "--wandb offline" in err and "Traceback" not in err
    assert not (tmp_path / "wandb").exists()


def test_train_bad_system_and_threads(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "gan"])
    assert main(["train", "dcgan", "--threads", "0"]) == 2
    assert "--threads=0" in capsys.readouterr().err


def test_heads_of_other_widths_are_written_as_float_arrays(tmp_path):
    from pilot.commands.conditioner import write_head

    head = np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 4, 2)
    path = write_head(head, tmp_path / "uv" / "0001.v2")
    assert path == tmp_path / "uv" / "0001.v2.npy" and np.array_equal(np.load(path), head)
    assert write_head(head[:, :, :1], tmp_path / "g" / "0001").suffix == ".png"


def test_wide_frames_keep_their_aspect(tmp_path, pix2pix_file):
    from pilot.commands.conditioner import run_size

    assert run_size(1080, 1920, 128, 128) == (128, 256)  # 16:9 -> 2:1, not a square
    assert run_size(1920, 1080, 256, 128) == (512, 256)  # portrait, short side 256
    assert run_size(50, 70, 64, 64) == (64, 64)  # 1.4:1 rounds to a square
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (90, 160), dtype=np.uint8)
        Image.fromarray(pixels, "L").save(tmp_path / f"{i:04d}.png")
    out = tmp_path / "wide.gif"
    args = ["conditioner", "apply", "--checkpoint", str(pix2pix_file), "--shot", str(tmp_path)]
    assert main([*args, "--out", str(out)]) == 0
    with Image.open(out) as gif:
        assert gif.size == (128 * 3, 64)  # input | texture | fog, each 64 x 128
    assert main([*args, "--out", str(out), "--square"]) == 0  # as square training pairs load
    with Image.open(out) as gif:
        assert gif.size == (64 * 3, 64)


@pytest.fixture
def painter_file(tmp_path):
    """A one-head RGB -> RGB conditioner, as experiments/own_pairs_pix2pix.yaml trains."""
    cfg = Pix2PixConfig(image_size=64, in_channels=3, base_channels=4, max_mult=2)
    path = tmp_path / "painter.safetensors"
    export_generator("pix2pix", UNetGenerator(cfg), path)
    return path


def _drawings(folder):
    """An artist's folder: several sizes and aspects, transparency, .JPG, a Mac's hidden files."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 50, 3), np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 256, (90, 40), np.uint8), "L").save(folder / "Tall.JPG")
    Image.fromarray(np.zeros((20, 20, 4), np.uint8), "RGBA").save(folder / "café.png")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "._wide.png").write_bytes(b"\0\5\26\7")
    return {"wide.png": (50, 30), "Tall.png": (40, 90), "café.png": (20, 20)}


def test_conditioner_apply_to_a_folder_of_drawings(tmp_path, painter_file, capsys):
    sizes = _drawings(tmp_path / "drawings")
    out = tmp_path / "paintings"
    args = ["conditioner", "apply", "--checkpoint", str(painter_file)]
    args += ["--shot", str(tmp_path / "drawings"), "--out", str(out)]
    assert main(args) == 0  # sizes of every aspect in one run: no video to share a size
    assert "wrote 3 image(s)" in capsys.readouterr().out
    for name, size in sizes.items():
        with Image.open(out / name) as image:
            assert image.size == size and image.mode == "RGB"  # named and sized as the input
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(sizes)
    made = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    later = (out / "wide.png").stat().st_mtime + 60
    os.utime(tmp_path / "drawings" / "wide.png", (later, later))  # the artist redraws one
    (out / "Tall.png").unlink()  # and a kill lost one, mid-write
    (out / ".Tall.a1b2c3d4.png").write_bytes(b"half a png")
    cut = plant_temps(out / ".pilot-conditioner.json")
    assert main(args) == 0
    assert not cut[0].exists()
    assert "wrote 2 image(s) to" in capsys.readouterr().out  # the rest kept
    assert (out / "café.png").stat().st_mtime_ns == made["café.png"]
    assert (out / "Tall.png").is_file() and not (out / ".Tall.a1b2c3d4.png").exists()
    assert main([*args, "--size", "128"]) == 2  # other settings: refused, not mixed
    assert "was made with other settings (size: 64 -> 128)" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other / "wide.png")  # not ours
    assert main([*args[:-1], str(other)]) == 2
    err = capsys.readouterr().err
    assert f"--out {other} holds 1 file(s) this run would overwrite ({other / 'wide.png'})" in err
    with Image.open(other / "wide.png") as image:
        assert image.size == (8, 8)
    (tmp_path / "drawings" / "zz.png").write_bytes(b"half a drawing")
    assert main([*args[:-1], str(tmp_path / "new")]) == 2  # before any is painted
    assert "zz.png: not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_conditioner_outputs_never_overwrite_the_inputs(tmp_path, painter_file, capsys):
    _drawings(tmp_path / "drawings")
    before = {p.name: p.read_bytes() for p in (tmp_path / "drawings").iterdir()}
    base = ["conditioner", "apply", "--checkpoint", str(painter_file), "--square"]
    args = [*base, "--shot", str(tmp_path / "drawings")]
    drawings = tmp_path / "drawings"
    for extra in (["--out", str(drawings)], ["--out", str(tmp_path / "x.gif"), "--frames-dir",
                                             str(drawings)]):  # fmt: skip
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert f"{drawings} is an input folder ({drawings}): its files would be overwritten" in err
    assert {p.name: p.read_bytes() for p in drawings.iterdir()} == before
    shot = tmp_path / "shot"
    assert main(["shot", "render", str(shot), "--frames", "2", "--size", "32", "32"]) == 0
    colour = (shot / "image" / "000000.png").read_bytes()
    heads = ["--shot", str(shot), "--out", str(tmp_path / "y.gif"), "--heads-dir", str(shot)]
    assert main([*base, *heads]) == 2  # the head "image" is the shot's colour pass
    assert f"--heads-dir {shot / 'image'} is an input folder" in capsys.readouterr().err
    assert (shot / "image" / "000000.png").read_bytes() == colour


def test_conditioner_apply_over_a_video(tmp_path, pix2pix_file, capsys):
    from pilot.animation.video import write_video

    frames = [np.full((40, 72, 3), 40 * k, np.uint8) for k in range(3)]
    clip = write_video(frames, tmp_path / "clip.mp4", fps=5)
    args = ["conditioner", "apply", "--checkpoint", str(pix2pix_file), "--shot", str(clip)]
    assert main([*args, "--out", str(tmp_path / "out.gif")]) == 0
    with Image.open(tmp_path / "out.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (128 * 3, 64)  # 72x40 runs at 128x64
        assert gif.info["duration"] == 200  # the video's 5 fps
    assert main([*args, "--out", str(tmp_path / "frames")]) == 0
    names = sorted(p.name for p in (tmp_path / "frames" / "fog").iterdir())
    assert names == ["000000.png", "000001.png", "000002.png"]
    with Image.open(tmp_path / "frames" / "texture" / "000001.png") as texture:
        assert texture.size == (72, 40)  # the video's own size
    assert main([*args, "--out", str(clip)]) == 2
    assert f"--out {clip} is the input video ({clip}): it would be overwritten" in (
        capsys.readouterr().err
    )
    (tmp_path / "notes.txt").write_text("not a video")
    bad = ["conditioner", "apply", "--checkpoint", str(pix2pix_file), "--out", "x.gif"]
    assert main([*bad, "--shot", str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt: OpenCV cannot open it (not a video OpenCV reads" in capsys.readouterr().err


def test_conditioner_video_takes_each_frame_as_it_is_made(tmp_path, pix2pix_file, monkeypatch):
    """A video --out is written as the frames are made: never all in memory."""
    import pilot.animation.video as video
    import pilot.commands.conditioner as conditioner

    shot = tmp_path / "drawings"
    shot.mkdir()
    for i in range(5):
        Image.fromarray(np.full((40, 40), 40 * i, np.uint8), "L").save(shot / f"{i:02d}.png")
    made, predict, write_mp4 = [], conditioner.predict, video.write_mp4
    monkeypatch.setattr(conditioner, "predict", lambda *a: made.append(1) or predict(*a))

    def check_order(frames, path, *, fps):
        def taken():
            for k, frame in enumerate(frames):
                assert len(made) == k + 1, f"frame {k} taken after {len(made)} were made"
                yield frame

        return write_mp4(taken(), path, fps=fps)

    monkeypatch.setattr(video, "write_mp4", check_order)
    out = tmp_path / "out.mp4"
    args = ["conditioner", "apply", "--checkpoint", str(pix2pix_file), "--shot", str(shot)]
    assert main([*args, "--out", str(out), "--frames-dir", str(tmp_path / "rows")]) == 0
    assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT) == 5
    assert len(list((tmp_path / "rows").glob("*.png"))) == 5
