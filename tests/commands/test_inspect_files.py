"""`pilot inspect` on a LoRA, an embedding and a standalone VAE says what each is; each given to
another option (`--model`, `--lora`, `--vae`, `--embedding`) is a one-line error naming it."""

import json

import pytest
import torch
from safetensors.torch import save_file

from pilot.cli import main
from tests.commands.test_generate_vae_embeddings import write_original_vae

KOHYA_SD15 = {  # (down, up, alpha) of three layers with SD 1.5's shapes
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": ((4, 768), (320, 4), 2),
    "lora_unet_down_blocks_0_resnets_0_conv1": ((4, 320, 3, 3), (320, 4, 1, 1), 4),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": ((8, 768), (768, 8), 8),
}


def inspect(capsys, path) -> dict:
    assert main(["inspect", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def sd15_lora(path):
    state = {}
    for name, (down, up, alpha) in KOHYA_SD15.items():
        state[f"{name}.lora_down.weight"] = torch.zeros(down)
        state[f"{name}.lora_up.weight"] = torch.zeros(up)
        state[f"{name}.alpha"] = torch.tensor(float(alpha))
    save_file(state, path)
    return path


def test_inspect_a_lora(capsys, tmp_path):
    summary = inspect(capsys, sd15_lora(tmp_path / "style.safetensors"))
    assert summary == {
        "path": str(tmp_path / "style.safetensors"),
        "kind": "lora",
        "format": "kohya-ss / A1111",
        "base": "SD 1.x",
        "cross_attention_width": 768,
        "text_encoder_width": 768,
        "layers": 3,
        "unet_layers": 2,
        "text_encoder_layers": 1,
        "conv_layers": 1,
        "rank": [4, 8],
        "alpha": [2.0, 8.0],
        "use_with": "--lora FILE[:SCALE] or pilot.apply_lora",
    }


def test_inspect_embeddings(capsys, tmp_path):
    pt = tmp_path / "InkStyle.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(2, 768)}}, pt)
    summary = inspect(capsys, pt)
    assert summary["kind"] == "embedding" and summary["format"] == "A1111 .pt"
    assert summary["tokens"] == ["InkStyle", "InkStyle_1"] and summary["token"] == "InkStyle"
    assert (summary["vectors"], summary["width"], summary["base"]) == (2, 768, "SD 1.x")
    concept = tmp_path / "cat-toy"
    concept.mkdir()
    save_file({"<cat-toy>": torch.randn(1024)}, concept / "learned_embeds.safetensors")
    summary = inspect(capsys, concept)
    assert summary["kind"] == "embedding" and summary["format"] == "diffusers"
    assert summary["tokens"] == ["<cat-toy>"] and summary["base"] == "SD 2.x"


def test_inspect_a_vae_file_and_folder(capsys, tiny_sd, tiny_sd_folder, tmp_path):
    path = tmp_path / "vae-ft-mse.safetensors"
    write_original_vae(tiny_sd.vae, path)
    for source, fmt in ((path, "original (CompVis) layout"), (tiny_sd_folder / "vae", "diffusers")):
        summary = inspect(capsys, source)
        assert summary["kind"] == "vae" and summary["format"] == fmt
        assert (summary["latent_channels"], summary["downsample_factor"]) == (4, 2)
        assert summary["vae"]["config"]["block_out_channels"] == [32, 64]


LOOKS = {
    "lora": "it looks like a LoRA, not a full model (apply it with --lora or pilot.apply_lora)",
    "embedding": "it looks like a textual inversion embedding (add it with --embedding or "
    "pilot.load_embedding)",
    "vae": "it looks like an original-layout VAE (swap it in with --vae or load_pipeline(vae=))",
}


@pytest.mark.parametrize(
    ("option", "file", "message"),
    [
        ("--model", "lora", "{f}: holds no UNet weights ({lora})"),
        ("--model", "embedding.pt", "{f}: holds no tensors: {embedding}"),
        ("--model", "embedding", "{f}: holds no UNet weights ({embedding})"),
        ("--model", "vae", "{f}: holds no UNet weights ({vae})"),
        ("--lora", "embedding.pt", "--lora {f}: holds no tensors: {embedding}"),
        (
            "--lora",
            "embedding",
            "--lora {f}: holds no LoRA factors (.lora_down/.lora_up or "
            ".lora_A/.lora_B .weight; {embedding})",
        ),  # fmt: skip
        (
            "--lora",
            "vae",
            "--lora {f}: holds no LoRA factors (.lora_down/.lora_up or "
            ".lora_A/.lora_B .weight; {vae})",
        ),  # fmt: skip
        (
            "--embedding",
            "lora",
            "--embedding {f}: not a textual inversion embedding (no "
            "string_to_param, emb_params or single token; {lora})",
        ),  # fmt: skip
        ("--embedding", "vae", "; {vae})"),
        ("--vae", "lora", "{f}: holds no VAE weights ({lora})"),
        ("--vae", "embedding", "{f}: holds no VAE weights ({embedding})"),
        ("--vae", "embedding.pt", "{f}: holds no tensors: {embedding}"),
    ],
)
def test_a_file_given_to_another_option_is_named(
    capsys, tiny_sd, tiny_sd_folder, tmp_path, option, file, message
):
    files = {
        "lora": sd15_lora(tmp_path / "style.safetensors"),
        "embedding.pt": tmp_path / "ink.pt",
        "embedding": tmp_path / "neg.safetensors",
        "vae": tmp_path / "vae.safetensors",
    }
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}}, files["embedding.pt"])
    save_file({"emb_params": torch.randn(2, 32)}, files["embedding"])
    write_original_vae(tiny_sd.vae, files["vae"])
    model = [] if option == "--model" else ["--model", str(tiny_sd_folder)]
    argv = ["generate", *model, option, str(files[file]), "--prompt", "x", "--steps", "1",
            "--width", "16", "--height", "16", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(f=files[file], **LOOKS) in err and err.count("\n") == 1, err


def test_inspect_a_vae_file_of_no_preset_describes_its_shapes(capsys, tmp_path):
    """The packaged tiny SD's VAE as a file fits no preset: described from its shapes."""
    import pilot

    path = tmp_path / "tiny-vae.safetensors"
    write_original_vae(pilot.load_vae("tiny_sd"), path)
    summary = inspect(capsys, path)
    assert summary["kind"] == "vae" and summary["format"] == "original (CompVis) layout"
    assert (summary["latent_channels"], summary["downsample_factor"]) == (4, 8)
    assert summary["shapes"]["block_out_channels"] == [16, 32, 64, 64]
    assert summary["scaling_factor"] is None and "fits no preset" in summary["note"]
