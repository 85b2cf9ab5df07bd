"""DCGAN generator and discriminator (Radford et al. 2016, "Unsupervised Representation Learning
with Deep Convolutional GANs"), for square images of 32 to 128 pixels.

The generator maps a latent `z ~ N(0, I)` of shape (B, latent_dim) to images in [-1, 1]; the
discriminator returns one logit per image (no sigmoid: the losses in `train/` take logits).
Both are stacks of 4x4 stride-2 (transposed) convolutions between 4x4 and the image side, so the
image side sets the depth: 32 px has 3 up/down stages, 64 px 4, 128 px 5. As in the paper, the
last generator stage outputs pixels directly and the first discriminator stage has no norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class DCGANConfig:
    """Architecture of a DCGAN pair. Defaults are a CPU-sized 64 px model."""

    image_size: int = 64  # square side in pixels: 32, 64 or 128
    channels: int = 3  # image channels
    latent_dim: int = 64  # size of the latent z
    g_channels: int = 32  # generator width at half resolution; doubles per stage towards 4x4
    d_channels: int = 32  # discriminator width at half resolution; doubles towards 4x4
    max_channels: int = 512  # cap on the width of the deep (low-resolution) stages
    d_norm: Literal["batch", "none"] = "batch"  # discriminator norm (the paper's is batch)
    minibatch_std: bool = False  # discriminator sees the batch's feature std at 4x4 (ProGAN)

    def __post_init__(self) -> None:
        if self.d_norm not in ("batch", "none"):
            raise ValueError(f"d_norm={self.d_norm!r} is not one of ('batch', 'none')")
        if self.image_size not in (32, 64, 128):
            raise ValueError(f"image_size={self.image_size} must be 32, 64 or 128")
        for name in ("channels", "latent_dim", "g_channels", "d_channels", "max_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")

    @property
    def num_stages(self) -> int:
        """Number of 2x up/down-sampling stages between 4x4 and the image side."""
        return int(math.log2(self.image_size)) - 2


DCGAN_PRESETS: dict[str, DCGANConfig] = {
    "tiny": DCGANConfig(image_size=32, latent_dim=8, g_channels=4, d_channels=4),
    "triangles64": DCGANConfig(),
    "dcgan64": DCGANConfig(latent_dim=100, g_channels=64, d_channels=64),  # the paper's sizes
    "dcgan128": DCGANConfig(image_size=128, latent_dim=100, g_channels=64, d_channels=64),
}


def _widths(base: int, stages: int, cap: int) -> list[int]:
    """Channel widths from half resolution down to 4x4: base, 2 base, 4 base, ... (capped)."""
    return [min(base * 2**i, cap) for i in range(stages)]


def init_gan_weights(module: nn.Module) -> None:
    """DCGAN's initialisation (also Pix2Pix's): conv weights N(0, 0.02), norm scales N(1, 0.02),
    zero biases. Use as `model.apply(init_gan_weights)`."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)) and module.weight is not None:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    """DCGAN generator: latent (B, latent_dim) -> image (B, channels, S, S) in [-1, 1]."""

    def __init__(self, cfg: DCGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = _widths(cfg.g_channels, cfg.num_stages, cfg.max_channels)[::-1]  # deep first
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(cfg.latent_dim, widths[0], 4, 1, 0, bias=False),  # (B, C, 4, 4)
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),  # doubles the side
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], cfg.channels, 4, 2, 1), nn.Tanh()]  # (B, C, S, S)
        self.net = nn.Sequential(*layers)
        self.apply(init_gan_weights)

    def forward(self, z: Tensor) -> Tensor:
        """Images (B, channels, S, S) in [-1, 1] from latents (B, latent_dim)."""
        if z.ndim != 2 or z.shape[1] != self.cfg.latent_dim:
            raise ValueError(
                f"latents have shape {tuple(z.shape)}, expected (B, {self.cfg.latent_dim})"
            )
        return self.net(z[:, :, None, None])

    def sample_latents(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """n standard-normal latents (n, latent_dim) on this model's device."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.cfg.latent_dim, generator=generator, device="cpu")
        return z.to(device)


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: image (B, channels, S, S) -> real/fake logit (B,).

    With `minibatch_std` (Karras et al. 2018, "Progressive Growing of GANs", section 3), the
    standard deviation of the 4x4 features over the batch, averaged to one number, is appended
    as an extra channel before the last convolution: a batch of near-identical fakes is easy to
    tell apart, which counters mode collapse. Logits then depend on the whole batch.
    """

    def __init__(self, cfg: DCGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = _widths(cfg.d_channels, cfg.num_stages, cfg.max_channels)
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.channels, widths[0], 4, 2, 1),  # (B, C, S/2, S/2), no norm (paper)
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, 4, 2, 1, bias=cfg.d_norm == "none"),  # halves the side
                nn.BatchNorm2d(c_out) if cfg.d_norm == "batch" else nn.Identity(),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        self.net = nn.Sequential(*layers)  # (B, w, 4, 4)
        self.head = nn.Conv2d(widths[-1] + int(cfg.minibatch_std), 1, 4, 1, 0)  # (B, 1, 1, 1)
        self.apply(init_gan_weights)

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B,) of images (B, channels, S, S) in [-1, 1] being real."""
        s, c = self.cfg.image_size, self.cfg.channels
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(
                f"images have shape {tuple(images.shape)}, expected (B, {c}, {s}, {s})"
            )
        h = self.net(images)
        if self.cfg.minibatch_std:
            std = h.float().std(dim=0, correction=0).mean() if len(h) > 1 else h.new_zeros(())
            h = torch.cat([h, std.to(h.dtype).expand(len(h), 1, *h.shape[2:])], dim=1)
        return self.head(h).flatten()
