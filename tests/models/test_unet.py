"""UNet unit tests: shapes per preset (meta device), timestep forms, dtypes, config handling."""

import dataclasses

import pytest
import torch

from pilot.models.unet import UNET_PRESETS, UNet, UNetConfig
from pilot.nn import attention, resnet
from pilot.nn.attention import GEGLU, BasicTransformerBlock, ff_chunk_rows
from pilot.nn.resnet import Conv2d

TINY = UNET_PRESETS["tiny"]


def tiny_inputs(cfg: UNetConfig = TINY, batch: int = 2, size: int = 16):
    x = torch.randn(batch, cfg.in_channels, size, size)
    context = torch.randn(batch, 7, cfg.cross_attention_dim)
    return x, context


@pytest.fixture(scope="module")
def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(TINY).eval()


@pytest.mark.parametrize("preset", sorted(UNET_PRESETS))
def test_output_shape_per_preset_on_meta(preset):
    cfg = UNET_PRESETS[preset]
    with torch.device("meta"):
        unet = UNet(cfg)
        x = torch.randn(2, cfg.in_channels, 64, 48)
        out = unet(x, 999, torch.randn(2, 77, cfg.cross_attention_dim))
    assert out.shape == (2, cfg.out_channels, 64, 48)


@pytest.mark.parametrize("blocks", [(32,), (32, 64, 64), (32, 32, 64, 64)])
def test_tiny_with_other_block_counts(blocks):
    cfg = dataclasses.replace(TINY, block_out_channels=blocks)
    x, context = tiny_inputs(cfg)
    with torch.no_grad():
        out = UNet(cfg)(x, 10, context)
    assert out.shape == x.shape


def test_timestep_forms_agree(tiny_unet):
    x, context = tiny_inputs()
    forms = [321, 321.0, torch.tensor(321), torch.tensor([321]), torch.tensor([321, 321])]
    with torch.no_grad():
        outs = [tiny_unet(x, t, context) for t in forms]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=0)


def test_per_item_timesteps(tiny_unet):
    x, context = tiny_inputs()
    t = torch.tensor([10, 900])
    with torch.no_grad():
        both = tiny_unet(x, t, context)
        first = tiny_unet(x[:1], 10, context[:1])
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(both[1:], tiny_unet(x[1:], 10, context[1:]))


def test_odd_sizes(tiny_unet):
    x, context = tiny_inputs(size=15)
    with torch.no_grad():
        assert tiny_unet(x[..., :13], 5, context).shape == (2, 4, 15, 13)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_dtype_follows_model(dtype):
    unet = UNet(TINY).to(dtype).eval()
    x, context = tiny_inputs()
    with torch.no_grad():
        out = unet(x.to(dtype), torch.tensor(500), context.to(dtype))
    assert out.dtype == dtype
    assert torch.isfinite(out).all()


def test_residuals_added_and_not_mutated(tiny_unet):
    x, context = tiny_inputs(size=16)
    # Skips of tiny at 16x16: conv_in, 2 resnets and the downsampler, then 2 resnets at 8x8.
    sizes = [16, 16, 16, 8, 8, 8]
    chans = TINY.skip_channels()
    residuals = [torch.zeros(2, ch, s, s) for ch, s in zip(chans, sizes, strict=True)]
    mid = torch.zeros(2, TINY.block_out_channels[-1], 8, 8)
    with torch.no_grad():
        base = tiny_unet(x, 3, context)
        same = tiny_unet(x, 3, context, down_residuals=residuals, mid_residual=mid)
        torch.testing.assert_close(same, base, rtol=0, atol=0)
        residuals[0] = torch.ones_like(residuals[0])
        before = list(residuals)
        moved = tiny_unet(x, 3, context, down_residuals=residuals)
        moved_mid = tiny_unet(x, 3, context, mid_residual=mid + 1)
    assert all(a is b for a, b in zip(residuals, before, strict=True))
    assert residuals[0].eq(1).all() and residuals[1].eq(0).all()
    assert not torch.allclose(moved, base) and not torch.allclose(moved_mid, base)
    with pytest.raises(ValueError, match="5 down_residuals for 6 skip"):
        tiny_unet(x, 3, context, down_residuals=residuals[:5])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attention": (True, True, False)}, "attention=.* one entry per block"),
        ({"num_heads": (8,)}, "num_heads=.* one entry per block"),
        ({"block_out_channels": (32, 48)}, "block_out_channels.1.=48 is not divisible by"),
        ({"num_heads": 5}, "32 is not divisible by 5 heads"),
        ({"layers_per_block": 0}, "layers_per_block=0"),
        ({"block_out_channels": ()}, "block_out_channels=()"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **changes)


