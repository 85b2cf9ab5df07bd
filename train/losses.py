"""GAN losses on discriminator logits: vanilla (non-saturating), least squares, hinge.

Vanilla is the non-saturating loss of Goodfellow et al. 2014; "lsgan" is Mao et al. 2017 with
targets 0/1; "hinge" is Lim & Ye 2017 / Miyato et al. 2018. Each discriminator loss averages the
real and fake terms, so the three start at comparable scales.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

GANLoss = Literal["vanilla", "lsgan", "hinge"]
GAN_LOSSES: tuple[str, ...] = ("vanilla", "lsgan", "hinge")


def _check(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"loss={kind!r} is not one of {GAN_LOSSES}")


def discriminator_loss(kind: GANLoss, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator loss: push real logits up and fake logits down (mean over all logits)."""
    _check(kind)
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "vanilla":
        real, fake = F.softplus(-real_logits), F.softplus(fake_logits)  # -log D, -log(1-D)
    elif kind == "lsgan":
        real, fake = (real_logits - 1).square(), fake_logits.square()
    else:
        real, fake = F.relu(1 - real_logits), F.relu(1 + fake_logits)
    return 0.5 * (real.mean() + fake.mean())


def generator_loss(kind: GANLoss, fake_logits: Tensor) -> Tensor:
    """Generator (adversarial) loss on the discriminator's logits of generated images."""
    _check(kind)
    fake_logits = fake_logits.float()
    if kind == "vanilla":
        return F.softplus(-fake_logits).mean()  # non-saturating: -log D(G(z))
    if kind == "lsgan":
        return (fake_logits - 1).square().mean()
    return -fake_logits.mean()
