"""`pilot animate`: a controlled run with resume after a crash (byte-identical frames),
video-in mode, and clear errors for bad input that never cost a finished frame."""

import json

import pytest

from pilot.animation.feedback import FeedbackSampler
from pilot.cli import main
from pilot.imageio import write_png
from tests.animation.conftest import make_controlnet


def animate(model, shot, out, *extra):
    return main(["animate", "--model", str(model), "--shot", str(shot.root), "--prompt",
                 "0: a corridor | 5: a cave", "--steps", "4", "--strength", "0:(0.6), 5:(0.4)",
                 "--cfg", "2", "--noise", "warped", "--seed", "11", "--out", str(out),
                 *extra])  # fmt: skip


def test_resume_after_a_crash_is_byte_identical(
    model_folder, controlnet_folder, small_shot, tmp_path, monkeypatch, capsys
):
    control = ["--controlnet", f"depth={controlnet_folder}", "--control-scale", "0.8"]
    assert animate(model_folder, small_shot, tmp_path / "a.mp4", *control, "--frames", "0:4") == 0
    render = FeedbackSampler.render

    def crash_at_2(self, k, flow=None):
        if k == 2:
            raise RuntimeError("killed")
        return render(self, k, flow)

    monkeypatch.setattr(FeedbackSampler, "render", crash_at_2)
    with pytest.raises(RuntimeError, match="killed"):
        animate(model_folder, small_shot, tmp_path / "b.mp4", *control, "--frames", "0:4")
    monkeypatch.setattr(FeedbackSampler, "render", render)
    frames_b = tmp_path / "b.run" / "frames"
    assert sorted(p.name for p in frames_b.iterdir()) == [f"{k:06d}.png" for k in range(2)]
    capsys.readouterr()
    assert animate(model_folder, small_shot, tmp_path / "b.mp4", *control, "--frames", "0:4",
                   "--json") == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["rendered_now"] == 2 and metrics["frames"] == 4
    for k in range(4):
        a = (tmp_path / "a.run" / "frames" / f"{k:06d}.png").read_bytes()
        assert a == (frames_b / f"{k:06d}.png").read_bytes(), f"frame {k} differs after resume"
    for k in range(4):
        noise = f"state/{k:06d}.npy"
        assert (tmp_path / "a.run" / noise).read_bytes() == (
            tmp_path / "b.run" / noise
        ).read_bytes()
    assert (tmp_path / "b.mp4").stat().st_size > 0 and (tmp_path / "b.gif").stat().st_size > 0
    saved = json.loads((tmp_path / "b.run" / "metrics.json").read_text())
    assert saved["warp_error"] == metrics["warp_error"] and len(saved["warp_error_per_frame"]) == 3
    assert saved["gif"] == str(tmp_path / "b.gif")


