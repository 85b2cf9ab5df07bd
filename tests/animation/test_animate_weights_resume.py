"""`pilot animate`'s weights settings (`_animate_checks.weights_settings`): --model, --lora,
--vae and --embedding recorded by resolved path and content (`weights_sha256`), so the same
files named by another path resume and a file replaced under its name is refused, naming it;
folders made when the paths were recorded as given still resume; and the settings are checked
before any model loads."""

import argparse
import copy
import hashlib
import json
import os

import pytest
import torch

import pilot
from pilot.cli import main
from pilot.weights.io import save_state_dict
from tests.commands.test_generate_vae_embeddings import write_original_vae
from tests.weights.lora_files import random_lora


def animate(model, shot, out, *extra):
    return main(["animate", "--model", str(model), "--shot", str(shot.root), "--prompt",
                 "inkstyle corridor", "--steps", "2", "--strength", "0.5", "--cfg", "1",
                 "--out", str(out), *extra])  # fmt: skip


def sha16(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def write_lora(sd, path, seed):
    save_state_dict(random_lora(sd, "kohya", alpha=1.0, seed=seed), path)


def write_embedding(path, seed):
    torch.manual_seed(seed)
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}}, path)


def write_vae(sd, path, shift):
    vae = copy.deepcopy(sd.vae)
    with torch.no_grad():
        vae.decoder.conv_out.bias += shift
    write_original_vae(vae, path)


@pytest.fixture
def weights(animation_sd, model_folder, tmp_path, monkeypatch):
    """A folder holding a link to the model, a LoRA, a VAE file and an embedding, made the
    current folder so the tests can name them by relative paths."""
    (tmp_path / "model").symlink_to(model_folder)
    write_lora(animation_sd, tmp_path / "style.safetensors", seed=1)
    write_vae(animation_sd, tmp_path / "vae.safetensors", shift=0.0)
    write_embedding(tmp_path / "inkstyle.pt", seed=1)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def given(prefix=""):
    return ["--lora", f"{prefix}style.safetensors:0.5", "--vae", f"{prefix}vae.safetensors",
            "--embedding", f"{prefix}inkstyle.pt"]  # fmt: skip


def no_loading(monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pilot, "load_pipeline", load)


def test_weights_are_recorded_by_path_and_content(
    animation_sd, model_folder, small_shot, weights, capsys, monkeypatch
):
    out, run = weights / "film.mp4", weights / "film.run"
    assert animate("model", small_shot, out, "--frames", "0:1", *given()) == 0
    settings = json.loads((run / "settings.json").read_text())
    assert settings["model"] == str(model_folder.resolve())  # a folder: not hashed
    assert settings["lora"] == [f"{weights.resolve() / 'style.safetensors'}:0.5"]
    assert settings["vae"] == str(weights.resolve() / "vae.safetensors")
    assert settings["embedding"] == [str(weights.resolve() / "inkstyle.pt")]
    files = {"lora": "style.safetensors", "vae": "vae.safetensors", "embedding": "inkstyle.pt"}
    assert settings["weights_sha256"] == {
        name: {str(weights.resolve() / file): sha16(weights / file)} for name, file in files.items()
    }
    # the same files by other paths resume
    assert animate("./model", small_shot, out, "--frames", "0:2", *given("./")) == 0
    assert animate(model_folder, small_shot, out, "--frames", "0:2", *given(f"{weights}/")) == 0
    frames = {p.name: p.read_bytes() for p in (run / "frames").iterdir()}
    assert len(frames) == 2
    capsys.readouterr()
    replace = {
        "lora": lambda path: write_lora(animation_sd, path, seed=2),
        "vae": lambda path: write_vae(animation_sd, path, shift=0.3),
        "embedding": lambda path: write_embedding(path, seed=2),
    }
    with monkeypatch.context() as m:
        no_loading(m)  # refused before any model loads
        for name, file in files.items():
            path = weights / file
            before = path.read_bytes()
            replace[name](path)
            assert animate("model", small_shot, out, "--frames", "0:3", *given()) == 2, name
            error = capsys.readouterr().err
            was = settings["weights_sha256"][name][str(path.resolve())]
            assert (
                f"settings ({name}: {file} changed (sha256 {was} -> {sha16(path)})); its" in error
            )
            assert error.count("\n") == 1
            path.write_bytes(before)  # the same content again (a newer time): resumes
    assert animate("model", small_shot, out, "--frames", "0:2", *given()) == 0
    assert {p.name: p.read_bytes() for p in (run / "frames").iterdir()} == frames


def test_settings_are_checked_before_the_model_loads(
    model_folder, small_shot, weights, capsys, monkeypatch
):
    out = weights / "film.mp4"
    assert animate(model_folder, small_shot, out, "--frames", "0:1", *given()) == 0
    capsys.readouterr()
    no_loading(monkeypatch)
    other = given()
    other[1] = "style.safetensors:0.7"
    assert animate(model_folder, small_shot, out, "--frames", "0:2", *other) == 2
    lora = weights.resolve() / "style.safetensors"
    assert f"other settings (lora: ['{lora}:0.5'] -> ['{lora}:0.7'])" in capsys.readouterr().err


def test_folders_with_weights_recorded_as_given_still_resume(
    model_folder, small_shot, weights, capsys
):
    """Made before `weights_sha256`: each path as the user typed it, no content recorded."""
    out, path = weights / "film.mp4", weights / "film.run" / "settings.json"
    assert animate("model", small_shot, out, "--frames", "0:1", *given()) == 0
    settings = json.loads(path.read_text())
    del settings["weights_sha256"]
    settings.update(model="model", lora=["style.safetensors:0.5"], vae="vae.safetensors",
                    embedding=["inkstyle.pt"])  # fmt: skip
    path.write_text(json.dumps(settings))
    assert animate("model", small_shot, out, "--frames", "0:2", *given()) == 0
    assert animate("./model", small_shot, out, "--frames", "0:3", *given("./")) == 0
    capsys.readouterr()
    other = given()
    other[1] = "style.safetensors:2"
    assert animate("model", small_shot, out, "--frames", "0:3", *other) == 2
    lora = weights.resolve() / "style.safetensors"
    assert f"(lora: ['style.safetensors:0.5'] -> ['{lora}:2.0'])" in capsys.readouterr().err
    assert json.loads(path.read_text()) == settings  # left as it was


def test_a_model_file_is_hashed_and_a_name_kept_as_given(tmp_path):
    from pilot.commands._animate_checks import weights_settings

    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights")
    args = argparse.Namespace(model=os.path.relpath(model), lora=[], vae=None, embedding=[])
    assert weights_settings(args) == {
        "model": str(model.resolve()),
        "lora": [],
        "weights_sha256": {"model": {str(model.resolve()): sha16(model)}},
    }
    args.model = "tiny_sd"  # a packaged model (or a repo id): no local path
    assert weights_settings(args) == {"model": "tiny_sd", "lora": [], "weights_sha256": {}}
    concept = tmp_path / "concept"  # a diffusers concept folder: hashed by its embedding file
    concept.mkdir()
    args.embedding = [concept]
    with pytest.raises(ValueError, match=r"^--embedding .*concept: a folder without learned_"):
        weights_settings(args)
    (concept / "learned_embeds.bin").write_bytes(b"vectors")
    assert weights_settings(args)["weights_sha256"] == {
        "embedding": {str(concept.resolve()): sha16(concept / "learned_embeds.bin")}
    }
