"""LoRAs and embeddings in the A1111 `parameters` text of `pilot generate`'s PNGs, as A1111 writes
them (`<lora:NAME:W>` in the prompt, `Lora hashes`, `TI hashes`), with A1111's hashes."""

import hashlib
import json

import torch
from safetensors.torch import save_file

from pilot.cli import main
from pilot.commands._a1111 import ExtraNetworks, a1111_parameters
from pilot.imageio import read_png_text
from pilot.weights.hashes import embedding_hash, lora_hash
from tests.weights.lora_files import random_lora

FAST = ["--steps", "1", "--width", "16", "--height", "16", "--sampler", "euler"]
PARAMS = {"prompt": "fog", "negative_prompt": "", "steps": 2, "sampler": "euler",
          "schedule": "karras", "cfg": 7.5, "width": 64, "height": 64, "model": "m",
          "clip_skip": 0}  # fmt: skip


def tensor_data_sha256(path) -> str:
    """A1111's `addnet_hash_safetensors`, written out: SHA-256 after the safetensors header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()


def test_a1111_text_names_loras_in_the_prompt_and_both_hash_lists():
    networks = ExtraNetworks(
        loras=(("style", 0.8, "aaaaaaaaaaaa"), ("de,tail", 1.0, "bbbbbbbbbbbb")),
        embeddings=(("InkStyle", "cccccccccccc"),),
    )
    text = a1111_parameters(PARAMS, seed=3, networks=networks)
    assert text.splitlines()[0] == "fog <lora:style:0.8> <lora:de,tail:1>"
    assert text.splitlines()[-1].endswith(
        'Model: m, Lora hashes: "style: aaaaaaaaaaaa, detail: bbbbbbbbbbbb", '
        'TI hashes: "InkStyle: cccccccccccc"'
    )
    assert a1111_parameters(PARAMS, seed=3) == a1111_parameters(PARAMS, 3, ExtraNetworks())
    assert "hashes" not in a1111_parameters(PARAMS, seed=3)
    twice = ExtraNetworks(loras=(("style", 0.8, "aaaaaaaaaaaa"), ("style", -0.5, "aaaaaaaaaaaa")))
    text = a1111_parameters(PARAMS, seed=3, networks=twice)
    assert text.splitlines()[0] == "fog <lora:style:0.8> <lora:style:-0.5>"
    assert text.endswith('Lora hashes: "style: aaaaaaaaaaaa"')  # once, as A1111 lists it


def test_lora_hash_is_a1111s(tmp_path):
    """sd-scripts' stored `sshs_model_hash` when present, else the tensor data's SHA-256 (the
    metadata does not change it); a pickled LoRA: the whole file's."""
    tensors = {"lora_unet_a.lora_down.weight": torch.randn(2, 4)}
    plain, tagged = tmp_path / "plain.safetensors", tmp_path / "tagged.safetensors"
    save_file(tensors, plain)
    save_file(tensors, tagged, metadata={"ss_output_name": "x" * 100})
    assert lora_hash(plain) == lora_hash(tagged) == tensor_data_sha256(plain)
    assert lora_hash(plain) != hashlib.sha256(plain.read_bytes()).hexdigest()
    stored = tmp_path / "stored.safetensors"
    save_file(tensors, stored, metadata={"sshs_model_hash": "f" * 64})
    assert lora_hash(stored) == "f" * 64
    pickled = tmp_path / "old.pt"
    torch.save(tensors, pickled)
    assert lora_hash(pickled) == hashlib.sha256(pickled.read_bytes()).hexdigest()


