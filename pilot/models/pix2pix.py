"""Pix2Pix U-Net generator and PatchGAN / pixel discriminators (Isola et al. 2017,
"Image-to-Image Translation with Conditional Adversarial Networks").

The generator halves the image side with 4x4 stride-2 convolutions down to 1x1 (so the image side
sets the depth: 7 levels at 128 px, 8 at 256 px) and climbs back with transposed convolutions,
concatenating the encoder feature of the same side at each level (skip connections). Dropout in
the innermost decoder levels is the paper's only noise source; `dropout_in_eval` keeps it at
inference as the paper does. The last layer is split into named heads, e.g. `texture` (3
channels) and `fog` (1 channel), each its own transposed convolution + tanh, so the channels of
different meaning are predicted separately (as the seed did) and can be weighted separately.
Images are in [-1, 1].

`upsample="resize"` climbs with nearest-neighbour 2x resizing + a 3x3 convolution instead of the
4x4 stride-2 transposed convolutions (Odena et al. 2016, "Deconvolution and Checkerboard
Artifacts"): every output pixel then gets the same number of kernel taps, so the decoder has no
built-in period-2 pattern to unlearn (`train.metrics.checkerboard` measures what is left).
`ResizeConv` computes it as the equal transposed convolution, at a transposed convolution's cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pilot.models.dcgan import init_gan_weights

Norm = Literal["batch", "instance"]
Upsample = Literal["transpose", "resize"]
UPSAMPLES = ("transpose", "resize")


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.InstanceNorm2d(channels, affine=True)


def _check_norm(norm: str) -> None:
    if norm not in ("batch", "instance"):
        raise ValueError(f"norm={norm!r} is not one of ('batch', 'instance')")


def _up(kind: Upsample, c_in: int, c_out: int, *, bias: bool) -> nn.Module:
    """A layer that doubles the side: a 4x4 stride-2 transposed convolution, or resize + 3x3."""
    if kind == "transpose":
        return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias)
    return ResizeConv(c_in, c_out, bias=bias)


# Which of a 3x3 kernel's rows (columns) reach each of the 4 taps of the equivalent stride-2
# transposed convolution: nearest 2x then 3x3 sees input rows i-1, i, i, i+1 around output 2i+a.
_RESIZE_TAPS = torch.tensor([[0.0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]])


class ResizeConv(nn.Conv2d):
    """Nearest-neighbour 2x resize then a 3x3 convolution (padding 1), computed as the equal
    4x4 stride-2 transposed convolution whose kernel sums the 3x3 taps each output phase sees.

    The weights are the 3x3 convolution's (a `nn.Conv2d`'s, (out, in, 3, 3)), so every output
    pixel gets all nine taps of the same kernel (no checkerboard); the work is a transposed
    convolution's: 4 taps per output pixel instead of 9 on a 4x larger map.
    """

    def __init__(self, c_in: int, c_out: int, *, bias: bool = True) -> None:
        super().__init__(c_in, c_out, 3, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in, H, W) -> (B, out, 2H, 2W)."""
        taps = _RESIZE_TAPS.to(self.weight)
        kernel = torch.einsum("kr,oirc,lc->iokl", taps, self.weight, taps)  # (in, out, 4, 4)
        return F.conv_transpose2d(x, kernel, self.bias, stride=2, padding=1)