def test_config_lists_become_tuples():
    cfg = UNetConfig(block_out_channels=[32, 64], num_heads=[4, 8], cross_attention_dim=32)
    assert cfg.block_out_channels == (32, 64) and cfg.num_heads == (4, 8)
    assert hash(cfg) == hash(dataclasses.replace(cfg))


SD15_CONFIG = {  # runwayml/stable-diffusion-v1-5 unet/config.json
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
SD21_CONFIG = {  # stabilityai/stable-diffusion-2-1 unet/config.json
    **SD15_CONFIG,
    "_diffusers_version": "0.10.0.dev0",
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "dual_cross_attention": False,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 96,
    "upcast_attention": True,
    "use_linear_projection": True,
}


def test_from_diffusers_reads_real_configs():
    assert UNetConfig.from_diffusers(SD15_CONFIG) == UNET_PRESETS["sd15"]
    assert UNetConfig.from_diffusers(SD21_CONFIG) == UNET_PRESETS["sd21"]
    inpaint = UNetConfig.from_diffusers({**SD15_CONFIG, "in_channels": 9})
    assert inpaint.in_channels == 9


def test_from_diffusers_uses_diffusers_defaults():
    cfg = UNetConfig.from_diffusers({"attention_head_dim": [5, 10, 20, 20]})
    assert cfg.cross_attention_dim == 1280 and cfg.sample_size is None


@pytest.mark.parametrize("preset", sorted(UNET_PRESETS))
def test_diffusers_config_round_trip(preset):
    cfg = UNET_PRESETS[preset]
    assert UNetConfig.from_diffusers(cfg.to_diffusers()) == cfg
    flipped = dataclasses.replace(TINY, attention=(False, True))
    assert UNetConfig.from_diffusers(flipped.to_diffusers()) == flipped


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"addition_embed_type": "text_time"}, "addition_embed_type='text_time'"),
        ({"addition_time_embed_dim": 256}, "addition_time_embed_dim=256"),
        ({"class_embed_type": "timestep"}, "class_embed_type='timestep'"),
        ({"num_class_embeds": 1000}, "num_class_embeds=1000"),
        ({"time_cond_proj_dim": 256}, "time_cond_proj_dim=256"),
        ({"only_cross_attention": [True, False, False, False]}, "only_cross_attention="),
        ({"transformer_layers_per_block": [[1, 2], [1, 2], 1, 1]}, "transformer_layers_per_block"),
        ({"layers_per_block": [1, 2, 2, 2]}, r"per-block layers_per_block=\[1, 2, 2, 2\]"),
        ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "mid_block_type="),
        ({"down_block_types": ["SimpleCrossAttnDownBlock2D"] * 4}, "SimpleCrossAttnDownBlock2D"),
        ({"up_block_types": ["UpBlock2D"] * 4}, "up_block_types="),
        ({"some_future_key": 3}, "some_future_key"),
    ],
)
def test_from_diffusers_rejects_unsupported(changes, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig.from_diffusers({**SD15_CONFIG, **changes})


def test_from_diffusers_rejects_sdxl():
    sdxl = {
        **SD15_CONFIG,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "projection_class_embeddings_input_dim": 2816,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    }
    with pytest.raises(ValueError, match="addition_embed_type"):
        UNetConfig.from_diffusers(sdxl)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "bias"),
    [(3, 1, 1, True), (3, 2, 1, True), (3, 2, 0, False), (1, 1, 0, True)],
)
def test_conv2d_gemm_path_matches_conv(monkeypatch, kernel, stride, padding, bias):
    """pilot's Conv2d runs weight-heavy CPU convs as im2col + GEMM; both paths agree."""
    conv = Conv2d(16, 24, kernel, stride=stride, padding=padding, bias=bias)
    x = torch.randn(2, 16, 9, 7)
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, stride, padding)
    monkeypatch.setattr(resnet, "GEMM_MIN_WEIGHTS_PER_PIXEL", 0)
    assert conv._gemm_output_size(x) == expected.shape[-2:]
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(resnet, "GEMM_MIN_WEIGHTS_PER_PIXEL", 10**9)
    assert conv._gemm_output_size(x) is None