def test_generated_pngs_name_loras_and_used_embeddings(capsys, tiny_sd, tiny_sd_folder, tmp_path):
    lora = tmp_path / "style.safetensors"
    save_file(random_lora(tiny_sd, "kohya", rank=2, alpha=1.0), lora)
    used, unused = tmp_path / "InkStyle.pt", tmp_path / "zq-unused.pt"
    for path in (used, unused):
        torch.save({"string_to_param": {"*": torch.randn(1, 32)}, "name": path.stem}, path)
    argv = ["generate", "--model", str(tiny_sd_folder), "--prompt", "(inkstyle:1.2) fog", *FAST,
            "--lora", f"{lora}:0.8", "--embedding", str(used), "--embedding", str(unused),
            "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    assert main(argv) == 0
    image = json.loads(capsys.readouterr().out)["images"][0]
    text = read_png_text(image)
    lines = text["parameters"].splitlines()
    assert lines[0] == "(inkstyle:1.2) fog <lora:style:0.8>"
    ti = hashlib.sha256(used.read_bytes()).hexdigest()[:12]
    assert ti == embedding_hash(used)[:12]
    assert f'Lora hashes: "style: {tensor_data_sha256(lora)[:12]}"' in lines[-1]
    assert f'TI hashes: "InkStyle: {ti}"' in lines[-1]  # zq-unused: loaded, not used: not listed
    params = json.loads(text["pilot"])  # pilot's JSON as it was
    assert params["prompt"] == "(inkstyle:1.2) fog" and params["lora"] == [f"{lora}:0.8"]


def test_a1111_text_has_the_model_and_vae_hashes_before_their_names():
    networks = ExtraNetworks(model_hash="0123456789", vae_hash="abcdefabcd")
    text = a1111_parameters({**PARAMS, "vae": "dir/v.safetensors"}, seed=3, networks=networks)
    line = text.splitlines()[-1]
    assert "Size: 64x64, Model hash: 0123456789, Model: m, " in line
    assert line.endswith("VAE hash: abcdefabcd, VAE: v.safetensors")
    assert "hash" not in a1111_parameters(PARAMS, seed=3)  # a folder: none, as in A1111


def test_generated_pngs_link_a_single_file_model_and_vae_by_a1111s_hash(
    capsys, tiny_sd, tiny_sd_folder, tmp_path, monkeypatch
):
    import pilot
    from tests.commands.test_generate_vae_embeddings import write_original_vae

    model, vae = tmp_path / "tiny.safetensors", tmp_path / "own-vae.safetensors"
    model.write_bytes(b"a single-file checkpoint")  # loaded as the folder: tiny models' single
    write_original_vae(tiny_sd.vae, vae)  # files need configs the CLI cannot pass
    load = pilot.load_pipeline
    monkeypatch.setattr(pilot, "load_pipeline", lambda path, **kw: load(tiny_sd_folder, **kw))
    for argv, expected in [
        (["--model", str(model), "--vae", str(vae)], [model, vae]),
        (["--model", str(tiny_sd_folder)], []),  # a diffusers folder: no hash, as in A1111
    ]:
        out = tmp_path / f"out{len(expected)}"
        assert main(["generate", *argv, "--prompt", "fog", *FAST, "--out", str(out)]) == 0
        line = read_png_text(capsys.readouterr().out.split()[0])["parameters"].splitlines()[-1]
        hashes = [hashlib.sha256(p.read_bytes()).hexdigest()[:10] for p in expected]
        if expected:
            assert f"Model hash: {hashes[0]}, Model: tiny, " in line  # A1111's: no suffix
            assert f"VAE hash: {hashes[1]}, VAE: own-vae.safetensors" in line
        else:
            assert "hash" not in line


def test_a_large_checkpoint_gets_a_note_before_its_first_hash(capsys, tmp_path, monkeypatch):
    """Hashing a multi-GB file takes seconds: the first time is said on stderr; cached, not."""
    from pilot.commands import _a1111

    monkeypatch.setattr(_a1111, "HASH_NOTE_BYTES", 10)
    big, small = tmp_path / "big.safetensors", tmp_path / "small.safetensors"
    big.write_bytes(b"x" * 20)
    small.write_bytes(b"x" * 5)
    assert _a1111._short_checkpoint_hash(big) == hashlib.sha256(b"x" * 20).hexdigest()[:10]
    assert "note: hashing big.safetensors (0.0 GiB) once for the A1111" in capsys.readouterr().err
    _a1111._short_checkpoint_hash(big)  # cached now
    _a1111._short_checkpoint_hash(small)  # under the size
    assert capsys.readouterr().err == ""
