"""Original single files through pilot.load_*: what the file does not store, and its key names.

Files are written by `sd_original.to_original` from pilot's own models with seeded weights.
"""

from dataclasses import replace

import pytest
import torch

import pilot
from pilot.models.clip import CLIP_PRESETS, CLIPTextModel
from pilot.models.unet import UNET_PRESETS, UNet
from pilot.models.vae import VAE_PRESETS, AutoencoderKL
from pilot.weights import sd_original
from pilot.weights.io import WeightsError, save_state_dict

# Shapes of no preset, with head counts and norm groups other than the guesses (8 or 64-wide
# heads, 32 groups), as in the shipped tiny_sd.
ODD_UNET = replace(
    UNET_PRESETS["tiny"], block_out_channels=(16, 32), num_heads=4, norm_num_groups=8
)
ODD_VAE = replace(VAE_PRESETS["tiny"], block_out_channels=(16, 32), norm_num_groups=8)
ODD_TEXT = replace(CLIP_PRESETS["tiny"], hidden_size=48, num_heads=4)
# The shipped CLIP tokenizer (49408 tokens) overflows the tiny text encoder's 1000 embeddings;
# the packaged tiny SD's (578) fits.
TOKENIZER = "tiny_sd"


def models(unet_cfg=ODD_UNET, vae_cfg=ODD_VAE, text_cfg=ODD_TEXT) -> dict:
    torch.manual_seed(0)
    return {
        "unet": UNet(unet_cfg).eval(),
        "vae": AutoencoderKL(vae_cfg).eval(),
        "text_encoder": CLIPTextModel(text_cfg).eval(),
    }


def write(models: dict, path, **extra) -> dict:
    state = sd_original.to_original(
        {name: m.state_dict() for name, m in models.items()},
        unet_config=models["unet"].cfg,
        vae_num_blocks=len(models["vae"].cfg.block_out_channels),
    )
    state.update(extra)
    save_state_dict(state, path)
    return state


def assert_weights_equal(model, reference) -> None:
    ours, ref = model.state_dict(), reference.state_dict()
    assert sorted(ours) == sorted(ref)
    assert all(torch.equal(ours[k], v) for k, v in ref.items())


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    path = tmp_path_factory.mktemp("odd") / "odd.safetensors"
    ref = models()
    write(ref, path)
    return path, ref


@pytest.mark.parametrize(
    ("load", "unstored"),
    [
        (pilot.load_unet, r"attention heads \(num_heads\) and GroupNorm groups"),
        (pilot.load_vae, r"GroupNorm groups \(norm_num_groups\) and latent scaling factor"),
        (pilot.load_text_encoder, r"attention heads \(num_heads\) are not stored"),
    ],
    ids=["unet", "vae", "text_encoder"],
)
def test_shapes_of_no_preset_need_a_config(odd, load, unstored):
    with pytest.raises(WeightsError, match=rf"odd.safetensors: .* fit no preset.*{unstored}"):
        load(odd[0])


def test_shapes_of_no_preset_load_with_configs(odd):
    path, ref = odd
    with pytest.raises(WeightsError, match="pass config= to load_unet, or unet_config="):
        pilot.load_pipeline(path)
    configs = dict(unet_config=ODD_UNET, vae_config=ODD_VAE, text_config=ODD_TEXT)
    sd = pilot.load_pipeline(path, **configs, tokenizer=TOKENIZER)
    for name, model in ref.items():
        assert getattr(sd, name).cfg == model.cfg
        assert_weights_equal(getattr(sd, name), model)
    assert pilot.load_unet(path, config=ODD_UNET).cfg == ODD_UNET
    with pytest.raises(WeightsError, match=r"save it once as a folder.*pilot.save_pipeline"):
        pilot.load_pipeline(path)
    folder = pilot.save_pipeline(sd, path.parent / "odd")  # what the pilot commands load
    assert pilot.load_pipeline(folder).unet.cfg == ODD_UNET


def test_presets_and_their_input_variants_need_no_config(tmp_path):
    """The tiny presets detect as themselves; a 9-channel (inpainting) UNet takes tiny's heads."""
    inpaint = replace(UNET_PRESETS["tiny"], in_channels=9)
    ref = models(inpaint, VAE_PRESETS["tiny"], CLIP_PRESETS["tiny"])
    write(ref, tmp_path / "tiny.safetensors")
    sd = pilot.load_pipeline(tmp_path / "tiny.safetensors", tokenizer=TOKENIZER)
    assert sd.unet.cfg == inpaint
    assert (sd.vae.cfg, sd.text_encoder.cfg) == (VAE_PRESETS["tiny"], CLIP_PRESETS["tiny"])
    assert_weights_equal(sd.unet, ref["unet"])


