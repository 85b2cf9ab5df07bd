"""`load_pipeline(path, vae=...)`: another VAE from an original-layout file or a diffusers folder,
in place of the checkpoint's own, refused in one line when its latents do not fit."""

from dataclasses import replace

import pytest
import torch

import pilot
from pilot.models.vae import VAE_PRESETS, AutoencoderKL
from pilot.weights import sd_original
from pilot.weights.io import WeightsError, save_state_dict
from pilot.weights.save import save_pipeline
from pilot.weights.sd_keys import VAE_PREFIX
from tests.conftest import make_tiny_sd, tiny_text_config

# The tiny text encoder with CLIP's 49408 tokens: a single file does not store its head count.
TEXT = {"text_config": tiny_text_config()}


def assert_weights_equal(model, reference) -> None:
    ours, ref = model.state_dict(), reference.state_dict()
    assert sorted(ours) == sorted(ref)
    assert all(torch.equal(ours[k], v) for k, v in ref.items())


def write_original_vae(vae: AutoencoderKL, path) -> None:
    """A VAE-only file in the original layout, as vae-ft-mse-840000-ema-pruned: `encoder.*`,
    `decoder.*`, `quant_conv.*` with no `first_stage_model.` prefix."""
    blocks = len(vae.cfg.block_out_channels)
    state = sd_original.to_original({"vae": vae.state_dict()}, vae_num_blocks=blocks)
    if path.suffix == ".ckpt":  # the .ckpt release nests it under state_dict
        torch.save({"state_dict": {k.removeprefix(VAE_PREFIX): v for k, v in state.items()}}, path)
    else:
        save_state_dict({k.removeprefix(VAE_PREFIX): v for k, v in state.items()}, path)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """Two tiny pipelines of other weights, as diffusers folders and one as a single file."""
    root = tmp_path_factory.mktemp("vae-swap")
    a, b = make_tiny_sd(seed=1), make_tiny_sd(seed=2)
    single = root / "a.safetensors"
    state = sd_original.to_original(
        {name: getattr(a, name).state_dict() for name in ("unet", "vae", "text_encoder")},
        unet_config=a.unet.cfg,
        vae_num_blocks=len(a.vae.cfg.block_out_channels),
    )
    save_state_dict(state, single)
    return {"a": a, "b": b, "a_dir": save_pipeline(a, root / "a"),
            "b_dir": save_pipeline(b, root / "b"), "a_file": single}  # fmt: skip


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_vae_from_an_original_file_replaces_the_models(pipelines, tmp_path, suffix):
    vae_file = tmp_path / f"vae-ft-mse{suffix}"
    write_original_vae(pipelines["b"].vae, vae_file)
    sd = pilot.load_pipeline(pipelines["a_dir"], vae=vae_file)
    assert_weights_equal(sd.vae, pipelines["b"].vae)
    assert_weights_equal(sd.unet, pipelines["a"].unet)
    assert sd.scaling_factor == pipelines["b"].vae.cfg.scaling_factor
    # round trip: the model's own VAE, written in the original layout, is the VAE it had
    write_original_vae(pipelines["a"].vae, own := tmp_path / f"own{suffix}")
    assert_weights_equal(pilot.load_pipeline(pipelines["a_dir"], vae=own).vae, pipelines["a"].vae)


@pytest.mark.parametrize("vae", ["b_dir", "b_vae_dir"])
def test_vae_from_a_diffusers_folder_on_a_single_file(pipelines, vae):
    folder = pipelines["b_dir"] / "vae" if vae == "b_vae_dir" else pipelines["b_dir"]
    sd = pilot.load_pipeline(pipelines["a_file"], vae=folder, dtype=torch.float64, **TEXT)
    assert_weights_equal(sd.vae, pipelines["b"].vae.double())
    assert next(sd.vae.parameters()).dtype == torch.float64
    assert_weights_equal(sd.text_encoder, pipelines["a"].text_encoder.double())
    pipelines["b"].vae.float()


