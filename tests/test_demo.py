"""`pilot demo` at reduced size on tiny random weights: the output folder, resume, refusals and
clear errors for missing weights; a CLI smoke run."""

import json
import math

import cv2
import pytest
import torch

from pilot.cli import main
from pilot.demo import OUTPUTS, DemoConfig, run_demo, weight_folders
from pilot.imageio import read_image
from tests.conftest import plant_temps

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = DemoConfig(frames=3, size=32, steps=2, rows=2)
SMALL_ARGS = ["--frames", "3", "--size", "32", "--steps", "2", "--rows", "2", "--no-progress"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random tiny SD + depth ControlNet in the demo's layout: pipeline/, controlnet_depth/."""
    from pilot.models.controlnet import ControlNet, ControlNetConfig
    from pilot.weights.save import save_controlnet, save_pipeline
    from tests.conftest import make_tiny_sd

    root = tmp_path_factory.mktemp("weights")
    sd = make_tiny_sd(seed=1)
    save_pipeline(sd, root / "pipeline")
    factor = sd.vae.cfg.downsample_factor  # the hint encoder must downscale by the same factor
    hint = (8,) * (int(math.log2(factor)) + 1)
    net = ControlNet(ControlNetConfig(unet=sd.unet.cfg, hint_channels=hint)).eval()
    save_controlnet(net, root / "controlnet_depth")
    return root


def frame_count(path) -> int:
    capture = cv2.VideoCapture(str(path))
    n = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    return n


def test_demo_writes_the_folder_and_resumes(weights, tmp_path):
    out, lines = tmp_path / "demo", []
    metrics = run_demo(out, weights=weights, config=SMALL, progress=False, log=lines.append)
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert frame_count(out / "demo.mp4") == 3 and frame_count(out / "side_by_side.mp4") == 3
    sheet = read_image(out / "contact_sheet.png")
    assert sheet.shape[0] == 3 and sheet.shape[1] > 2 * 128  # two upscaled rows + labels
    for name in ("independent", "feedback"):
        assert sorted(p.name for p in (out / name / "frames").iterdir()) == [
            f"{k:06d}.png" for k in range(3)
        ]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    warp = saved["warp_error"]
    assert set(warp) == {"independent", "feedback", "ratio"}
    assert all(math.isfinite(v) and v >= 0 for v in warp.values())
    assert warp["ratio"] == pytest.approx(warp["feedback"] / warp["independent"])
    assert len(saved["per_frame"]["feedback"]["warp_error"]) == 2
    assert saved["rendered_now"] == 6 and saved["settings"]["frames"] == 3
    assert saved["weights"] == str(weights.resolve()) and saved["seconds"]["total"] > 0
    assert lines[0].startswith(f"warp error: feedback {warp['feedback']:.4f} vs independent")
    assert str(out) in lines[0]

    before = {p: p.read_bytes() for p in out.glob("*/frames/*.png")}
    again = run_demo(out, weights=weights, config=SMALL, progress=False, log=None)
    assert again["rendered_now"] == 0 and again["warp_error"] == metrics["warp_error"]
    assert before == {p: p.read_bytes() for p in out.glob("*/frames/*.png")}


def test_batch_does_not_change_the_demo(weights, tmp_path):
    """Independent frames sampled 3 at a time = one by one (8-bit frames); a folder made with
    one batch size resumes with another (batch is not a pixel setting)."""
    from dataclasses import replace

    one = run_demo(tmp_path / "one", weights=weights, config=replace(SMALL, batch=1),
                   progress=False, log=None)  # fmt: skip
    three = run_demo(tmp_path / "three", weights=weights, config=replace(SMALL, batch=3),
                     progress=False, log=None)  # fmt: skip
    assert (one["batch"], three["batch"]) == (1, 3) and "batch" not in three["settings"]
    for name in ("independent", "feedback"):
        for k in range(3):
            a, b = (read_image(tmp_path / d / name / "frames" / f"{k:06d}.png")
                    for d in ("one", "three"))  # fmt: skip
            assert (a - b).abs().max() <= 1 / 255 + 1e-6, (name, k)
    assert three["warp_error"]["ratio"] == pytest.approx(one["warp_error"]["ratio"], abs=0.02)
    again = run_demo(tmp_path / "three", weights=weights, config=SMALL, progress=False, log=None)
    assert again["rendered_now"] == 0


def test_demo_uses_each_frame_as_it_reads_it_back(weights, tmp_path, monkeypatch):
    """The metrics and both videos take the passes' frames one at a time as they are read back
    from disk: frame k is scored and written before frame k + 1 is read, so the demo's memory
    does not grow with --frames (it used to read both passes whole into tensors first)."""
    from pilot.animation import video
    from pilot.animation.inputs import FrameStore
    from pilot.animation.metrics import TemporalMetrics

    events = []
    read, add, write_mp4 = FrameStore.read, TemporalMetrics.add, video.write_mp4

    def spy_read(self, k):
        events.append(("read", self.root.name, k))
        return read(self, k)

    def spy_add(self, frame):
        events.append(("scored", "metrics", self.frames))
        add(self, frame)

    def spy_write(frames, path, **kwargs):
        def drawn():
            for i, frame in enumerate(frames):
                events.append(("written", path.name, i))
                yield frame

        return write_mp4(drawn(), path, **kwargs)

    monkeypatch.setattr(FrameStore, "read", spy_read)
    monkeypatch.setattr(TemporalMetrics, "add", spy_add)
    monkeypatch.setattr(video, "write_mp4", spy_write)
    run_demo(tmp_path / "demo", weights=weights, config=SMALL, progress=False, log=None)
    last_read, used = {}, {"metrics": [], "demo.mp4": [], "side_by_side.mp4": []}
    for kind, name, k in events:
        if kind == "read":
            last_read[name] = k
        else:  # each pass's last frame read is the one being used
            used[name].append((k, dict(last_read)))
    both = ("independent", "feedback")
    assert used["metrics"] == [(k, dict.fromkeys(both, k)) for k in range(3) for _ in both]
    assert used["side_by_side.mp4"] == [(k, dict.fromkeys(both, k)) for k in range(3)]
    assert [(k, read["feedback"]) for k, read in used["demo.mp4"]] == [(k, k) for k in range(3)]


def test_demo_refuses_other_settings_and_foreign_folders(weights, tmp_path):
    out = tmp_path / "demo"
    run_demo(out, weights=weights, config=SMALL, progress=False, log=None)
    other = DemoConfig(frames=3, size=32, steps=3, rows=2)
    with pytest.raises(ValueError, match=r"other settings \(steps: 2 -> 3\)"):
        run_demo(out, weights=weights, config=other, progress=False, log=None)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty and holds no demo"):
        run_demo(mine, weights=weights, config=SMALL, progress=False, log=None)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_missing_weights_name_the_folder_and_the_way_to_train(tmp_path, monkeypatch):
    partial = tmp_path / "partial"
    (partial / "controlnet_depth").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        weight_folders(partial)
    assert str(err.value).startswith(f"{partial / 'pipeline'}: no such folder")
    assert "experiments/tiny_sd/train.sh" in str(err.value)
    monkeypatch.setattr("pilot.demo.packaged_weights", lambda: tmp_path / "no-assets")
    with pytest.raises(FileNotFoundError, match="no packaged tiny SD weights") as err:
        weight_folders()
    assert str(tmp_path / "no-assets" / "pipeline") in str(err.value)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"size": 4}, "size must be >= 8"),
        ({"frames": 1}, "frames must be >= 2"),
        ({"strength": 0.0}, "need 0 < strength <= fresh_strength <= 1"),
        ({"strength": 0.8, "fresh_strength": 0.7}, "strength 0.8, fresh_strength 0.7"),
        ({"depth_per": "scene"}, "depth_per='scene'"),
        ({"batch": 0}, "batch must be >= 1"),
    ],
)
def test_bad_settings_are_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        DemoConfig(**changes)


