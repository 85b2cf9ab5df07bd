"""Original CompVis/Stability single-file layout: rule-based key maps, inverse, detection.

Reference state dicts come from diffusers / transformers models (on the meta device for SD-sized
shapes); diffusers' own single-file converters cross-check that our layout is the real one.
"""

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig, CLIPTextModel

from pilot.weights import sd_original as so

SD15_UNET = dict(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
SD21_UNET = dict(
    cross_attention_dim=1024,
    attention_head_dim=[5, 10, 20, 20],
    use_linear_projection=True,
    upcast_attention=True,
    sample_size=96,
)
SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
)
TINY_UNET = dict(
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
    sample_size=8,
)
TINY_VAE = dict(
    block_out_channels=(32, 32, 64),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
)
TINY_CLIP = dict(
    vocab_size=1000,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="gelu",
)


def state_dict(model) -> dict[str, torch.Tensor]:
    # Distinct values per key so a swapped mapping cannot pass unnoticed.
    return {k: v + i for i, (k, v) in enumerate(model.state_dict().items())}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(**TINY_VAE)
    text = CLIPTextModel(CLIPTextConfig(**TINY_CLIP))
    return {
        "unet": state_dict(unet),
        "vae": state_dict(vae),
        "text_encoder": state_dict(text),
        "unet_config": dict(unet.config),
        "vae_config": dict(vae.config),
        "text_model": text,
    }


def sd_sized(unet_kwargs: dict, text_kwargs: dict) -> dict:
    with torch.device("meta"):  # shapes only
        unet = UNet2DConditionModel(**unet_kwargs)
        vae = AutoencoderKL(**SD_VAE)
        text = CLIPTextModel(CLIPTextConfig(**text_kwargs))
    return {
        "unet": unet.state_dict(),
        "vae": vae.state_dict(),
        "text_encoder": text.state_dict(),
        "unet_config": dict(unet.config),
    }


def assert_same(ours: dict, reference: dict) -> None:
    assert sorted(ours) == sorted(reference)
    for key, value in reference.items():
        assert ours[key].shape == value.shape, key
        if not value.is_meta:
            assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("fmt", ["clip", "open_clip"])
def test_round_trip_is_exact(tiny, fmt):
    original = so.to_original(
        tiny, unet_config=tiny["unet_config"], vae_num_blocks=3, text_format=fmt
    )
    assert so.text_format(original) == fmt
    layout = so.UNetLayout.from_config(tiny["unet_config"])
    assert_same(so.extract_unet(original, layout), tiny["unet"])
    assert_same(so.extract_vae(original, 3), tiny["vae"])
    assert_same(so.extract_text_encoder(original), tiny["text_encoder"])


@pytest.mark.parametrize("fmt", ["clip", "open_clip"])
def test_diffusers_converters_read_our_layout(tiny, fmt):
    """diffusers' single-file conversion of our file gives back the diffusers weights."""
    original = so.to_original(
        tiny, unet_config=tiny["unet_config"], vae_num_blocks=3, text_format=fmt
    )
    assert_same(sfu.convert_ldm_unet_checkpoint(original, tiny["unet_config"]), tiny["unet"])
    assert_same(sfu.convert_ldm_vae_checkpoint(original, tiny["vae_config"]), tiny["vae"])
    if fmt == "clip":
        text = sfu.convert_ldm_clip_checkpoint(original)
    else:
        text = sfu.convert_open_clip_checkpoint(tiny["text_model"], original)
        # diffusers drops only `resblocks.23` by name; our extra last block has another index.
        text = {k: v for k, v in text.items() if ".layers.3." not in k}
    assert_same({k.removeprefix("text_model."): v for k, v in text.items()}, tiny["text_encoder"])


def test_real_sd15_key_names():
    """Spot checks against key names of v1-5-pruned-emaonly.safetensors."""
    layout = so.UNetLayout(layers_per_block=2, attn_up=(False, True, True, True))
    cases = {
        "input_blocks.3.0.op.weight": "down_blocks.0.downsamplers.0.conv.weight",
        "input_blocks.4.0.skip_connection.bias": "down_blocks.1.resnets.0.conv_shortcut.bias",
        "input_blocks.8.1.transformer_blocks.0.attn2.to_k.weight": (
            "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight"
        ),
        "input_blocks.11.0.emb_layers.1.weight": "down_blocks.3.resnets.1.time_emb_proj.weight",
        "middle_block.2.out_layers.3.weight": "mid_block.resnets.1.conv2.weight",
        "middle_block.1.proj_out.bias": "mid_block.attentions.0.proj_out.bias",
        "output_blocks.2.1.conv.weight": "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.5.2.conv.bias": "up_blocks.1.upsamplers.0.conv.bias",
        "output_blocks.11.1.norm.weight": "up_blocks.3.attentions.2.norm.weight",
        "output_blocks.11.0.in_layers.2.weight": "up_blocks.3.resnets.2.conv1.weight",
        "time_embed.2.bias": "time_embedding.linear_2.bias",
        "out.0.weight": "conv_norm_out.weight",
    }
    for original, ours in cases.items():
        assert so.map_unet_key(original, layout) == ours
        assert so.unmap_unet_key(ours, layout) == original
    vae = {
        "decoder.up.3.block.0.conv1.weight": "decoder.up_blocks.0.resnets.0.conv1.weight",
        "decoder.up.1.upsample.conv.bias": "decoder.up_blocks.2.upsamplers.0.conv.bias",
        "encoder.down.1.block.0.nin_shortcut.weight": (
            "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"
        ),
        "encoder.down.0.downsample.conv.weight": "encoder.down_blocks.0.downsamplers.0.conv.weight",
        "encoder.mid.attn_1.proj_out.weight": "encoder.mid_block.attentions.0.to_out.0.weight",
        "decoder.mid.block_2.norm1.bias": "decoder.mid_block.resnets.1.norm1.bias",
        "encoder.norm_out.weight": "encoder.conv_norm_out.weight",
        "post_quant_conv.bias": "post_quant_conv.bias",
    }
    for original, ours in vae.items():
        assert so.map_vae_key(original, 4) == ours
        assert so.unmap_vae_key(ours, 4) == original
    assert so.map_vae_key("loss.discriminator.main.0.weight", 4) is None


