"""ControlNet model: config handling, from_unet, scales, global pooling, channel order, errors.
Parity with diffusers lives in tests/parity/test_controlnet_parity.py."""

import dataclasses

import pytest
import torch

from pilot.models.controlnet import CONTROLNET_PRESETS, ControlNet, ControlNetConfig
from pilot.models.unet import UNET_PRESETS, UNet

TINY = CONTROLNET_PRESETS["tiny"]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = ControlNet(TINY).eval()
    with torch.no_grad():
        for p in [
            *model.controlnet_down_blocks.parameters(),
            *model.controlnet_mid_block.parameters(),
        ]:
            p.normal_(0, 0.5)
    return model


def inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 6, 6, generator=g)
    return (
        x,
        torch.tensor([20.0, 800.0][:batch]),
        torch.randn(batch, 7, 32, generator=g),
        torch.rand(batch, 3, 48, 48, generator=g),
    )


def test_config_round_trip_and_validation():
    for cfg in CONTROLNET_PRESETS.values():
        assert ControlNetConfig.from_diffusers(cfg.to_diffusers()) == cfg
        assert cfg.unet.sample_size is None and cfg.downscale == 8
    assert ControlNetConfig(unet=UNET_PRESETS["tiny"], hint_channels=[8, 16]).hint_channels == (
        8,
        16,
    )
    with pytest.raises(ValueError, match="hint_channels"):
        ControlNetConfig(hint_channels=())
    with pytest.raises(ValueError, match="channel_order='yuv'"):
        ControlNetConfig(channel_order="yuv")
    with pytest.raises(ValueError, match="class_embed_type"):
        ControlNetConfig.from_diffusers(TINY.to_diffusers() | {"class_embed_type": "timestep"})


def test_from_unet_copies_the_encoder_on_the_unets_dtype():
    torch.manual_seed(0)
    unet = UNet(UNET_PRESETS["tiny"]).to(torch.bfloat16)
    net = ControlNet.from_unet(unet, hint_channels=(8, 16, 32, 64))
    assert net.cfg.hint_channels == (8, 16, 32, 64) and net.cfg.unet == TINY.unet
    assert next(net.parameters()).dtype == torch.bfloat16
    ours = net.state_dict()
    for name, value in unet.state_dict().items():
        if name.startswith(("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")):
            assert torch.equal(ours[name], value), name
    zero = [*net.controlnet_down_blocks.parameters(), *net.controlnet_mid_block.parameters()]
    assert all(not p.any() for p in zero)


def test_residual_shapes_scales_and_guess_mode(net):
    x, t, context, image = inputs()
    with torch.no_grad():
        down, mid = net(x, t, context, image)
        assert [r.shape[1] for r in down] == list(TINY.unet.skip_channels())
        assert mid.shape == (2, 64, 3, 3)
        half, half_mid = net(x, t, context, image, scale=torch.tensor([0.5, 0.0]))
        torch.testing.assert_close(half[0][0], 0.5 * down[0][0])
        assert not half[0][1].any() and not half_mid[1].any()
        guess, guess_mid = net(x, t, context, image, guess_mode=True)
        scales = torch.logspace(-1, 0, len(down) + 1)
        for r, g, s in zip(down, guess, scales, strict=False):
            torch.testing.assert_close(g, r * s)
        torch.testing.assert_close(guess_mid, mid)  # the mid block gets scale 1


def test_hint_bgr_and_global_pool(net):
    x, t, context, image = inputs()
    with torch.no_grad():
        down, mid = net(x, t, context, image)
        same, _ = net(x, t, context, hint=net.embed_hint(image))
        assert all(torch.equal(a, b) for a, b in zip(down, same, strict=True))
        bgr = ControlNet(dataclasses.replace(TINY, channel_order="bgr")).eval()
        bgr.load_state_dict(net.state_dict())
        flipped, _ = bgr(x, t, context, image.flip(1))
        torch.testing.assert_close(flipped[3], down[3])
        pooled = ControlNet(dataclasses.replace(TINY, global_pool=True)).eval()
        pooled.load_state_dict(net.state_dict())
        p_down, p_mid = pooled(x, t, context, image)
        torch.testing.assert_close(p_down[2], down[2].mean(dim=(2, 3), keepdim=True))
        assert p_mid.shape == (2, 64, 1, 1)


def test_bad_inputs(net):
    x, t, context, image = inputs()
    with pytest.raises(ValueError, match="exactly one of `image` and `hint`"):
        net(x, t, context)
    with torch.no_grad(), pytest.raises(ValueError, match="8x the latents"):
        net(x, t, context, image[..., :40, :40])
