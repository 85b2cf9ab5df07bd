"""Models loaded by pilot.load_* compute what diffusers / transformers / open_clip compute.

References get seeded random weights, perturbed so biases and norms are not their constant
init (a swapped key would then show). Files are written by the references' own
`save_pretrained` (folders) or by our `sd_original.to_original` (single files, checked against
diffusers' own single-file loader). Parity is max |a - b| / max |b| <= 1e-5 in float32.

SD 1.5-sized models are written once per module in float16 (1.7 GB instead of 3.4 GB for the
UNet), with the float32 references rounded to float16 values first: pilot loads the files with
`dtype=torch.float32`, so parity is still measured in float32 on identical weights.
"""

import gc
from dataclasses import replace

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from sd_references import fill, hf_tokenizer, rel_err
from transformers import CLIPTextConfig, CLIPTextModel

import pilot
from pilot.models.clip import CLIP_PRESETS
from pilot.models.clip import CLIPTextConfig as PilotTextConfig
from pilot.models.unet import UNET_PRESETS
from pilot.models.vae import VAE_PRESETS
from pilot.weights import sd_original
from pilot.weights.io import save_state_dict

TOL = 1e-5
# The VAE decoder computes its upsampling convs as 2x2 convs with summed 3x3 taps
# (`Upsample2D(phases=True)`): the same sum in another order, ~1e-5 apart in float32 at SD 1.5.
TOL_DECODE = 3e-5
PROMPTS = ["a red brick corridor, thick blue fog", "a cat"]
# The tiny text encoder with CLIP's 49408 tokens: single files of it need this config.
TINY_TEXT = replace(CLIP_PRESETS["tiny"], vocab_size=49408)


def reference_models(size: str, seed: int = 0, text_act: str | None = None) -> dict:
    """diffusers UNet / VAE and transformers CLIP text model with pilot's preset shapes."""
    text_cfg = CLIP_PRESETS[size].to_transformers()
    if size == "tiny":  # CLIP's vocabulary, which the shipped tokenizer needs (not the preset's)
        text_cfg["vocab_size"] = TINY_TEXT.vocab_size
    if text_act:
        text_cfg["hidden_act"] = text_act
    with torch.device("meta"):  # skip the slow default init: `fill` sets every parameter
        unet = UNet2DConditionModel(**UNET_PRESETS[size].to_diffusers())
        vae = AutoencoderKL(**VAE_PRESETS[size].to_diffusers())
    text = CLIPTextModel(CLIPTextConfig(**text_cfg))  # has a computed position_ids buffer
    return {
        "unet": fill(unet.to_empty(device="cpu"), seed),
        "vae": fill(vae.to_empty(device="cpu"), seed + 1),
        "text_encoder": fill(text, seed + 2),
    }