def test_video_in_mode(model_folder, small_shot, tmp_path, capsys):
    video = tmp_path / "video"
    for k in range(4):
        write_png(video / f"{k:04d}.png", small_shot[k].image)
    argv = ["animate", "--model", str(model_folder), "--video", str(video), "--prompt", "ink",
            "--steps", "4", "--source-mix", "0.3", "--cfg", "1", "--out", str(tmp_path / "v.mp4"),
            "--json"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["flow"] == "estimated" and metrics["frames"] == 4
    assert len(list((tmp_path / "v.run" / "frames").glob("*.png"))) == 4


def test_a_frame_with_no_step_runs_with_controlnets(
    model_folder, controlnet_folder, small_shot, tmp_path
):
    # strength 0.4 of 2 steps is no step: frame 1 is frame 0 warped, through the VAE
    extra = ["--controlnet", f"depth={controlnet_folder}", "--steps", "2", "--strength", "0.4",
             "--occlusion", "ignore", "--frames", "0:2"]  # fmt: skip
    assert animate(model_folder, small_shot, tmp_path / "a.mp4", *extra) == 0
    assert len(list((tmp_path / "a.run" / "frames").glob("*.png"))) == 2


def test_frame_sizes_follow_the_models_vae_factor(model_folder, tmp_path, capsys):
    import torch

    video = tmp_path / "video"
    for k in range(2):
        write_png(video / f"{k:04d}.png", torch.rand(3, 12, 20))  # not multiples of SD's 8
    argv = ["animate", "--video", str(video), "--prompt", "ink", "--steps", "2", "--cfg", "1",
            "--out", str(tmp_path / "v.mp4")]  # fmt: skip
    assert main([*argv, "--model", str(model_folder)]) == 0  # its VAE has factor 1
    assert len(list((tmp_path / "v.run" / "frames").glob("*.png"))) == 2
    capsys.readouterr()
    tiny = [*argv, "--model", "tiny_sd", "--run", str(tmp_path / "t.run")]  # factor 8
    assert main(tiny) == 2
    err = capsys.readouterr().err
    assert f"video {video} width 20 is not a multiple of 8, the VAE factor of tiny_sd" in err
    assert "pass --width/--height to resize it" in err
    assert main([*tiny, "--width", "16", "--height", "12"]) == 2
    assert (
        "--height 12 is not a multiple of 8, the VAE factor of tiny_sd" in capsys.readouterr().err
    )
    assert not (tmp_path / "t.run" / "frames").exists()


@pytest.fixture(scope="module")
def sd2_controlnet(animation_sd, tmp_path_factory):
    return make_controlnet(animation_sd.unet, tmp_path_factory.mktemp("cn2") / "wide",
                           cross_attention_dim=64)  # fmt: skip


def test_bad_input_is_a_clear_error_and_keeps_finished_frames(
    model_folder, controlnet_folder, sd2_controlnet, small_shot, tmp_path, capsys
):
    out = tmp_path / "film.mp4"
    assert animate(model_folder, small_shot, out, "--frames", "0:2", "--cfg", "1") == 0
    finished = {p.name: p.read_bytes() for p in (tmp_path / "film.run" / "frames").iterdir()}
    capsys.readouterr()
    video = tmp_path / "video"
    write_png(video / "0000.png", small_shot[0].image)
    write_png(video / "0001.png", small_shot[1].image)
    cases = [
        (["--strength", "0:(0.5), 10:(0.4 +)"], "at character 19:"),
        (["--frames", "20:30"], "--frames '20:30' is outside the source's frames 0:24"),
        (["--controlnet", f"depth={sd2_controlnet}", "--run", str(tmp_path / "new.run")],
         "cross_attention_dim: ControlNet 64 vs model 32"),  # a new folder: no settings refusal
        (["--cfg", "3"], "was made with other settings (cfg: '1' -> '3')"),
        (["--controlnet", f"canny{controlnet_folder}"], "expected KIND=PATH"),
    ]  # fmt: skip
    for extra, message in cases:
        assert animate(model_folder, small_shot, out, "--cfg", "1", *extra) == 2, extra
        assert message in capsys.readouterr().err
    assert not (tmp_path / "new.run" / "settings.json").exists()  # a failed load records nothing
    argv = ["animate", "--model", str(model_folder), "--video", str(video), "--prompt", "x",
            "--controlnet", f"depth={controlnet_folder}", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    assert "depth control needs a depth pass; video" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in (tmp_path / "film.run" / "frames").iterdir()}
    assert after == finished


def test_sd1_controlnet_on_sd2_model_is_named():
    from pilot.diffusion.control import check_controlnet_family
    from pilot.models.controlnet import CONTROLNET_PRESETS
    from pilot.models.unet import UNET_PRESETS

    with pytest.raises(ValueError, match=r"an SD 1.x ControlNet on an SD 2.x model\): "
                       "cross_attention_dim: ControlNet 768 vs model 1024"):  # fmt: skip
        check_controlnet_family(UNET_PRESETS["sd21"], CONTROLNET_PRESETS["sd15"], "cn.safetensors")
    check_controlnet_family(UNET_PRESETS["sd15"], CONTROLNET_PRESETS["sd15"], "cn.safetensors")


def test_a_run_folder_another_process_writes_is_refused_at_once(
    model_folder, small_shot, tmp_path, capsys
):
    import os

    from pilot.locks import LOCK_FILE, folder_lock

    out, run = tmp_path / "film.mp4", tmp_path / "film.run"
    with folder_lock(run):  # another `pilot animate` of the same run folder
        assert animate(model_folder, small_shot, out, "--frames", "0:2", "--cfg", "1") == 2
        assert capsys.readouterr().err == (
            f"pilot animate: error: {run} is in use by another pilot process (pid {os.getpid()})"
            "; wait for it or stop it\n"
        )
        assert [p.name for p in run.iterdir()] == [LOCK_FILE] and not out.exists()
    assert animate(model_folder, small_shot, out, "--frames", "0:2", "--cfg", "1") == 0
    assert not (run / LOCK_FILE).exists()  # released when the run ended


def test_a_lora_is_a_setting_of_the_run(animation_sd, model_folder, small_shot, tmp_path, capsys):
    from pilot.weights.io import save_state_dict
    from tests.weights.lora_files import random_lora

    lora = tmp_path / "style.safetensors"
    save_state_dict(random_lora(animation_sd, "kohya", alpha=1.0), lora)
    out, extra = tmp_path / "film.mp4", ["--frames", "0:1", "--cfg", "1", "--steps", "2"]
    assert animate(model_folder, small_shot, out, *extra, "--lora", f"{lora}:0.5") == 0
    settings = json.loads((tmp_path / "film.run" / "settings.json").read_text())
    assert settings["lora"] == [f"{lora}:0.5"]
    capsys.readouterr()
    for other, now in ([f"{lora}:0.7"], [f"{lora}:0.7"]), ([], []):  # []: the default
        argv = [a for entry in other for a in ("--lora", entry)]
        assert animate(model_folder, small_shot, out, *extra, *argv) == 2
        assert f"made with other settings (lora: ['{lora}:0.5'] -> {now!r})" in (
            capsys.readouterr().err
        )
    assert animate(model_folder, small_shot, out, *extra, "--lora", f"{lora}:0.5") == 0