@pytest.mark.parametrize(("stride", "padding"), [(1, 1), (2, 1), (2, 0), (1, 0)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_conv2d_prepacked_matches_conv(stride, padding, layout):
    """`prepack`: no-grad CPU calls on oneDNN-layout weights equal the plain convolution (a
    channels_last output), float32 and bfloat16; with autograd the plain path runs."""
    torch.manual_seed(0)
    conv = Conv2d(16, 24, 3, stride=stride, padding=padding)
    conv.prepack = True
    x = torch.randn(2, 16, 9, 7).to(memory_format=layout)
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, stride, padding)
    with torch.no_grad():
        out = conv(x)
        half = conv.bfloat16()(x.bfloat16()).float()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert ((half - expected).abs().max() / expected.abs().max()).item() < 2e-2
    out = conv.float()(x.requires_grad_())
    assert out.grad_fn is not None


@torch.no_grad()
def test_conv2d_prepacked_follows_weight_updates():
    """Weights changed in place (a `load_state_dict`) are packed again; so is a new input size."""
    conv = Conv2d(8, 8, 3, padding=1)
    conv.prepack = True
    x = torch.randn(1, 8, 6, 6)
    conv(x)
    conv.weight.mul_(2)
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, 1, 1)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    y = torch.randn(2, 8, 5, 4)
    expected = torch.nn.functional.conv2d(y, conv.weight, conv.bias, 1, 1)
    torch.testing.assert_close(conv(y), expected, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_conv2d_prepacked_takes_inference_tensor_weights():
    """Weights made under inference mode keep no version counter: they are packed all the same,
    and a `load_state_dict` of new ones is packed again."""
    conv = Conv2d(8, 8, 3, padding=1)
    conv.prepack = True
    assert conv.weight.is_inference()
    x = torch.randn(1, 8, 6, 6)
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, 1, 1)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    conv.load_state_dict({"weight": 2 * conv.weight, "bias": conv.bias})
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, 1, 1)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_geglu_without_grad_multiplies_in_the_projection_memory():
    """No backward to serve: the gate's product is written over the projection's first half
    (the SD 1.5 UNet's float32 peak at 256 px fell from 62.5 to 52.5 MiB of tensors)."""
    torch.manual_seed(0)
    geglu, x = GEGLU(8, 16), torch.randn(2, 5, 8)
    with torch.no_grad():
        fast = geglu(x)
    slow = geglu(x)
    assert torch.equal(fast, slow.detach())
    assert fast.untyped_storage().nbytes() == 2 * slow.untyped_storage().nbytes()  # proj's
    slow.sum().backward()  # the autograd path keeps what backward needs
    assert geglu.proj.weight.grad is not None


def test_ff_chunk_rows_splits_evenly_from_the_threshold(monkeypatch):
    monkeypatch.setattr(attention, "CHUNK_MIN_ELEMENTS", 1000)
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 400)
    assert ff_chunk_rows(99, 10) == 99  # 990 hidden elements: below the threshold, one chunk
    assert ff_chunk_rows(100, 10) == 34  # 1000 -> 3 chunks of at most 400: 34, 34, 32 tokens
    assert ff_chunk_rows(10, 1000) == 1  # a token wider than a chunk: one token each


def test_transformer_block_without_grad_adds_in_place_and_chunks_the_feed_forward(monkeypatch):
    """Without autograd the block's residuals add into its own sum and the feed-forward runs
    by chunks of tokens: same output (float64), input untouched, less memory alive at once
    (the SD 1.5 UNet's float32 peak at 512 px fell from 210 to 132.5 MiB of tensors)."""
    from experiments.bench.common import TensorMemory

    torch.manual_seed(0)
    block = BasicTransformerBlock(16, 2, 8, 12).double()
    x, context = torch.randn(2, 64, 16).double(), torch.randn(2, 3, 12).double()
    expected = block(x, context)  # autograd path: plain sums
    before = x.clone()
    peaks = {}
    for name, min_elements in [("whole", 10**9), ("chunked", 0)]:
        monkeypatch.setattr(attention, "CHUNK_MIN_ELEMENTS", min_elements)
        monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 16 * 64)  # hidden 128: 8 tokens each
        with torch.no_grad(), TensorMemory() as memory:
            out = block(x, context)
        torch.testing.assert_close(out, expected.detach(), rtol=1e-12, atol=1e-12)
        peaks[name] = memory.peak
    assert torch.equal(x, before)
    assert peaks["chunked"] < 0.5 * peaks["whole"], peaks  # 96 vs 224 KiB
