"""Pix2Pix U-Net and PatchGAN: depth from image size, heads, skips, dropout, config errors."""

import pytest
import torch
import torch.nn.functional as F

from pilot.models.pix2pix import (
    PIX2PIX_PRESETS,
    PatchDiscriminator,
    PatchGANConfig,
    Pix2PixConfig,
    ResizeConv,
    UNetGenerator,
    _up,
)

TINY = dict(base_channels=2, max_mult=2)


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
@pytest.mark.parametrize("size, depth", [(64, 6), (128, 7), (256, 8)])
def test_depth_follows_image_size(size, depth, upsample):
    g = UNetGenerator(Pix2PixConfig(image_size=size, upsample=upsample, **TINY))
    assert len(g.down) == depth and len(g.up) == depth - 1
    assert g(torch.randn(1, 3, size, size)).shape == (1, 3, size, size)


def test_heads_are_separate_channels():
    cfg = Pix2PixConfig(
        image_size=64, in_channels=1, head_names=("texture", "fog"), head_channels=(3, 1), **TINY
    )
    g = UNetGenerator(cfg).eval()
    out = g(torch.randn(2, 1, 64, 64))
    heads = g.split_heads(out)
    assert out.shape == (2, 4, 64, 64) and heads["fog"].shape == (2, 1, 64, 64)
    assert out.abs().max() <= 1
    with torch.no_grad():  # zeroing the fog head changes only the fog channel
        g.heads["fog"][1].weight.zero_()
        g.heads["fog"][1].bias.zero_()
    out2 = g(torch.randn(2, 1, 64, 64).copy_(torch.zeros(1)))
    assert torch.all(out2[:, 3] == 0)


@pytest.mark.parametrize("kind, pattern", [("transpose", True), ("resize", False)])
def test_only_transposed_convolutions_draw_a_checkerboard_on_a_flat_input(kind, pattern):
    from train.metrics import checkerboard

    torch.manual_seed(0)
    up = _up(kind, 4, 3, bias=False)
    out = up(torch.ones(2, 4, 16, 16))[..., 2:-2, 2:-2]  # away from the zero padding
    assert out.shape == (2, 3, 28, 28)
    amplitude = checkerboard(out)
    if pattern:  # even and odd output pixels take different taps of the 4x4 kernel
        assert amplitude > 0.2 * out.abs().mean().item()
    else:  # every pixel takes all nine taps of the same constant
        assert amplitude < 1e-6 < out.abs().mean().item()


def test_resize_conv_is_nearest_resize_then_a_3x3_convolution():
    torch.manual_seed(0)
    layer = ResizeConv(5, 4).double()
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    upsampled = F.interpolate(x, scale_factor=2, mode="nearest")
    expected = F.conv2d(upsampled, layer.weight, layer.bias, padding=1)  # zero padding included
    assert torch.allclose(layer(x), expected, atol=1e-12)
    assert layer.weight.shape == (4, 5, 3, 3)  # a 3x3 convolution's weights


def test_checkerboard_known_values():
    from train.metrics import checkerboard

    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    smooth = torch.sin(x / 5 + y / 7)[None, None]
    board = 0.1 * (1 - 2 * ((x + y) % 2))[None, None]  # +-0.1 on alternate pixels
    assert checkerboard(smooth) < 0.01
    assert checkerboard(smooth + board) == pytest.approx(0.1, abs=0.01)
    assert checkerboard(smooth + board, period=4) == pytest.approx(0.1, abs=0.01)


def test_dropout_is_noise_in_training_and_optional_in_eval():
    x = torch.randn(2, 3, 64, 64)
    g = UNetGenerator(Pix2PixConfig(image_size=64, norm="instance", **TINY))
    g.eval()
    assert torch.equal(g(x), g(x))
    cfg = Pix2PixConfig(image_size=64, norm="instance", dropout_in_eval=True, **TINY)
    noisy = UNetGenerator(cfg)
    noisy.eval()
    assert not torch.equal(noisy(x), noisy(x))


def test_larger_inputs_run_fully_convolutionally():
    g = UNetGenerator(Pix2PixConfig(image_size=64, **TINY)).eval()
    assert g(torch.randn(1, 3, 128, 192)).shape == (1, 3, 128, 192)
    with pytest.raises(ValueError, match="multiples of 64"):
        g(torch.randn(1, 3, 100, 100))


@pytest.mark.parametrize("n_layers, side", [(1, 30), (3, 6)])
def test_patchgan_receptive_grid(n_layers, side):
    d = PatchDiscriminator(PatchGANConfig(in_channels=4, base_channels=2, n_layers=n_layers))
    assert d(torch.randn(2, 4, 64, 64)).shape == (2, 1, side, side)


def test_pixelgan_is_per_pixel():
    d = PatchDiscriminator(PatchGANConfig(in_channels=4, base_channels=2, kind="pixel")).eval()
    x = torch.randn(1, 4, 8, 8)
    y = d(x)
    x2 = x.clone()
    x2[..., 0, 0] += 1  # one pixel changed: only its logit changes
    changed = (d(x2) != y).flatten().nonzero().flatten().tolist()
    assert y.shape == (1, 1, 8, 8) and changed == [0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 96}, "image_size=96"),
        ({"head_names": ("a", "b")}, "same length"),
        ({"norm": "layer"}, "norm='layer'"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"upsample": "bilinear"}, "upsample='bilinear'"),
    ],
)
def test_bad_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Pix2PixConfig(**kwargs)


def test_presets_and_yaml_lists():
    assert PIX2PIX_PRESETS["walls128"].out_channels == 4
    assert Pix2PixConfig(head_names=["x"], head_channels=[2]).head_channels == (2,)
    with pytest.raises(ValueError, match="kind='voxel'"):
        PatchGANConfig(kind="voxel")
