"""Stable Diffusion 1.x / 2.x conditional UNet (Rombach et al. 2022, "LDM"), written from scratch.

`UNet(cfg)(x, t, context)` equals diffusers' `UNet2DConditionModel(x, t,
encoder_hidden_states=context).sample`, and the two share state-dict names, so a diffusers
`unet/` folder loads by identity (`tests/parity/test_unet_vae_parity.py` checks both).

Layout: `conv_in`; down blocks of `layers_per_block` residual blocks (each followed by a
`SpatialTransformer` where `cfg.attention` says so) and a stride-2 conv except in the last
block; a mid block (resnet, transformer, resnet); up blocks mirroring the down blocks with one
extra resnet each, consuming the skip connections in reverse; GroupNorm, SiLU, `conv_out`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pilot.models import diffusers_config
from pilot.nn.attention import SpatialTransformer
from pilot.nn.embeddings import TimestepEmbedding, timestep_embedding
from pilot.nn.norms import GroupNorm
from pilot.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a Stable Diffusion 1.x/2.x UNet. Defaults are SD 1.5's."""

    in_channels: int = 4  # latent channels in (9 for inpainting models)
    out_channels: int = 4  # predicted channels (eps or v)
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)  # width of each resolution
    layers_per_block: int = 2  # resnets per down block (up blocks get one more)
    # Which down blocks carry cross-attention transformers; up blocks mirror them. None means
    # the SD layout: every block but the last (lowest resolution) one.
    attention: tuple[bool, ...] | None = None
    # Attention heads per block (int: same for all). SD 1.x: 8 everywhere (head width grows
    # with the block); SD 2.x: (5, 10, 20, 20), i.e. heads of 64 channels. The mid block uses
    # the last entry. diffusers' config calls this `attention_head_dim`: a historical misnomer
    # it keeps for compatibility (diffusers issue #2011); `from_diffusers` translates it.
    num_heads: int | tuple[int, ...] = 8
    cross_attention_dim: int = 768  # text-embedding width: 768 (CLIP L), 1024 (OpenCLIP H)
    use_linear_projection: bool = False  # transformer proj_in/out: Linear (SD 2.x) or 1x1 conv
    transformer_layers_per_block: int | tuple[int, ...] = 1  # transformer depth per block
    norm_num_groups: int = 32  # GroupNorm groups in resnets, transformers and the output
    norm_eps: float = 1e-5  # GroupNorm epsilon of resnets and the output norm
    flip_sin_to_cos: bool = True  # timestep features: cos half first (SD)
    freq_shift: int = 0  # timestep features: frequency denominator shift (SD: 0)
    # SD 2.1 (768-v) sets this; diffusers ignores it on its default SDPA path, and so do we
    # (fused SDPA kernels accumulate in float32). Kept so configs round-trip.
    upcast_attention: bool = False
    sample_size: int | None = 64  # latent side the model was trained at (metadata only)

    def __post_init__(self) -> None:
        per_block = ("block_out_channels", "attention", "num_heads", "transformer_layers_per_block")
        for name in per_block:
            if isinstance(getattr(self, name), list):  # lists from JSON / YAML
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        n = len(self.block_out_channels)
        if n == 0 or min(self.block_out_channels) <= 0:
            raise ValueError(f"block_out_channels={self.block_out_channels} must be positive")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block={self.layers_per_block} must be >= 1")
        for name in ("attention", "num_heads", "transformer_layers_per_block"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != n:
                raise ValueError(
                    f"{name}={value} needs one entry per block; "
                    f"block_out_channels={self.block_out_channels} has {n}"
                )
        for i, (ch, heads) in enumerate(zip(self.block_out_channels, self.heads(), strict=True)):
            if ch % self.norm_num_groups:
                raise ValueError(
                    f"block_out_channels[{i}]={ch} is not divisible by "
                    f"norm_num_groups={self.norm_num_groups}"
                )
            needs_attention = self.block_attention()[i] or i == n - 1  # mid block uses the last
            if needs_attention and (heads < 1 or ch % heads):
                raise ValueError(f"block_out_channels[{i}]={ch} is not divisible by {heads} heads")

    @property
    def time_embed_dim(self) -> int:
        """Width of the time embedding: 4x the first block's channels."""
        return 4 * self.block_out_channels[0]

    def block_attention(self) -> tuple[bool, ...]:
        """Whether each down block has cross-attention (`attention`, or the SD layout)."""
        if self.attention is not None:
            return self.attention
        n = len(self.block_out_channels)
        return tuple(i < n - 1 for i in range(n))

    def heads(self) -> tuple[int, ...]:
        """Attention heads of each block."""
        return _per_block(self.num_heads, len(self.block_out_channels))

    def depths(self) -> tuple[int, ...]:
        """Transformer blocks per `SpatialTransformer` of each block."""
        return _per_block(self.transformer_layers_per_block, len(self.block_out_channels))

    def skip_channels(self) -> tuple[int, ...]:
        """Channels of each skip connection, in the order of `UNet.forward`'s `down_residuals`."""
        chans = [self.block_out_channels[0]]
        for i, ch in enumerate(self.block_out_channels):
            chans += [ch] * self.layers_per_block
            if i < len(self.block_out_channels) - 1:
                chans.append(ch)  # the downsampler's output
        return tuple(chans)

    @classmethod
    def from_diffusers(cls, d: dict) -> UNetConfig:
        """Read a diffusers `UNet2DConditionModel` config.json dict.

        Raises:
            ValueError: naming the key and value of any setting this UNet does not implement
                (SDXL's `addition_embed_type`, class embeddings, other block types, ...).
        """
        return cls(**diffusers_config.unet_kwargs(d))

    def to_diffusers(self) -> dict:
        """The equivalent diffusers `UNet2DConditionModel` config (JSON-compatible)."""
        return diffusers_config.unet_dict(self)


def _per_block(value: int | tuple[int, ...], n: int) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,) * n


