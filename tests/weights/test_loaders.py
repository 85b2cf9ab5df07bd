"""pilot.load_*: folder layouts and variants, the HF cache, and bad input with clear errors.

Output parity with diffusers / transformers lives in tests/parity/test_load_parity.py; here
weights are compared tensor by tensor, and every bad input must raise a WeightsError naming the
file (or repo id) and the problem.
"""

import copy
import json
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

import pilot
from pilot.models.clip import CLIP_PRESETS
from pilot.models.tokenizer import CLIPTokenizer
from pilot.models.unet import UNET_PRESETS
from pilot.weights import sd_original
from pilot.weights.io import WeightsError, _cpu_float16_as_float32, load_state_dict, save_state_dict

TINY_VAE = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=1,
    latent_channels=4,
)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "unet": UNet2DConditionModel(**UNET_PRESETS["tiny"].to_diffusers()),
        "vae": AutoencoderKL(**TINY_VAE),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_PRESETS["tiny"].to_transformers())),
    }


@pytest.fixture(scope="module")
def unet_dir(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "unet"
    models["unet"].save_pretrained(folder)
    return folder


def assert_weights_equal(model, reference) -> None:
    ours, ref = model.state_dict(), reference.state_dict()
    assert sorted(ours) == sorted(ref)
    for key, value in ref.items():
        assert torch.equal(ours[key].to(value.dtype), value), key


def copy_component(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_component_folder_and_its_weights_file(models, unet_dir):
    assert_weights_equal(pilot.load_unet(unet_dir), models["unet"])
    weights = unet_dir / "diffusion_pytorch_model.safetensors"
    assert_weights_equal(pilot.load_unet(weights), models["unet"])  # config.json next to it


def test_fp16_variant_bin_and_dtype(models, tmp_path):
    copy.deepcopy(models["unet"]).half().save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    unet = pilot.load_unet(tmp_path / "fp16", dtype=torch.float16)
    assert unet.conv_in.weight.dtype == torch.float16
    unet = pilot.load_unet(tmp_path / "fp16", dtype=torch.float32, device="cpu")
    assert unet.conv_in.weight.dtype == torch.float32
    assert torch.equal(unet.conv_in.weight, models["unet"].conv_in.weight.half().float())
    # no dtype: a float16 file bound for the CPU loads as float32 (CPU half kernels are slow)
    unet = pilot.load_unet(tmp_path / "fp16")
    assert {p.dtype for p in unet.parameters()} == {torch.float32}
    assert torch.equal(unet.conv_in.weight, models["unet"].conv_in.weight.half().float())
    assert _cpu_float16_as_float32(unet.half(), "cuda") is None  # kept for a GPU
    assert _cpu_float16_as_float32(unet.bfloat16(), None) is None  # bfloat16 kept
    models["unet"].save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "diffusion_pytorch_model.bin").is_file()
    assert_weights_equal(pilot.load_unet(tmp_path / "bin"), models["unet"])


def test_sharded_weights(models, tmp_path):
    models["unet"].save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert_weights_equal(pilot.load_unet(tmp_path), models["unet"])


def test_text_encoder_with_old_transformers_keys(models, tmp_path):
    folder = tmp_path / "text_encoder"
    models["text_encoder"].save_pretrained(folder)
    sd = load_state_dict(folder / "model.safetensors")
    old = {f"text_model.{k}": v for k, v in sd.items()}  # transformers < 5 layout
    old["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_state_dict(old, folder / "model.safetensors")
    assert_weights_equal(pilot.load_text_encoder(folder), models["text_encoder"])


def test_vae_with_legacy_attention_names(models, tmp_path):
    folder = tmp_path / "vae"
    models["vae"].save_pretrained(folder)
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    sd = {}
    for key, value in load_state_dict(folder / "diffusion_pytorch_model.safetensors").items():
        for new, old in names.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        sd[key] = value
    assert any(".query." in k for k in sd)
    save_state_dict(sd, folder / "diffusion_pytorch_model.safetensors")
    assert_weights_equal(pilot.load_vae(folder), models["vae"])


def test_config_override_by_preset_name(models, unet_dir):
    assert_weights_equal(pilot.load_unet(unet_dir, config="tiny"), models["unet"])
    with pytest.raises(ValueError, match="unknown UNet preset 'huge'"):
        pilot.load_unet(unet_dir, config="huge")


# -- bad input --------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(WeightsError, match="nowhere.safetensors: no such file or folder"):
        pilot.load_unet(tmp_path / "nowhere.safetensors")
    with pytest.raises(WeightsError, match="nowhere"):
        pilot.load_pipeline(str(tmp_path / "nowhere"))


def test_truncated_weights_in_a_folder(unet_dir, tmp_path):
    folder = copy_component(unet_dir, tmp_path / "unet")
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(WeightsError, match=r"diffusion_pytorch_model\.safetensors: not a valid"):
        pilot.load_unet(folder)


def test_random_bytes_single_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(WeightsError, match="model.safetensors: not a valid safetensors"):
        pilot.load_pipeline(path)


def test_vae_folder_given_to_load_unet(models, tmp_path):
    models["vae"].save_pretrained(tmp_path / "vae")
    with pytest.raises(WeightsError, match="config.json: describes a AutoencoderKL, not a UNet"):
        pilot.load_unet(tmp_path / "vae")


def test_vae_weights_under_a_unet_config(models, unet_dir, tmp_path):
    folder = copy_component(unet_dir, tmp_path / "unet")
    save_state_dict(models["vae"].state_dict(), folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(WeightsError) as info:
        pilot.load_unet(folder)
    message = str(info.value)
    assert "diffusion_pytorch_model.safetensors: does not fit UNet" in message
    assert "looks like a diffusers VAE" in message and "missing" in message


def test_original_vae_file_given_to_load_unet(models, tmp_path):
    path = tmp_path / "vae-ft-mse.safetensors"
    original = sd_original.to_original({"vae": models["vae"].state_dict()}, vae_num_blocks=2)
    save_state_dict({k.removeprefix("first_stage_model."): v for k, v in original.items()}, path)
    with pytest.raises(WeightsError, match="vae-ft-mse.safetensors: holds no UNet weights"):
        pilot.load_unet(path)
    assert_weights_equal(pilot.load_vae(path, config="tiny"), models["vae"])


def test_sdxl_like_unet_config(unet_dir, tmp_path):
    folder = copy_component(unet_dir, tmp_path / "unet")
    config = json.loads((folder / "config.json").read_text())
    config.update(
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        cross_attention_dim=2048,
    )
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="config.json: unsupported UNet config.*SDXL"):
        pilot.load_unet(folder)


def test_sdxl_pipeline_folder(tmp_path):
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionXLPipeline"})
    )
    with pytest.raises(WeightsError, match="model_index.json: a StableDiffusionXLPipeline"):
        pilot.load_pipeline(tmp_path)


def test_sdxl_single_file(tmp_path):
    path = tmp_path / "sdxl.safetensors"
    save_state_dict(
        {
            "model.diffusion_model.label_emb.0.0.weight": torch.zeros(2, 2),
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(2),
        },
        path,
    )
    with pytest.raises(WeightsError, match="sdxl.safetensors: an SDXL checkpoint"):
        pilot.load_unet(path)


@pytest.mark.parametrize("change", ["unexpected", "missing", "shape"])
def test_key_and_shape_errors(unet_dir, tmp_path, change):
    folder = copy_component(unet_dir, tmp_path / "unet")
    weights = folder / "diffusion_pytorch_model.safetensors"
    sd = load_state_dict(weights)
    if change == "unexpected":
        sd["extra_head.weight"] = torch.zeros(3)
        match = "unexpected 1 keys: extra_head.weight"
    elif change == "missing":
        del sd["conv_out.bias"]
        match = "missing 1 keys: conv_out.bias"
    else:
        sd["conv_out.weight"] = torch.zeros(4, 32, 1, 1)
        match = r"conv_out.weight: expected \(4, 32, 3, 3\), found \(4, 32, 1, 1\)"
    save_state_dict(sd, weights)
    with pytest.raises(WeightsError, match=rf"diffusion_pytorch_model.safetensors: .*{match}"):
        pilot.load_unet(folder)


_EVIL = """
import os, sys, torch

class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))

torch.save({"state_dict": {"model.diffusion_model.out.2.bias": torch.zeros(4)}, "x": Evil()},
           sys.argv[1])
"""


def test_ckpt_with_pickled_code(tmp_path):
    path, sentinel = tmp_path / "sd-v1-5.ckpt", tmp_path / "sentinel"
    subprocess.run([sys.executable, "-c", _EVIL, str(path), str(sentinel)], check=True)
    with pytest.raises(WeightsError, match="sd-v1-5.ckpt: holds pickled code or unsafe objects"):
        pilot.load_pipeline(path)
    assert not sentinel.exists()


# -- Hugging Face cache -----------------------------------------------------------------------


def test_uncached_repo_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError) as info:
        pilot.load_pipeline("some-org/some-model")
    message = str(info.value)
    assert "some-org/some-model" in message and str(tmp_path / "empty-cache") in message
    assert "huggingface-cli download some-org/some-model" in message


