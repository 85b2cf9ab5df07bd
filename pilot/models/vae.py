"""Stable Diffusion's KL autoencoder (Rombach et al. 2022, "LDM", section 3.1), from scratch.

`AutoencoderKL(cfg).encode(images).mean` and `.decode(latents)` equal diffusers'
`AutoencoderKL.encode(images).latent_dist.mean` and `.decode(latents).sample`; state-dict names
are diffusers' (`encoder.*`, `decoder.*`, `quant_conv`, `post_quant_conv`).

Images are in [-1, 1]. Latents here are UNSCALED: the diffusion model sees
`latents * cfg.scaling_factor`, and the pipeline applies that factor, not this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pilot.models import diffusers_config
from pilot.nn.attention import SelfAttention2D
from pilot.nn.norms import GroupNorm
from pilot.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a KL autoencoder. Defaults are SD 1.x/2.x's (f=8, 4 latent channels)."""

    in_channels: int = 3  # image channels
    out_channels: int = 3  # reconstructed image channels
    latent_channels: int = 4  # channels of the latent z
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # downsample 2x between blocks
    layers_per_block: int = 2  # resnets per encoder block (decoder blocks get one more)
    norm_num_groups: int = 32  # GroupNorm groups everywhere (epsilon is 1e-6)
    scaling_factor: float = 0.18215  # latent scale the UNet was trained with (applied outside)
    force_upcast: bool = True  # hint for pipelines: run this VAE in float32 under fp16
    sample_size: int | None = 512  # image side the model was trained at (metadata only)

    def __post_init__(self) -> None:
        if isinstance(self.block_out_channels, list):  # lists from JSON / YAML
            object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        if not self.block_out_channels or min(self.block_out_channels) <= 0:
            raise ValueError(f"block_out_channels={self.block_out_channels} must be positive")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block={self.layers_per_block} must be >= 1")
        for i, ch in enumerate(self.block_out_channels):
            if ch % self.norm_num_groups:
                raise ValueError(
                    f"block_out_channels[{i}]={ch} is not divisible by "
                    f"norm_num_groups={self.norm_num_groups}"
                )

    @property
    def downsample_factor(self) -> int:
        """Image side / latent side (8 for SD)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, d: dict) -> VAEConfig:
        """Read a diffusers `AutoencoderKL` config.json dict.

        Raises:
            ValueError: naming the key and value of any setting this VAE does not implement
                (SD3/Flux's `shift_factor`, no quant convs, other block types, ...).
        """
        return cls(**diffusers_config.vae_kwargs(d))

    def to_diffusers(self) -> dict:
        """The equivalent diffusers `AutoencoderKL` config (JSON-compatible)."""
        return diffusers_config.vae_dict(self)


VAE_PRESETS: dict[str, VAEConfig] = {
    "sd15": VAEConfig(),
    "sd21": VAEConfig(sample_size=768),  # same architecture and scaling factor as SD 1.x
    # Like diffusers' test VAEs: two blocks (downsample factor 2), one resnet per block.
    "tiny": VAEConfig(block_out_channels=(32, 64), layers_per_block=1, sample_size=32),
}


class DiagonalGaussian:
    """Diagonal Gaussian posterior q(z | x) predicted by the encoder.

    Args:
        moments: (B, 2 * latent_channels, h, w): mean and log-variance stacked on channels.
            The log-variance is clamped to [-30, 20] as in the original LDM code.
    """

    def __init__(self, moments: Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(
        self, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """Draw z = mean + std * noise, the reparameterised posterior sample.

        Args:
            generator: Source of the standard-normal noise (on its own device), if not given.
            noise: The noise itself, shaped like `mean`; takes precedence over `generator`.
        """
        if noise is None:
            device = generator.device if generator is not None else self.mean.device
            noise = torch.randn(
                self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype
            )
        return self.mean + self.std * noise.to(self.mean.device, self.mean.dtype)

    def mode(self) -> Tensor:
        """The most likely latent: the mean."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per item, summed over latent dimensions: shape (B,)."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class VAEMidBlock(nn.Module):
    """Resnet, single-head self-attention, resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(channels, groups=groups) for _ in range(2))
        self.attentions = nn.ModuleList([SelfAttention2D(channels, groups=groups)])

    def forward(self, h: Tensor) -> Tensor:
        """Map (B, C, h, w) to (B, C, h, w)."""
        return self.resnets[1](self.attentions[0](self.resnets[0](h)))


class EncoderBlock(nn.Module):
    """Resnets, then (except in the last block) a stride-2 conv with asymmetric padding."""

    def __init__(self, in_channels: int, channels: int, layers: int, groups: int, down: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if j == 0 else channels, channels, groups=groups)
            for j in range(layers)
        )
        self.downsamplers = nn.ModuleList([Downsample2D(channels, padding=0)]) if down else None

    def layers(self) -> list[nn.Module]:
        """The modules `forward` applies, in order (see `Decoder.forward` for why)."""
        return [*self.resnets, *(self.downsamplers or [])]

    def forward(self, h: Tensor) -> Tensor:
        """Map (B, C_in, H, W) to (B, C, H/2, W/2), or (B, C, H, W) in the last block."""
        return _chain(self.layers(), h)


class DecoderBlock(nn.Module):
    """Resnets, then (except in the last block) nearest 2x upsampling and a conv."""

    def __init__(self, in_channels: int, channels: int, layers: int, groups: int, up: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if j == 0 else channels, channels, groups=groups)
            for j in range(layers)
        )
        self.upsamplers = nn.ModuleList([Upsample2D(channels, phases=True)]) if up else None

    def layers(self) -> list[nn.Module]:
        """The modules `forward` applies, in order (see `Decoder.forward` for why)."""
        return [*self.resnets, *(self.upsamplers or [])]

    def forward(self, h: Tensor) -> Tensor:
        """Map (B, C_in, H, W) to (B, C, 2H, 2W), or (B, C, H, W) in the last block."""
        return _chain(self.layers(), h)


def _chain(layers: list[nn.Module], h: Tensor) -> Tensor:
    """Apply `layers` in turn. Each input is freed as soon as the next layer has returned."""
    for layer in layers:
        h = layer(h)
    return h


class Encoder(nn.Module):
    """Image (B, in, H, W) -> posterior moments (B, 2 * latent, H/f, W/f)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        chans, n, groups = cfg.block_out_channels, len(cfg.block_out_channels), cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            EncoderBlock(chans[max(i - 1, 0)], chans[i], cfg.layers_per_block, groups, i < n - 1)
            for i in range(n)
        )
        self.mid_block = VAEMidBlock(chans[-1], groups)
        self.conv_norm_out = GroupNorm(groups, chans[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(chans[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Map images to posterior moments (before `quant_conv`)."""
        blocks = [layer for block in self.down_blocks for layer in block.layers()]
        h = _chain([self.conv_in, *blocks, self.mid_block], x)  # flat: see `Decoder.forward`
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class Decoder(nn.Module):
    """Latents (B, latent, h, w) -> images (B, out, f h, f w)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        chans, n, groups = cfg.block_out_channels, len(cfg.block_out_channels), cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, chans[-1], 3, padding=1)
        self.mid_block = VAEMidBlock(chans[-1], groups)
        self.up_blocks = nn.ModuleList(
            DecoderBlock(
                chans[min(i + 1, n - 1)], chans[i], cfg.layers_per_block + 1, groups, i > 0
            )
            for i in reversed(range(n))
        )
        self.conv_norm_out = GroupNorm(groups, chans[0], eps=1e-6)
        self.conv_out = nn.Conv2d(chans[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        """Map latents (after `post_quant_conv`) to images.

        The blocks' layers run in one flat chain: looping over blocks would keep each block's
        input referenced here while the block runs, and the last block's input (256 channels
        at full resolution for SD) would stay alive through all its resnets. Without autograd
        the full-resolution resnets also run by bands of rows and the upsamplings by phases
        (`pilot.nn.resnet`): SD 1.5's decode at 512 px peaks at 450 MiB of float32 tensors
        (768 with block loops and plain resnets).
        """
        blocks = [layer for block in self.up_blocks for layer in block.layers()]
        h = _chain([self.conv_in, self.mid_block, *blocks], z)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder of Stable Diffusion: images <-> unscaled latents.

    Args:
        cfg: Architecture (see `VAE_PRESETS`).
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)

    def encode(self, images: Tensor) -> DiagonalGaussian:
        """Posterior over latents (B, latent, H/f, W/f) of images (B, in, H, W) in [-1, 1]."""
        return DiagonalGaussian(self.quant_conv(self.encoder(images)))

    def decode(self, latents: Tensor) -> Tensor:
        """Images (B, out, 8h, 8w), nominally in [-1, 1] (not clamped), from unscaled latents."""
        return self.decoder(self.post_quant_conv(latents))
