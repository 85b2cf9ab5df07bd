"""Convolutional blocks shared by the UNet and the VAE: residual block, down- and upsampling."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ResnetBlock2D(nn.Module):
    """Pre-activation residual block (GroupNorm, SiLU, conv) x 2, as in DDPM / Stable Diffusion.

    An optional time embedding is projected to `out_channels` and added between the two convs.
    A 1x1 `conv_shortcut` maps the input when the channel count changes.

    Args:
        in_channels: Input channels.
        out_channels: Output channels (default: `in_channels`).
        temb_channels: Width of the time embedding, or None for a block without one (VAE).
        groups: GroupNorm groups of both norms.
        eps: GroupNorm epsilon.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        temb_channels: int | None = None,
        groups: int = 32,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        """Map (B, in, H, W) and an optional (B, temb_channels) embedding to (B, out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Downsample2D(nn.Module):
    """Stride-2 3x3 convolution that halves height and width.

    `padding=0` reproduces the VAE encoder's asymmetric padding: one zero row and column are
    added at the bottom and right only, as in the original CompVis autoencoder.

    Args:
        channels: Input channels.
        out_channels: Output channels (default: `channels`).
        padding: Symmetric padding of the conv (1 in the UNet, 0 in the VAE).
    """

    def __init__(self, channels: int, out_channels: int | None = None, *, padding: int = 1) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, C, H, W) to (B, out, ceil(H/2), ceil(W/2)); floor instead if `padding=0`."""
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution.

    Args:
        channels: Input channels.
        out_channels: Output channels (default: `channels`).
    """

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Map (B, C, H, W) to (B, out, 2H, 2W), or to `size` when given (odd skip shapes)."""
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