def inputs(models: dict, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    unet, text = models["unet"].config, models["text_encoder"].config
    image_side = 8 * 2 ** (len(models["vae"].config.block_out_channels) - 1)
    return {
        "x": torch.randn(batch, unet.in_channels, 8, 8, generator=g),  # (B, 4, 8, 8) latents
        "t": torch.tensor([10, 700][:batch]),
        "context": torch.randn(batch, 77, unet.cross_attention_dim, generator=g),
        "images": torch.rand(batch, 3, image_side, image_side, generator=g) * 2 - 1,  # [-1, 1]
        "latents": torch.randn(batch, 4, 8, 8, generator=g),
        "ids": torch.randint(0, text.vocab_size, (batch, 77), generator=g),
    }


@torch.no_grad()
def reference_outputs(models: dict, x: dict) -> dict:
    return {
        "unet": models["unet"](x["x"], x["t"], encoder_hidden_states=x["context"]).sample,
        "encode": models["vae"].encode(x["images"]).latent_dist.mean,
        "decode": models["vae"].decode(x["latents"]).sample,
        "text": models["text_encoder"](x["ids"]).last_hidden_state,
    }


@torch.no_grad()
def pilot_outputs(unet=None, vae=None, text_encoder=None, *, x: dict) -> dict:
    out = {}
    if unet is not None:
        out["unet"] = unet(x["x"], x["t"], x["context"])
    if vae is not None:
        out["encode"] = vae.encode(x["images"]).mean
        out["decode"] = vae.decode(x["latents"])
    if text_encoder is not None:
        out["text"] = text_encoder(x["ids"])
    return out


def assert_parity(ours: dict, reference: dict, label: str) -> dict:
    errors = {k: rel_err(v, reference[k]) for k, v in ours.items()}
    print(f"\n{label}: " + ", ".join(f"{k} {e:.2e}" for k, e in errors.items()))
    assert all(e <= (TOL_DECODE if k == "decode" else TOL) for k, e in errors.items()), errors
    return errors


def save_pipeline(models: dict, folder, *, prediction_type: str, pad_token: str, **save_kwargs):
    pipe = StableDiffusionPipeline(
        vae=models["vae"],
        text_encoder=models["text_encoder"],
        tokenizer=hf_tokenizer(folder.parent / f"{folder.name}-vocab", pad_token),
        unet=models["unet"],
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type=prediction_type,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, **save_kwargs)
    return pipe.tokenizer


def original_file(models: dict, path, *, text_format: str = "clip", **extra) -> None:
    """Our conversion of the references to one original-layout file (.safetensors or .ckpt)."""
    state = sd_original.to_original(
        {name: m.state_dict() for name, m in models.items()},
        unet_config=dict(models["unet"].config),
        vae_num_blocks=len(models["vae"].config.block_out_channels),
        text_format=text_format,
    )
    if path.suffix == ".ckpt":
        torch.save({"state_dict": state, **extra}, path)
    else:
        save_state_dict(state, path, metadata={k: str(v) for k, v in extra.items()} or None)


# -- tiny -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    models = reference_models("tiny")
    x = inputs(models)
    return {"models": models, "x": x, "ref": reference_outputs(models, x)}


@pytest.fixture(scope="module")
def tiny_sd2():
    """SD 2.x style: OpenCLIP text tower (exact gelu), v-prediction."""
    models = reference_models("tiny", seed=10, text_act="gelu")
    x = inputs(models)
    return {"models": models, "x": x, "ref": reference_outputs(models, x)}


def test_pipeline_folder_tiny(tiny, tmp_path):
    folder = tmp_path / "tiny-sd"
    hf_tok = save_pipeline(tiny["models"], folder, prediction_type="v_prediction", pad_token="!")
    sd = pilot.load_pipeline(folder)
    assert sd.prediction_type == "v_prediction"
    assert sd.scaling_factor == tiny["models"]["vae"].config.scaling_factor
    out = pilot_outputs(sd.unet, sd.vae, sd.text_encoder, x=tiny["x"])
    assert_parity(out, tiny["ref"], "tiny pipeline folder")
    expected = hf_tok(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
    assert sd.tokenizer(PROMPTS).tolist() == expected

    # Each component alone: from the pipeline folder and from its own subfolder.
    parts = {
        "unet": pilot.load_unet(folder),
        "vae": pilot.load_vae(folder / "vae"),
        "text_encoder": pilot.load_text_encoder(folder / "text_encoder"),
    }
    assert_parity(pilot_outputs(**parts, x=tiny["x"]), tiny["ref"], "tiny components")
    assert pilot.load_tokenizer(folder).pad_token == "!"


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_round_trip_tiny(tiny, tmp_path, suffix):
    path = tmp_path / f"tiny-sd1{suffix}"
    original_file(tiny["models"], path)
    sd = pilot.load_pipeline(path, text_config=TINY_TEXT)
    assert sd.prediction_type == "epsilon"
    assert sd.tokenizer.pad_token == "<|endoftext|>"
    out = pilot_outputs(sd.unet, sd.vae, sd.text_encoder, x=tiny["x"])
    assert_parity(out, tiny["ref"], f"tiny single file {suffix}")
    unet = pilot.load_unet(path, dtype=torch.float64)
    assert unet.conv_in.weight.dtype == torch.float64


@pytest.mark.parametrize(
    ("suffix", "extra", "prediction_type"),
    [
        (".safetensors", {}, "v_prediction"),
        (".ckpt", {}, "v_prediction"),
        (".ckpt", {"global_step": 875000}, "epsilon"),  # the SD 2 512-base checkpoint
    ],
)
def test_single_file_round_trip_tiny_sd2(tiny_sd2, tmp_path, suffix, extra, prediction_type):
    path = tmp_path / f"tiny-sd2{suffix}"
    original_file(tiny_sd2["models"], path, text_format="open_clip", **extra)
    text = replace(TINY_TEXT, hidden_act="gelu")
    sd = pilot.load_pipeline(path, text_config=text)
    assert sd.prediction_type == prediction_type
    assert sd.tokenizer.pad_token == "!"
    out = pilot_outputs(sd.unet, sd.vae, sd.text_encoder, x=tiny_sd2["x"])
    assert_parity(out, tiny_sd2["ref"], f"tiny SD2 single file {suffix}")
    sd = pilot.load_pipeline(path, prediction_type="epsilon", text_config=text)
    assert sd.prediction_type == "epsilon"


def test_diffusers_single_file_loader_reads_our_layout(tiny, tmp_path):
    """diffusers' from_single_file on our file gives the reference weights (offline)."""
    folder, path = tmp_path / "config", tmp_path / "tiny.safetensors"
    tiny["models"]["unet"].save_pretrained(folder / "unet")
    tiny["models"]["vae"].save_pretrained(folder / "vae")
    original_file(tiny["models"], path)
    for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        try:
            loaded = cls.from_single_file(
                str(path), config=str(folder), subfolder=name, local_files_only=True
            )
        except (OSError, ValueError) as e:  # a diffusers version that insists on the network
            pytest.skip(f"diffusers from_single_file needs the network here: {e}")
        ref = tiny["models"][name].state_dict()
        got = loaded.state_dict()
        assert sorted(got) == sorted(ref)
        assert all(torch.equal(got[k], v) for k, v in ref.items()), name


def test_open_clip_tower_layout(tmp_path):
    """An open_clip text tower saved as SD 2 does: pilot = its penultimate layer + ln_final."""
    from open_clip.transformer import TextTransformer

    torch.manual_seed(3)
    tower = TextTransformer(context_length=77, vocab_size=1000, width=32, heads=4, layers=4)
    fill(tower, seed=3)
    path = tmp_path / "openclip.safetensors"
    save_state_dict({f"cond_stage_model.model.{k}": v for k, v in tower.state_dict().items()}, path)
    cfg = PilotTextConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=128,
        num_layers=3,
        num_heads=4,
        hidden_act="gelu",
        eos_token_id=999,
    )
    ours = pilot.load_text_encoder(path, config=cfg)
    ids = torch.randint(0, 1000, (2, 77))
    with torch.no_grad():
        x, mask = tower._embeds(ids)
        for block in tower.transformer.resblocks[:-1]:  # ldm FrozenOpenCLIPEmbedder: penultimate
            x = block(x, attn_mask=mask)
        reference = tower.ln_final(x)
        assert_parity({"text": ours(ids)}, {"text": reference}, "open_clip tower")


# -- SD 1.5 sizes -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    """Reference outputs and float16 files (pipeline folder, .safetensors, .ckpt) at SD 1.5 size.

    The references are dropped once their outputs and files exist, to bound memory.
    """
    root = tmp_path_factory.mktemp("sd15")
    models = reference_models("sd15")
    # UNet and text encoder at batch 2 (a CFG pair), the VAE at batch 1 (one frame, as pilot's
    # pipelines decode). diffusers' VAE attention returns NHWC strides; at batch 1 their irregular
    # batch stride sends its decoder back to NCHW, as pilot's is, while at batch 2 its GroupNorms
    # reduce NHWC, in another order (1.3e-5 apart). What is left at batch 1 (decode 9.8e-6) starts
    # at pilot's im2col + GEMM convolutions on 8x8 latents (`pilot.nn.resnet.Conv2d`).
    x = inputs(models, batch=2)
    x["images"], x["latents"] = x["images"][:1], x["latents"][:1]
    ref = reference_outputs(models, x)
    for model in models.values():
        model.half()  # exact: `fill` drew float16 values
    save_pipeline(models, root / "folder", prediction_type="epsilon", pad_token="<|endoftext|>")
    original_file(models, root / "sd15.safetensors")
    original_file(models, root / "sd15.ckpt", global_step=840000)
    del models
    gc.collect()
    return {"root": root, "x": x, "ref": ref}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["folder", "sd15.safetensors", "sd15.ckpt"])
def test_sd15_sized_parity(sd15, source):
    sd = pilot.load_pipeline(sd15["root"] / source, dtype=torch.float32)
    assert sd.prediction_type == "epsilon"
    assert sd.unet.cfg == UNET_PRESETS["sd15"] and sd.vae.cfg == VAE_PRESETS["sd15"]
    assert sd.text_encoder.cfg == CLIP_PRESETS["sd15"]
    out = pilot_outputs(sd.unet, sd.vae, sd.text_encoder, x=sd15["x"])
    assert_parity(out, sd15["ref"], f"SD 1.5 {source}")
