"""`pilot animate --vae PATH --embedding PATH`: recorded in settings.json when given, so a re-run
with another VAE or other embeddings is refused as other settings are, and folders made without
them resume as before."""

import json

import torch

from pilot.cli import main
from pilot.imageio import read_image
from pilot.weights.save import save_pipeline
from tests.animation.conftest import make_animation_sd


def animate(model, shot, out, *extra):
    return main(["animate", "--model", str(model), "--shot", str(shot.root), "--prompt",
                 "inkstyle corridor", "--steps", "2", "--strength", "0.5", "--cfg", "1",
                 "--frames", "0:2", "--out", str(out), *extra])  # fmt: skip


def test_vae_and_embeddings_are_run_settings(model_folder, small_shot, tmp_path, capsys):
    other = make_animation_sd()
    with torch.no_grad():
        other.vae.decoder.conv_out.bias += 0.3  # brighter: still the identity VAE's latents
    vae = save_pipeline(other, tmp_path / "other") / "vae"
    embedding = tmp_path / "inkstyle.pt"
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}}, embedding)
    extra = ["--vae", str(vae), "--embedding", str(embedding)]

    assert animate(model_folder, small_shot, tmp_path / "a.mp4") == 0
    assert not {"vae", "embedding"} & set(
        json.loads((tmp_path / "a.run/settings.json").read_text())
    )
    assert animate(model_folder, small_shot, tmp_path / "b.mp4", *extra) == 0
    settings = json.loads((tmp_path / "b.run" / "settings.json").read_text())
    assert settings["vae"] == str(vae) and settings["embedding"] == [str(embedding)]
    frame = "frames/000000.png"
    assert not torch.equal(
        read_image(tmp_path / "a.run" / frame), read_image(tmp_path / "b.run" / frame)
    )
    capsys.readouterr()
    assert animate(model_folder, small_shot, tmp_path / "b.mp4", *extra) == 0  # resumes
    for changed, message in [
        (extra[2:], f"vae: {str(vae)!r} -> None"),
        (extra[:2], f"embedding: {[str(embedding)]!r} -> []"),
    ]:
        assert animate(model_folder, small_shot, tmp_path / "b.mp4", *changed) == 2
        assert message in capsys.readouterr().err
    assert animate(model_folder, small_shot, tmp_path / "a.mp4", *extra) == 2
    assert "was made with other settings (embedding: [] -> [" in capsys.readouterr().err