def test_size_follows_the_pipelines_vae_factor(weights, tmp_path, capsys):
    # The test weights' VAE downsamples 2x: 34 px frames are valid for them (not for SD's 8).
    config = DemoConfig(frames=2, size=34, steps=2, rows=1)
    metrics = run_demo(tmp_path / "demo", weights=weights, config=config, progress=False, log=None)
    assert metrics["settings"]["size"] == 34
    assert read_image(tmp_path / "demo" / "feedback" / "frames" / "000001.png").shape[-1] == 34
    # the packaged tiny SD's VAE downsamples 8x: refused before anything is written
    assert main(["demo", "--out", str(tmp_path / "tiny"), "--size", "36", "--no-progress"]) == 2
    pipeline = weight_folders()[0]
    assert (
        f"size 36 is not a multiple of 8, the VAE factor of {pipeline}" in capsys.readouterr().err
    )
    assert not (tmp_path / "tiny").exists()


def test_cli_smoke(weights, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["demo", "--out", str(out), "--weights", str(weights), *SMALL_ARGS]) == 0
    printed = capsys.readouterr().out
    assert "warp error: feedback" in printed and str(out) in printed
    assert (out / "demo.mp4").is_file()
    cut = plant_temps(out / "demo.mp4", out / "metrics.json", out / "feedback/frames/000001.png")
    assert main(["demo", "--out", str(out), "--weights", str(weights), *SMALL_ARGS, "--json"]) == 0
    assert not any(p.exists() for p in cut)  # a kill -9's, cleared by the rerun
    assert json.loads(capsys.readouterr().out)["rendered_now"] == 0
    assert main(["demo", "--out", str(tmp_path / "x"), "--weights", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'pipeline'}: " in err or f"{tmp_path / 'pipeline'}," in err
    assert main(["demo", "--out", str(tmp_path / "y"), "--sampler", "nope", *SMALL_ARGS]) == 2
    assert "unknown sampler 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert torch.get_num_threads() == 1  # the one_thread fixture's setting survives the runs


@pytest.mark.parametrize(
    "device, message",
    [
        ("foo", "--device 'foo' is not a torch device (cpu, cuda, cuda:N, ...)"),
        ("cuda:1", "--device cuda:1: torch sees no CUDA device here"),
    ],
)
def test_the_device_is_picked_as_generate_and_animate_pick_it(
    weights, tmp_path, capsys, monkeypatch, device, message
):
    """`resolve_device`: a device this machine lacks is a one-line error before any work."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--weights", str(weights), *SMALL_ARGS,
                 "--device", device]) == 2  # fmt: skip
    assert f"pilot demo: error: {message}" in capsys.readouterr().err
    assert not out.exists()