@dataclass(frozen=True)
class Pix2PixConfig:
    """Architecture of the U-Net generator. Defaults are the paper's 256 px model, one RGB head."""

    image_size: int = 256  # square side, a power of two in 64..512; sets the depth
    in_channels: int = 3  # condition channels (1 for hatching, 3 for RGB)
    head_names: tuple[str, ...] = ("image",)  # one output head per name ...
    head_channels: tuple[int, ...] = (3,)  # ... with this many channels each
    base_channels: int = 64  # width at the outermost level; doubles per level up to 8x
    max_mult: int = 8  # width cap, as a multiple of base_channels
    norm: Norm = "batch"
    dropout: float = 0.5  # dropout probability in the innermost decoder levels
    dropout_levels: int = 3  # how many innermost decoder levels (below the bottleneck) drop out
    dropout_in_eval: bool = False  # keep dropout at inference (the paper's test-time noise)
    upsample: Upsample = "transpose"  # the paper's; "resize" = nearest 2x + 3x3 convolution

    def __post_init__(self) -> None:
        for name in ("head_names", "head_channels"):
            if isinstance(getattr(self, name), list):  # lists from JSON / YAML
                object.__setattr__(self, name, tuple(getattr(self, name)))
        s = self.image_size
        if s < 64 or s > 512 or s & (s - 1):
            raise ValueError(f"image_size={s} must be a power of two in 64..512")
        if len(self.head_names) != len(self.head_channels) or not self.head_names:
            raise ValueError(
                f"head_names={self.head_names} and head_channels={self.head_channels} must be "
                f"non-empty and of the same length"
            )
        if len(set(self.head_names)) != len(self.head_names) or min(self.head_channels) < 1:
            raise ValueError(f"heads {self.head_names} / {self.head_channels}: unique, >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        _check_norm(self.norm)
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"upsample={self.upsample!r} is not one of {UPSAMPLES}")

    @property
    def depth(self) -> int:
        """Number of down/up levels: the side goes from image_size to 1."""
        return int(math.log2(self.image_size))

    @property
    def out_channels(self) -> int:
        """Output channels of all heads together."""
        return sum(self.head_channels)


PIX2PIX_PRESETS: dict[str, Pix2PixConfig] = {
    "tiny": Pix2PixConfig(image_size=64, base_channels=4, max_mult=2),
    "pix2pix256": Pix2PixConfig(),
    # The seed's conditioner: hatching (1 channel) in, texture (RGB) and fog (1 channel) out.
    "walls128": Pix2PixConfig(
        image_size=128,
        in_channels=1,
        head_names=("texture", "fog"),
        head_channels=(3, 1),
        base_channels=32,
    ),
}


class UNetGenerator(nn.Module):
    """Pix2Pix U-Net: condition (B, in_channels, S, S) -> heads concatenated (B, out, S, S)."""

    def __init__(self, cfg: Pix2PixConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.depth
        widths = [cfg.base_channels * min(2**i, cfg.max_mult) for i in range(n)]  # per level
        self.down = nn.ModuleList()
        for i in range(n):
            c_in = cfg.in_channels if i == 0 else widths[i - 1]
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(c_in, widths[i], 4, 2, 1, bias=i in (0, n - 1)))
            if 0 < i < n - 1:  # no norm at the outermost level and the 1x1 bottleneck
                layers.append(_norm(cfg.norm, widths[i]))
            self.down.append(nn.Sequential(*layers))
        self.up = nn.ModuleList()
        for i in reversed(range(1, n)):  # decoder levels from the bottleneck outwards
            c_in = widths[i] if i == n - 1 else 2 * widths[i]  # skip concatenated below the top
            self.up.append(
                nn.Sequential(
                    nn.ReLU(),
                    _up(cfg.upsample, c_in, widths[i - 1], bias=False),
                    _norm(cfg.norm, widths[i - 1]),
                )
            )
        self.heads = nn.ModuleDict(
            {
                name: nn.Sequential(nn.ReLU(), _up(cfg.upsample, 2 * widths[0], ch, bias=True))
                for name, ch in zip(cfg.head_names, cfg.head_channels, strict=True)
            }
        )
        self.apply(init_gan_weights)

    def forward(self, x: Tensor) -> Tensor:
        """All heads (B, sum(head_channels), S, S) in [-1, 1], concatenated in head order."""
        c, s = self.cfg.in_channels, self.cfg.image_size
        if x.ndim != 4 or x.shape[1] != c or x.shape[2] % s or x.shape[3] % s:
            raise ValueError(
                f"condition has shape {tuple(x.shape)}, expected (B, {c}, H, W) with H and W "
                f"multiples of {s}"
            )
        skips = []
        for block in self.down:
            x = block(x)  # (B, w_i, S / 2^(i+1), S / 2^(i+1))
            skips.append(x)
        h = skips.pop()  # (B, w, 1, 1) bottleneck
        for j, block in enumerate(self.up):
            h = block(h)
            if j < self.cfg.dropout_levels and self.cfg.dropout > 0:
                drop = self.training or self.cfg.dropout_in_eval
                h = F.dropout(h, self.cfg.dropout, training=drop)
            h = torch.cat([h, skips.pop()], dim=1)  # (B, 2 w, side, side)
        return torch.cat([torch.tanh(head(h)) for head in self.heads.values()], dim=1)

    def split_heads(self, out: Tensor) -> dict[str, Tensor]:
        """The concatenated output (B, out, S, S) as {head name: (B, channels, S, S)}."""
        parts = torch.split(out, list(self.cfg.head_channels), dim=1)
        return dict(zip(self.cfg.head_names, parts, strict=True))