UNET_PRESETS: dict[str, UNetConfig] = {
    "sd15": UNetConfig(),
    "sd21": UNetConfig(
        num_heads=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
        upcast_attention=True,
        sample_size=96,
    ),
    # Like diffusers' test UNets: two small blocks, 8 heads; any number of blocks works.
    "tiny": UNetConfig(
        block_out_channels=(32, 64), cross_attention_dim=32, num_heads=8, sample_size=32
    ),
}


class DownBlock(nn.Module):
    """Residual blocks (each optionally followed by a transformer), then an optional downsampler.

    Args:
        cfg: UNet architecture.
        i: Index of the block in `cfg.block_out_channels` (0 = highest resolution).
    """

    def __init__(self, cfg: UNetConfig, i: int) -> None:
        super().__init__()
        chans = cfg.block_out_channels
        self.resnets = nn.ModuleList(
            _resnet(cfg, chans[max(i - 1, 0)] if j == 0 else chans[i], chans[i])
            for j in range(cfg.layers_per_block)
        )
        attention = cfg.block_attention()[i]
        self.attentions = _transformers(cfg, i, cfg.layers_per_block) if attention else None
        last = i == len(chans) - 1
        self.downsamplers = None if last else nn.ModuleList([Downsample2D(chans[i])])

    def forward(self, h: Tensor, emb: Tensor, context: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Return the block output and its skip connections, in order."""
        skips = []
        for j, resnet in enumerate(self.resnets):
            h = resnet(h, emb)
            if self.attentions is not None:
                h = self.attentions[j](h, context)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class UpBlock(nn.Module):
    """Residual blocks over [h, skip] concatenations (optionally with transformers), then 2x up.

    Args:
        cfg: UNet architecture.
        i: Index of the down block whose resolution and skips this block mirrors.
    """

    def __init__(self, cfg: UNetConfig, i: int) -> None:
        super().__init__()
        chans, layers = cfg.block_out_channels, cfg.layers_per_block + 1
        prev = chans[min(i + 1, len(chans) - 1)]  # output of the lower-resolution block
        # Skips are consumed in reverse: the last one comes from the next-higher block's input.
        skip = [chans[i]] * (layers - 1) + [chans[max(i - 1, 0)]]
        self.resnets = nn.ModuleList(
            _resnet(cfg, (prev if j == 0 else chans[i]) + skip[j], chans[i]) for j in range(layers)
        )
        self.attentions = _transformers(cfg, i, layers) if cfg.block_attention()[i] else None
        self.upsamplers = nn.ModuleList([Upsample2D(chans[i])]) if i > 0 else None

    def forward(
        self,
        h: Tensor,
        skips: Sequence[Tensor],
        emb: Tensor,
        context: Tensor,
        size: tuple[int, int] | None,
    ) -> Tensor:
        """Consume `skips` from the last one; upsample to `size` (the next skip's) at the end."""
        for j, resnet in enumerate(self.resnets):
            h = resnet(torch.cat([h, skips[-1 - j]], dim=1), emb)
            if self.attentions is not None:
                h = self.attentions[j](h, context)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, size)
        return h


class MidBlock(nn.Module):
    """Resnet, cross-attention transformer, resnet at the lowest resolution.

    Args:
        cfg: UNet architecture.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        ch = cfg.block_out_channels[-1]
        self.resnets = nn.ModuleList(_resnet(cfg, ch, ch) for _ in range(2))
        self.attentions = _transformers(cfg, len(cfg.block_out_channels) - 1, 1)

    def forward(self, h: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        """Map (B, C, h, w) to (B, C, h, w)."""
        h = self.resnets[0](h, emb)
        h = self.attentions[0](h, context)
        return self.resnets[1](h, emb)


def _resnet(cfg: UNetConfig, in_channels: int, out_channels: int) -> ResnetBlock2D:
    """A time-conditioned residual block with the UNet's norm settings."""
    return ResnetBlock2D(
        in_channels,
        out_channels,
        temb_channels=cfg.time_embed_dim,
        groups=cfg.norm_num_groups,
        eps=cfg.norm_eps,
    )


def _transformers(cfg: UNetConfig, i: int, count: int) -> nn.ModuleList:
    """`count` spatial transformers at the width, heads and depth of block `i`."""
    return nn.ModuleList(
        SpatialTransformer(
            cfg.block_out_channels[i],
            cfg.heads()[i],
            cfg.cross_attention_dim,
            depth=cfg.depths()[i],
            groups=cfg.norm_num_groups,
            linear_projection=cfg.use_linear_projection,
        )
        for _ in range(count)
    )


class UNet(nn.Module):
    """Stable Diffusion 1.x/2.x conditional UNet; predicts eps or v from a noisy latent.

    Equal to diffusers' `UNet2DConditionModel` with the same config and state dict.

    Args:
        cfg: Architecture (see `UNET_PRESETS`).
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        chans, n = cfg.block_out_channels, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], cfg.time_embed_dim)
        self.down_blocks = nn.ModuleList(DownBlock(cfg, i) for i in range(n))
        self.mid_block = MidBlock(cfg)
        # Up block u works at the resolution of down block i = n - 1 - u.
        self.up_blocks = nn.ModuleList(UpBlock(cfg, i) for i in reversed(range(n)))
        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, chans[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(chans[0], cfg.out_channels, 3, padding=1)

    def time_features(self, t: Tensor | float, batch: int, device: torch.device) -> Tensor:
        """Sinusoidal features (B, C0) of timesteps `t`: a number, a 0-d, (1,) or (B,) tensor."""
        t = torch.as_tensor(t, device=device).reshape(-1).expand(batch)
        return timestep_embedding(
            t,
            self.cfg.block_out_channels[0],
            flip_sin_to_cos=self.cfg.flip_sin_to_cos,
            freq_shift=self.cfg.freq_shift,
        )

    def forward(
        self,
        x: Tensor,
        t: Tensor | float,
        context: Tensor,
        *,
        down_residuals: Sequence[Tensor] | None = None,
        mid_residual: Tensor | None = None,
    ) -> Tensor:
        """Predict the noise (or v) of latents `x` at timestep `t` given text embeddings.

        Args:
            x: Noisy latents, (B, in_channels, H, W); any H, W (odd sizes are handled).
            t: Discrete timestep(s) in [0, 1000): a number, a 0-d tensor, or (1,) / (B,).
            context: Text embeddings, (B, S, cross_attention_dim).
            down_residuals: ControlNet residuals, one per skip connection
                (`cfg.skip_channels()` channels each, same sizes as the skips), added to the
                skips before the up path. Not modified.
            mid_residual: ControlNet residual added to the mid-block output.

        Returns:
            (B, out_channels, H, W) in the dtype of `x`.
        """
        # The features are float32; cast to the activations' dtype (fp16/bf16 models).
        emb = self.time_embedding(self.time_features(t, x.shape[0], x.device).to(x.dtype))
        h = self.conv_in(x)  # (B, C0, H, W)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb, context)
            skips += block_skips
        if down_residuals is not None:
            if len(down_residuals) != len(skips):
                raise ValueError(
                    f"got {len(down_residuals)} down_residuals for {len(skips)} skip connections"
                )
            skips = [s + r for s, r in zip(skips, down_residuals, strict=True)]
        h = self.mid_block(h, emb, context)  # (B, C_last, H / 2^(n-1), W / 2^(n-1))
        if mid_residual is not None:
            h = h + mid_residual
        for block in self.up_blocks:
            k = len(block.resnets)
            block_skips, skips = skips[-k:], skips[:-k]
            # Upsample to the next skip's size: 2x, or the right size for odd inputs.
            size = tuple(skips[-1].shape[-2:]) if block.upsamplers is not None else None
            h = block(h, block_skips, emb, context, size)
        return self.conv_out(F.silu(self.conv_norm_out(h)))  # (B, out_channels, H, W)
