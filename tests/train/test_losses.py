"""GAN losses and image metrics: known values and baselines."""

import math

import pytest
import torch

from train.losses import discriminator_loss, generator_loss
from train.metrics import input_copy, mean_image, pearson, psnr


@pytest.mark.parametrize("kind", ["vanilla", "lsgan", "hinge"])
def test_discriminator_loss_is_lower_when_it_is_right(kind):
    right = discriminator_loss(kind, torch.full((4,), 3.0), torch.full((4,), -3.0))
    wrong = discriminator_loss(kind, torch.full((4,), -3.0), torch.full((4,), 3.0))
    assert right < wrong
    assert generator_loss(kind, torch.ones(4)) < generator_loss(kind, -torch.ones(4))


def test_known_values():
    zero = torch.zeros(3)
    assert discriminator_loss("vanilla", zero, zero).item() == pytest.approx(math.log(2))
    assert discriminator_loss("hinge", zero, zero).item() == pytest.approx(1.0)
    assert discriminator_loss("lsgan", zero, zero).item() == pytest.approx(0.5)
    assert generator_loss("hinge", torch.tensor([2.0])).item() == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="loss='wgan'"):
        generator_loss("wgan", zero)


def test_metrics():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert psnr(x, x) == float("inf")
    assert psnr(torch.ones(1, 1, 2, 2), -torch.ones(1, 1, 2, 2)) == pytest.approx(0.0)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0, abs=1e-6)
    assert pearson(x, torch.zeros_like(x)) == 0.0
    assert input_copy(torch.zeros(2, 1, 4, 4), 3).shape == (2, 3, 4, 4)
    assert mean_image(torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)]), 3).mean() == 0.5
