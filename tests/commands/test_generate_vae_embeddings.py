"""`pilot generate --vae PATH --embedding PATH`: the model with another VAE and textual inversion
tokens, both recorded in the PNGs; a missing or unfitting file is a one-line error."""

import json

import torch

from pilot.cli import main
from pilot.imageio import read_image, read_png_text
from pilot.models.vae import AutoencoderKL
from pilot.weights import sd_original
from pilot.weights.io import save_state_dict
from pilot.weights.sd_keys import VAE_PREFIX

FAST = ["--steps", "2", "--width", "16", "--height", "16", "--sampler", "euler"]


def run(capsys, *argv) -> dict:
    assert main(["generate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def write_original_vae(vae: AutoencoderKL, path) -> None:
    """A VAE-only original-layout file, as vae-ft-mse-840000-ema-pruned.safetensors."""
    blocks = len(vae.cfg.block_out_channels)
    state = sd_original.to_original({"vae": vae.state_dict()}, vae_num_blocks=blocks)
    save_state_dict({k.removeprefix(VAE_PREFIX): v for k, v in state.items()}, path)


def test_vae_and_embedding_change_the_image_and_are_recorded(
    capsys, tiny_sd, tiny_sd_folder, tmp_path
):
    own, other = tmp_path / "own-vae.safetensors", tmp_path / "other-vae.safetensors"
    write_original_vae(tiny_sd.vae, own)
    torch.manual_seed(5)
    write_original_vae(AutoencoderKL(tiny_sd.vae.cfg).eval(), other)
    base = ["--model", str(tiny_sd_folder), "--prompt", "inkstyle fog", *FAST]
    plain = run(capsys, *base, "--out", str(tmp_path / "plain"))["images"][0]
    same = run(capsys, *base, "--vae", str(own), "--out", str(tmp_path / "own"))["images"][0]
    assert torch.equal(read_image(same), read_image(plain))  # the model's own VAE, as a file
    embedding = tmp_path / "InkStyle.pt"
    torch.save({"string_to_param": {"*": torch.randn(2, 32) * 5}, "name": "x"}, embedding)
    extra = ["--vae", str(other), "--embedding", str(embedding), "--out", str(tmp_path / "b")]
    assert main(["generate", *base, *extra, "--json"]) == 0
    captured = capsys.readouterr()
    assert f"--embedding {embedding}: write 'InkStyle' in the prompt" in captured.err
    image = json.loads(captured.out)["images"][0]
    assert not torch.equal(read_image(image), read_image(plain))
    text = read_png_text(image)
    assert "VAE: other-vae.safetensors" in text["parameters"]
    params = json.loads(text["pilot"])
    assert params["vae"] == str(other) and params["embedding"] == [str(embedding)]
    assert not {"vae", "embedding"} & set(json.loads(read_png_text(plain)["pilot"]))


def test_bad_vae_or_embedding_is_one_line(capsys, tiny_sd, tiny_sd_folder, tmp_path):
    from dataclasses import replace

    wide = tmp_path / "sd3-like.safetensors"
    write_original_vae(AutoencoderKL(replace(tiny_sd.vae.cfg, latent_channels=16)), wide)
    sd2_embedding = tmp_path / "sd2-style.pt"
    torch.save({"string_to_param": {"*": torch.randn(1, 1024)}}, sd2_embedding)
    cases = [
        (["--vae", str(tmp_path / "nope.safetensors")], "nope.safetensors: no such file"),
        (["--embedding", str(tmp_path / "nope.pt")], "--embedding"),
        (["--vae", str(wide)], f"{wide}: a VAE whose latents do not fit {tiny_sd_folder}: 16 "
         "channels at 1/2 of the image size, where the model's are 4 channels at 1/2"),
        (["--embedding", str(sd2_embedding)], f"{sd2_embedding}: a 1024-d embedding (SD 2.x), "
         "but this model's text encoder takes 32-d vectors"),
    ]  # fmt: skip
    for extra, message in cases:
        argv = ["generate", "--model", str(tiny_sd_folder), "--prompt", "x", *FAST, *extra,
                "--out", str(tmp_path / "out")]  # fmt: skip
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
