"""`pilot animate` speed flags, --batch and --vae-batch: the same frames as the default run, not
settings a resume must match (--vae-upcast is one), bad ones refused before any work."""

import json

import pytest

from pilot.cli import main
from pilot.imageio import read_image
from pilot.models.vae import AutoencoderKL


def animate(model, shot, out, *extra):
    return main(["animate", "--model", str(model), "--shot", str(shot.root), "--prompt",
                 "0: a corridor | 5: a cave", "--steps", "3", "--strength", "1.0", "--occlusion",
                 "ignore", "--cfg", "2", "--seed", "11", "--frames", "0:3", "--out", str(out),
                 *extra])  # fmt: skip


def test_speed_flags_and_batch_keep_the_frames(
    model_folder,  # noqa: F811 (fixtures imported above)
    controlnet_folder,  # noqa: F811
    small_shot,
    tmp_path,
    capsys,
    monkeypatch,
):
    control = ["--controlnet", f"depth={controlnet_folder}"]
    assert animate(model_folder, small_shot, tmp_path / "a.mp4", *control) == 0
    decoded = []  # images per VAE decode call
    plain = AutoencoderKL.decode
    monkeypatch.setattr(
        AutoencoderKL, "decode", lambda vae, z: decoded.append(len(z)) or plain(vae, z)
    )
    assert animate(model_folder, small_shot, tmp_path / "b.mp4", *control, "--channels-last",
                   "--prepack", "--batch", "3", "--vae-batch", "2", "--vae-upcast",
                   "always") == 0  # fmt: skip
    assert decoded == [2, 1]  # the batch of 3 frames, decoded by slices of 2
    for k in range(3):
        a, b = (read_image(tmp_path / f"{r}.run" / "frames" / f"{k:06d}.png") for r in "ab")
        assert (a - b).abs().max() <= 1 / 255 + 1e-6, k  # 8-bit frames of float-equal images
    settings = json.loads((tmp_path / "b.run" / "settings.json").read_text())
    assert settings["vae_upcast"] == "always"
    assert not {"batch", "vae_batch", "prepack"} & set(settings)
    assert "vae_upcast" not in json.loads((tmp_path / "a.run" / "settings.json").read_text())
    capsys.readouterr()
    argv = [*control, "--channels-last", "--batch", "2", "--vae-batch", "1", "--json"]
    assert animate(model_folder, small_shot, tmp_path / "a.mp4", *argv) == 0  # resumes
    assert json.loads(capsys.readouterr().out)["rendered_now"] == 0
    assert animate(model_folder, small_shot, tmp_path / "a.mp4", *control, "--vae-upcast",
                   "never") == 2  # fmt: skip
    assert "(vae_upcast: 'auto' -> 'never')" in capsys.readouterr().err


def test_cuda_graphs_off_cuda_is_refused_before_any_work(
    model_folder,  # noqa: F811
    small_shot,
    tmp_path,
    capsys,
):
    out = tmp_path / "c.mp4"
    assert animate(model_folder, small_shot, out, "--cuda-graphs", "--device", "cpu") == 2
    assert "--cuda-graphs needs a CUDA device, but the models would run on cpu" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "c.run").exists()
    assert animate(model_folder, small_shot, out, "--batch", "0") == 2
    assert "--batch must be >= 1, got 0" in capsys.readouterr().err
    assert animate(model_folder, small_shot, out, "--vae-batch", "0") == 2
    assert "--vae-batch must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "c.run").exists()


def test_preview_decoder_is_a_run_setting(
    model_folder,  # noqa: F811
    small_shot,
    tmp_path,
    capsys,
    monkeypatch,
):
    """--preview-decoder: every frame decoded by it (the VAE only encodes), recorded in
    settings.json, so a resume without it is refused."""
    from pilot.models.preview import PreviewDecoder
    from tests.commands.test_generate import save_preview

    preview = save_preview(tmp_path / "preview", upsamples=0)  # the test VAE's factor 1
    monkeypatch.setattr(AutoencoderKL, "decode", lambda *a: pytest.fail("the VAE decoded"))
    calls = []
    decode = PreviewDecoder.decode
    monkeypatch.setattr(PreviewDecoder, "decode", lambda m, z: calls.append(len(z)) or decode(m, z))
    out = tmp_path / "d.mp4"
    assert animate(model_folder, small_shot, out, "--preview-decoder", str(preview)) == 0
    assert calls == [1, 1, 1]
    settings = json.loads((tmp_path / "d.run" / "settings.json").read_text())
    assert settings["preview_decoder"] == str(preview)
    capsys.readouterr()
    assert animate(model_folder, small_shot, out) == 2
    assert "preview_decoder" in capsys.readouterr().err
