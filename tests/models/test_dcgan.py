"""DCGAN generator/discriminator: shapes per image size, config validation, input checks."""

import pytest
import torch

from pilot.models.dcgan import DCGAN_PRESETS, DCGANConfig, DCGANDiscriminator, DCGANGenerator


@pytest.mark.parametrize("size", [32, 64, 128])
def test_generator_and_discriminator_shapes(size):
    cfg = DCGANConfig(image_size=size, latent_dim=8, g_channels=4, d_channels=4)
    g, d = DCGANGenerator(cfg), DCGANDiscriminator(cfg)
    assert cfg.num_stages == {32: 3, 64: 4, 128: 5}[size]
    images = g(g.sample_latents(3))
    assert images.shape == (3, 3, size, size)
    assert images.abs().max() <= 1.0
    assert d(images).shape == (3,)


def test_presets_build():
    g = DCGANGenerator(DCGAN_PRESETS["tiny"])
    assert g(torch.randn(2, 8)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"image_size": 48}, "image_size=48"), ({"latent_dim": 0}, "latent_dim=0")],
)
def test_bad_config_names_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DCGANConfig(**kwargs)


def test_wrong_input_shapes_are_named():
    cfg = DCGAN_PRESETS["tiny"]
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        DCGANGenerator(cfg)(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        DCGANDiscriminator(cfg)(torch.randn(2, 3, 64, 64))