def test_cached_repo_id(models, unet_dir, tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--some-org--tiny-sd"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    copy_component(unet_dir, snapshot / "unet")
    (snapshot / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline"})
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # HF_HOME/hub is the cache
    assert_weights_equal(pilot.load_unet("some-org/tiny-sd"), models["unet"])


# -- tokenizer --------------------------------------------------------------------------------


def write_tokenizer_folder(folder, pad_token):
    tok = CLIPTokenizer.default()
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(tok.vocab))
    merges = sorted(tok.ranks, key=tok.ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad_token}))


def test_tokenizer_sources(models, tmp_path):
    write_tokenizer_folder(tmp_path / "sd2" / "tokenizer", "!")
    assert pilot.load_tokenizer(tmp_path / "sd2").pad_token == "!"
    path = tmp_path / "sd1.safetensors"
    save_state_dict(
        sd_original.to_original({"text_encoder": models["text_encoder"].state_dict()}), path
    )
    assert pilot.load_tokenizer(path).pad_token == "<|endoftext|>"
    open_clip = sd_original.to_original(
        {"text_encoder": models["text_encoder"].state_dict()}, text_format="open_clip"
    )
    save_state_dict(open_clip, tmp_path / "sd2.safetensors")
    assert pilot.load_tokenizer(tmp_path / "sd2.safetensors").pad_token == "!"


def test_import_pilot_stays_light():
    code = (
        "import sys, pilot; pilot.load_unet; "
        "print(sorted(m for m in ('diffusers', 'transformers', 'open_clip') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_scheduler_config_with_other_betas_warns(tmp_path):
    from pilot.weights.hub import resolve

    folder = tmp_path / "tuned"
    shutil.copytree(resolve("tiny_sd"), folder)
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SD's own schedule is quiet
        pilot.load_pipeline(folder)
    path.write_text(json.dumps({**config, "beta_schedule": "linear", "beta_end": 0.02}))
    with pytest.warns(UserWarning, match=r"'beta_schedule': 'linear', 'beta_end': 0.02.*SD's"):
        pilot.load_pipeline(folder)