def test_open_clip_penultimate_layer_is_dropped():
    assert so.map_open_clip_key("transformer.resblocks.23.ln_1.weight", 23) is None
    assert so.map_open_clip_key("transformer.resblocks.22.ln_1.weight", 23) == (
        "encoder.layers.22.layer_norm1.weight"
    )
    assert so.map_open_clip_key("text_projection", 23) is None
    assert so.map_open_clip_key("logit_scale", 23) is None
    assert so.map_open_clip_key("positional_embedding", 23) == (
        "embeddings.position_embedding.weight"
    )


def test_vae_attention_is_reshaped_between_conv_and_linear(tiny):
    original = so.to_original(tiny, unet_config=tiny["unet_config"], vae_num_blocks=3)
    q = original["first_stage_model.encoder.mid.attn_1.q.weight"]
    assert q.shape == (64, 64, 1, 1)
    assert so.extract_vae(original, 3)["encoder.mid_block.attentions.0.to_q.weight"].shape == (
        64,
        64,
    )


SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12)
SD21_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, hidden_act="gelu")


@pytest.mark.parametrize(
    ("unet_kwargs", "text_kwargs", "fmt"),
    [(SD15_UNET, SD15_TEXT, "clip"), (SD21_UNET, SD21_TEXT, "open_clip")],
    ids=["sd15", "sd21"],
)
def test_detect_configs_of_sd_sized_files(unet_kwargs, text_kwargs, fmt):
    ref = sd_sized(unet_kwargs, {**text_kwargs, "num_attention_heads": 1})
    original = so.to_original(
        ref, unet_config=ref["unet_config"], vae_num_blocks=4, text_format=fmt
    )
    if fmt == "open_clip":  # a real SD 2.x file: 24 resblocks, text_projection, logit_scale
        assert so.count_indices(original, "cond_stage_model.model.transformer.resblocks.") == 24
    unet = so.detect_unet_config(original)
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types"):
        expected = ref["unet_config"][key]
        assert unet[key] == (list(expected) if isinstance(expected, tuple) else expected), key
    assert unet["cross_attention_dim"] == unet_kwargs["cross_attention_dim"]
    assert unet["use_linear_projection"] == unet_kwargs.get("use_linear_projection", False)
    assert unet["attention_head_dim"] == unet_kwargs["attention_head_dim"]  # the heads guess
    vae = so.detect_vae_config(original)
    assert vae["block_out_channels"] == list(SD_VAE["block_out_channels"])
    assert (vae["layers_per_block"], vae["latent_channels"]) == (2, 4)
    text = so.detect_text_config(original)
    assert text["num_hidden_layers"] == text_kwargs["num_hidden_layers"]
    assert text["num_attention_heads"] == text_kwargs["hidden_size"] // 64
    assert text["hidden_act"] == text_kwargs.get("hidden_act", "quick_gelu")


def test_detect_prediction_type():
    sd1 = {"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(1)}
    sd2 = {"cond_stage_model.model.ln_final.weight": torch.zeros(1)}
    assert so.detect_prediction_type(sd1, {}) == "epsilon"
    assert so.detect_prediction_type(sd2, {}) == "v_prediction"
    assert so.detect_prediction_type(sd2, {"global_step": 875000}) == "epsilon"  # 512-base
    assert so.detect_prediction_type(sd2, {"global_step": "875000"}) == "epsilon"
    assert so.detect_prediction_type(sd1, {}, "v_prediction") == "v_prediction"
    with pytest.raises(ValueError, match="prediction_type='x0'"):
        so.detect_prediction_type(sd1, {}, "x0")


def test_detect_rejects_a_file_without_a_unet():
    with pytest.raises(ValueError, match="not an SD 1.x/2.x UNet"):
        so.detect_unet_config({"first_stage_model.encoder.conv_in.weight": torch.zeros(1)})
