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
    sd = pilot.load_pipeline(path, unet_config=ODD_UNET, vae_config=ODD_VAE, text_config=ODD_TEXT)
    for name, model in ref.items():
        assert getattr(sd, name).cfg == model.cfg
        assert_weights_equal(getattr(sd, name), model)
    assert pilot.load_unet(path, config=ODD_UNET).cfg == ODD_UNET


def test_presets_and_their_input_variants_need_no_config(tmp_path):
    """The tiny presets detect as themselves; a 9-channel (inpainting) UNet takes tiny's heads."""
    inpaint = replace(UNET_PRESETS["tiny"], in_channels=9)
    ref = models(inpaint, VAE_PRESETS["tiny"], CLIP_PRESETS["tiny"])
    write(ref, tmp_path / "tiny.safetensors")
    sd = pilot.load_pipeline(tmp_path / "tiny.safetensors")
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