@dataclass(frozen=True)
class PatchGANConfig:
    """Conditional discriminator on (condition, image) pairs concatenated along channels.

    "patch" is the paper's PatchGAN: `n_layers` stride-2 convolutions give one logit per
    overlapping patch (70x70 receptive field for n_layers=3). "pixel" is its 1x1 variant
    (PixelGAN): one logit per pixel, judging colour only.
    """

    in_channels: int = 6  # condition channels + image channels
    base_channels: int = 64
    n_layers: int = 3  # stride-2 layers of the patch variant (receptive field 16, 34, 70, ...)
    kind: Literal["patch", "pixel"] = "patch"
    norm: Norm = "batch"

    def __post_init__(self) -> None:
        if self.kind not in ("patch", "pixel"):
            raise ValueError(f"kind={self.kind!r} is not one of ('patch', 'pixel')")
        if self.n_layers < 1 or self.in_channels < 1 or self.base_channels < 1:
            raise ValueError(
                f"n_layers={self.n_layers}, in_channels={self.in_channels}, "
                f"base_channels={self.base_channels} must be >= 1"
            )
        _check_norm(self.norm)


class PatchDiscriminator(nn.Module):
    """PatchGAN / PixelGAN: pairs (B, in_channels, H, W) -> logits (B, 1, h, w)."""

    def __init__(self, cfg: PatchGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.base_channels
        if cfg.kind == "pixel":
            layers: list[nn.Module] = [
                nn.Conv2d(cfg.in_channels, w, 1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(w, 2 * w, 1, bias=False),
                _norm(cfg.norm, 2 * w),
                nn.LeakyReLU(0.2),
                nn.Conv2d(2 * w, 1, 1),
            ]
        else:
            layers = [nn.Conv2d(cfg.in_channels, w, 4, 2, 1), nn.LeakyReLU(0.2)]
            for n in range(1, cfg.n_layers + 1):
                c_in, c_out = w * min(2 ** (n - 1), 8), w * min(2**n, 8)
                stride = 2 if n < cfg.n_layers else 1  # the last one keeps the side
                layers += [
                    nn.Conv2d(c_in, c_out, 4, stride, 1, bias=False),
                    _norm(cfg.norm, c_out),
                    nn.LeakyReLU(0.2),
                ]
            layers.append(nn.Conv2d(w * min(2**cfg.n_layers, 8), 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        self.apply(init_gan_weights)

    def forward(self, pairs: Tensor) -> Tensor:
        """Logits (B, 1, h, w) of each patch of the (condition, image) pairs being real."""
        if pairs.ndim != 4 or pairs.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"pairs have shape {tuple(pairs.shape)}, expected (B, {self.cfg.in_channels}, H, W)"
            )
        return self.net(pairs)