@pytest.mark.parametrize(
    ("name", "text_format"), [("sd15", "clip"), ("sd21", "open_clip"), ("tiny", "clip")]
)
def test_real_presets_detect_without_config(name, text_format):
    from pilot.weights.loaders import _detect_config

    with torch.device("meta"):  # shapes only
        ref = models(UNET_PRESETS[name], VAE_PRESETS[name], CLIP_PRESETS[name])
    state = sd_original.to_original(
        {n: m.state_dict() for n, m in ref.items()},
        unet_config=ref["unet"].cfg,
        vae_num_blocks=len(ref["vae"].cfg.block_out_channels),
        text_format=text_format,
    )
    assert _detect_config("unet", state, "f") == UNET_PRESETS[name]
    assert _detect_config("vae", state, "f").to_diffusers() == {
        **VAE_PRESETS[name].to_diffusers(),
        "sample_size": _detect_config("vae", state, "f").sample_size,
    }
    assert _detect_config("text_encoder", state, "f") == CLIP_PRESETS[name]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A tiny-preset original file as a dict: tests change a key and write it again."""
    ref = models(UNET_PRESETS["tiny"], VAE_PRESETS["tiny"], CLIP_PRESETS["tiny"])
    return write(ref, tmp_path_factory.mktemp("tiny") / "tiny.safetensors")


@pytest.mark.parametrize(
    "key",
    [
        "model.diffusion_model.output_blocks.0.0.emb_layers.1.bias",
        "first_stage_model.decoder.mid.block_1.norm1.bias",
        "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc1.weight",
    ],
)
def test_missing_keys_are_named_as_in_the_file(tiny_file, tmp_path, key):
    state = {k: v for k, v in tiny_file.items() if k != key}
    save_state_dict(state, tmp_path / "missing.safetensors")
    with pytest.raises(WeightsError) as info:
        pilot.load_pipeline(tmp_path / "missing.safetensors")
    message = str(info.value)
    assert f"missing 1 keys: {key}." in message
    assert "original CompVis/Stability single-file" in message and "diffusers" not in message


def test_unexpected_and_misshaped_keys_are_named_as_in_the_file(tiny_file, tmp_path):
    extra = "first_stage_model.decoder.up.0.block.9.conv1.weight"
    save_state_dict({**tiny_file, extra: torch.zeros(1)}, tmp_path / "extra.safetensors")
    with pytest.raises(WeightsError, match=rf"unexpected 1 keys: {extra}\."):
        pilot.load_vae(tmp_path / "extra.safetensors")
    key = "model.diffusion_model.out.2.weight"
    state = {**tiny_file, key: tiny_file[key][:, :, :1, :1].contiguous()}
    save_state_dict(state, tmp_path / "shape.safetensors")
    with pytest.raises(WeightsError, match=rf"mismatches: {key}: expected \(4, 32, 3, 3\)"):
        pilot.load_unet(tmp_path / "shape.safetensors")


def test_open_clip_keys_are_named_as_in_the_file(tmp_path):
    text = CLIPTextModel(CLIP_PRESETS["tiny"]).state_dict()
    state = sd_original.to_original({"text_encoder": text}, text_format="open_clip")
    key = "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"
    state[key] = state[key][:, :8].contiguous()
    save_state_dict(state, tmp_path / "sd2.safetensors")
    with pytest.raises(WeightsError, match=rf"mismatches: {key}: expected \(32, 32\)"):
        pilot.load_text_encoder(tmp_path / "sd2.safetensors")


def test_keys_outside_the_components_are_reported(tiny_file, tmp_path):
    lora = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
        "something_else": torch.zeros(2),
        "alphas_cumprod": torch.ones(3),  # ldm's schedule buffers are expected, not reported
        "model_ema.decay": torch.tensor(0.9999),
    }
    save_state_dict({**tiny_file, **lora}, tmp_path / "lora.safetensors")
    with pytest.warns(UserWarning, match=r"3 keys outside the SD components") as record:
        sd = pilot.load_pipeline(tmp_path / "lora.safetensors", tokenizer=TOKENIZER)
    assert len(record) == 1
    message = str(record[0].message)
    assert "lora_unet_down_blocks_0_attentions_0_proj_in.alpha" in message
    path = tmp_path / "lora.safetensors"
    assert (
        "2 of them are LoRA weights, not merged: apply them with `--lora lora.safetensors` or "
        f"pilot.apply_lora(sd, {str(path)!r})." in message
    )
    assert "alphas_cumprod" not in message and "model_ema" not in message
    assert sd.unet.cfg == UNET_PRESETS["tiny"]
    with pytest.warns(UserWarning, match="LoRA weights, not merged: apply them with"):
        pilot.load_unet(tmp_path / "lora.safetensors")