def test_a_checkpoint_without_a_vae_loads_with_one(pipelines, tmp_path):
    bare = tmp_path / "no-vae.safetensors"
    state = pilot.weights.io.load_state_dict(pipelines["a_file"])
    save_state_dict({k: v for k, v in state.items() if not k.startswith(VAE_PREFIX)}, bare)
    with pytest.raises(WeightsError, match="holds no VAE weights"):
        pilot.load_pipeline(bare, **TEXT)
    sd = pilot.load_pipeline(bare, vae=pipelines["b_dir"], **TEXT)
    assert_weights_equal(sd.vae, pipelines["b"].vae)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"latent_channels": 8},
            "8 channels at 1/2 of the image size, where the model's are 4 channels at 1/2",
        ),  # fmt: skip
        (
            {"block_out_channels": (32, 64, 64)},
            "4 channels at 1/4 of the image size, where the model's are 4 channels at 1/2",
        ),  # fmt: skip
    ],
)
def test_a_vae_of_other_latents_is_refused_naming_the_file(pipelines, tmp_path, change, message):
    vae_file = tmp_path / "other.safetensors"
    write_original_vae(AutoencoderKL(replace(VAE_PRESETS["tiny"], **change)), vae_file)
    for model in ("a_dir", "a_file"):
        with pytest.raises(WeightsError) as info:
            pilot.load_pipeline(pipelines[model], vae=vae_file, **TEXT)
        text = str(info.value)
        assert "\n" not in text and text.startswith(f"{vae_file}: ") and message in text


def test_a_file_that_is_no_vae_is_named(pipelines, tmp_path):
    unet_only = tmp_path / "unet-only.safetensors"
    state = pilot.weights.io.load_state_dict(pipelines["a_file"])
    save_state_dict({k: v for k, v in state.items() if k.startswith("model.")}, unet_only)
    with pytest.raises(WeightsError, match=f"{unet_only}: holds no VAE weights"):
        pilot.load_pipeline(pipelines["a_dir"], vae=unet_only)


def test_the_swap_helpers_live_in_vae_swap_and_import_from_loaders_as_before():
    from pilot.weights import loaders, vae_swap

    for name in ("_swap_vae", "_latents", "_vae_latents"):
        assert getattr(loaders, name) is getattr(vae_swap, name)


def test_a_vae_file_of_no_preset_takes_the_folders_own_vae_config(tmp_path):
    """A VAE file stores no GroupNorm groups or scaling factor: one with the shapes of the
    folder's own VAE (of no preset: the packaged tiny SD's) takes them, as A1111 loads it."""
    own = replace(
        VAE_PRESETS["tiny"], block_out_channels=(16, 32), norm_num_groups=4, scaling_factor=0.5
    )
    sd = replace(make_tiny_sd(seed=1), vae=AutoencoderKL(own).eval())
    folder = save_pipeline(sd, tmp_path / "model")
    tuned = AutoencoderKL(own).eval()  # the same shapes, other weights
    write_original_vae(tuned, vae_file := tmp_path / "tuned-vae.safetensors")
    with pytest.raises(WeightsError, match="fit no preset"):
        pilot.load_vae(vae_file)  # on its own, it still needs a config
    swapped = pilot.load_pipeline(folder, vae=vae_file).vae
    assert swapped.cfg == own
    assert_weights_equal(swapped, tuned)
    other = replace(own, layers_per_block=2)  # other shapes: the config is not the own's
    write_original_vae(AutoencoderKL(other), other_file := tmp_path / "other.safetensors")
    with pytest.raises(WeightsError) as info:
        pilot.load_pipeline(folder, vae=other_file)
    assert "fit no preset" in str(info.value)
    assert "save it once as a folder, which stores them (pilot.weights.save.save_vae)" in str(
        info.value
    )
