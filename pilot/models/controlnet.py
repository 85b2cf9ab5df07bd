"""ControlNet (Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models"), written from scratch on the UNet's own blocks.

A ControlNet is a trainable copy of a UNet's encoder (`conv_in`, time embedding, down blocks) and
middle block. A small "hint" encoder maps the control image (pixels, 8x the latent size) to the
latent resolution and adds it after `conv_in`; one zero-initialised 1x1 conv per skip connection
("zero convolution") and one after the middle block turn the copy's features into residuals that
the controlled UNet adds to its skips and mid-block output:

    down, mid = controlnet(x, t, context, hint)
    unet(x, t, context, down_residuals=down, mid_residual=mid)

State-dict names equal diffusers' `ControlNetModel`, so a diffusers `controlnet/` folder loads by
identity; `pilot.weights.controlnet_original` maps the original `control_model.*` files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pilot.models.unet import UNET_PRESETS, DownBlock, MidBlock, UNet, UNetConfig
from pilot.nn.embeddings import TimestepEmbedding, timestep_embedding

# diffusers ControlNetModel config keys that are not UNet settings, with their defaults.
_CONTROL_KEYS = {
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": (16, 32, 96, 256),
    "global_pool_conditions": False,
    "controlnet_conditioning_channel_order": "rgb",
}


@dataclass(frozen=True)
class ControlNetConfig:
    """Architecture of a ControlNet: the controlled UNet's config plus the hint encoder.

    `unet.sample_size` is metadata the ControlNet does not keep (diffusers' config has no such
    key); it is normalised to None so configs from a UNet and from a folder compare equal.
    """

    unet: UNetConfig = field(default_factory=UNetConfig)  # encoder + mid block copied from this
    conditioning_channels: int = 3  # channels of the control image (RGB)
    # Hint encoder widths: conv_in to the first, then (conv, stride-2 conv) per step, so the
    # image is downsampled 2^(len - 1) = 8x for SD's VAE factor.
    hint_channels: tuple[int, ...] = (16, 32, 96, 256)
    # v1.1 "shuffle" ControlNets average each residual over space (diffusers'
    # `global_pool_conditions`; the original yaml's `global_average_pooling`).
    global_pool: bool = False
    channel_order: Literal["rgb", "bgr"] = "rgb"  # "bgr": the image's channels are flipped first

    def __post_init__(self) -> None:
        if isinstance(self.hint_channels, list):
            object.__setattr__(self, "hint_channels", tuple(self.hint_channels))
        if self.unet.sample_size is not None:
            object.__setattr__(self, "unet", dataclasses.replace(self.unet, sample_size=None))
        if not self.hint_channels or min(self.hint_channels) <= 0 or self.conditioning_channels < 1:
            raise ValueError(
                f"hint_channels={self.hint_channels} and conditioning_channels="
                f"{self.conditioning_channels} must be positive"
            )
        if self.channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order={self.channel_order!r}: use 'rgb' or 'bgr'")

    @property
    def downscale(self) -> int:
        """Pixel size of one latent: the control image is this many times the latents' size."""
        return 2 ** (len(self.hint_channels) - 1)

    @classmethod
    def from_diffusers(cls, d: dict) -> ControlNetConfig:
        """Read a diffusers `ControlNetModel` config.json dict.

        Raises:
            ValueError: naming any setting this ControlNet does not implement.
        """
        unet = {k: v for k, v in d.items() if k not in _CONTROL_KEYS}
        down = unet.get("down_block_types", UNET_PRESETS["sd15"].to_diffusers()["down_block_types"])
        unet["up_block_types"] = [t.replace("Down", "Up") for t in reversed(down)]
        get = lambda key: d.get(key, _CONTROL_KEYS[key])  # noqa: E731
        return cls(
            unet=UNetConfig.from_diffusers(unet),
            conditioning_channels=get("conditioning_channels"),
            hint_channels=tuple(get("conditioning_embedding_out_channels")),
            global_pool=get("global_pool_conditions"),
            channel_order=get("controlnet_conditioning_channel_order"),
        )

    def to_diffusers(self) -> dict:
        """The equivalent diffusers `ControlNetModel` config (JSON-compatible)."""
        d = self.unet.to_diffusers()
        for key in ("sample_size", "out_channels", "up_block_types"):
            del d[key]  # not ControlNetModel settings
        return d | {
            "conditioning_channels": self.conditioning_channels,
            "conditioning_embedding_out_channels": list(self.hint_channels),
            "global_pool_conditions": self.global_pool,
            "controlnet_conditioning_channel_order": self.channel_order,
        }


CONTROLNET_PRESETS: dict[str, ControlNetConfig] = {
    name: ControlNetConfig(unet=cfg) for name, cfg in UNET_PRESETS.items()
}


class HintEncoder(nn.Module):
    """The ControlNet paper's condition encoder: SiLU convs from pixels to latent resolution.

    Args:
        cfg: ControlNet architecture; the output has the UNet's first-block width.
    """

    def __init__(self, cfg: ControlNetConfig) -> None:
        super().__init__()
        chans = cfg.hint_channels
        self.conv_in = nn.Conv2d(cfg.conditioning_channels, chans[0], 3, padding=1)
        blocks = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            blocks += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.Conv2d(c_in, c_out, 3, 2, 1)]
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(chans[-1], cfg.unet.block_out_channels[0], 3, padding=1)

    def forward(self, image: Tensor) -> Tensor:
        """Map a control image (B, C, H, W) in [0, 1] to features (B, C0, H / 8, W / 8)."""
        h = F.silu(self.conv_in(image))
        for block in self.blocks:
            h = F.silu(block(h))
        return self.conv_out(h)


class ControlNet(nn.Module):
    """ControlNet for Stable Diffusion 1.x / 2.x UNets; equal to diffusers' `ControlNetModel`.

    Args:
        cfg: Architecture (see `CONTROLNET_PRESETS`, or `ControlNet.from_unet`).
    """

    def __init__(self, cfg: ControlNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        u = cfg.unet
        chans, n = u.block_out_channels, len(u.block_out_channels)
        self.conv_in = nn.Conv2d(u.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], u.time_embed_dim)
        self.controlnet_cond_embedding = HintEncoder(cfg)
        self.down_blocks = nn.ModuleList(DownBlock(u, i) for i in range(n))
        self.mid_block = MidBlock(u)
        # The zero convolutions: one per skip connection, one after the middle block.
        self.controlnet_down_blocks = nn.ModuleList(nn.Conv2d(c, c, 1) for c in u.skip_channels())
        self.controlnet_mid_block = nn.Conv2d(chans[-1], chans[-1], 1)
        for conv in [*self.controlnet_down_blocks, self.controlnet_mid_block]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.controlnet_cond_embedding.conv_out.weight)
        nn.init.zeros_(self.controlnet_cond_embedding.conv_out.bias)

    @classmethod
    def from_unet(
        cls,
        unet: UNet,
        *,
        conditioning_channels: int = 3,
        hint_channels: Sequence[int] = (16, 32, 96, 256),
    ) -> ControlNet:
        """A new ControlNet whose encoder and middle block are copies of `unet`'s (paper sec. 3.2).

        The hint encoder keeps its random initialisation except its zero output conv; the zero
        convolutions make the fresh ControlNet's residuals exactly zero, so the controlled UNet
        starts out unchanged. Built on `unet`'s device and dtype.
        """
        cfg = ControlNetConfig(
            unet=unet.cfg,
            conditioning_channels=conditioning_channels,
            hint_channels=tuple(hint_channels),
        )
        param = next(unet.parameters())
        with torch.device(param.device):
            controlnet = cls(cfg).to(param.dtype)
        for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
            getattr(controlnet, name).load_state_dict(getattr(unet, name).state_dict())
        return controlnet

    def embed_hint(self, image: Tensor) -> Tensor:
        """Hint features (B, C0, H / 8, W / 8) of a control image (B, C, H, W) in [0, 1].

        They do not depend on the noisy latents or the timestep: samplers may compute them once.
        """
        if self.cfg.channel_order == "bgr":
            image = image.flip(1)
        return self.controlnet_cond_embedding(image.to(self.conv_in.weight.dtype))

    def forward(
        self,
        x: Tensor,
        t: Tensor | float,
        context: Tensor,
        image: Tensor | None = None,
        *,
        hint: Tensor | None = None,
        scale: float | Tensor = 1.0,
        guess_mode: bool = False,
    ) -> tuple[list[Tensor], Tensor]:
        """Residuals for the UNet's skips and mid block.

        Args:
            x: Noisy latents as the UNet gets them, (B, in_channels, h, w).
            t: Timestep(s) as the UNet gets them: a number, a 0-d, (1,) or (B,) tensor.
            context: Text embeddings, (B, S, cross_attention_dim).
            image: Control image, (B, C, 8h, 8w) in [0, 1]; or pass `hint` instead.
            hint: Precomputed `embed_hint(image)`, (B, C0, h, w).
            scale: Conditioning scale: a number or a (B,) tensor of per-item scales.
            guess_mode: Scale the residuals from 0.1 (first skip) to 1 (mid block) on a log
                scale, times `scale`, as diffusers' `guess_mode` does (`logspace(-1, 0)`).

        Returns:
            `(down_residuals, mid_residual)`, the UNet's keyword arguments: one tensor per skip
            connection (`cfg.unet.skip_channels()` channels, the skips' sizes) and one tensor
            like the mid-block output; (B, C, 1, 1) means instead for `cfg.global_pool` models.
        """
        if (image is None) == (hint is None):
            raise ValueError("pass exactly one of `image` and `hint`")
        if hint is None:
            hint = self.embed_hint(image)
        u = self.cfg.unet
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        features = timestep_embedding(
            t, u.block_out_channels[0], flip_sin_to_cos=u.flip_sin_to_cos, freq_shift=u.freq_shift
        )
        emb = self.time_embedding(features.to(x.dtype))
        h = self.conv_in(x)  # (B, C0, h, w)
        if hint.shape != h.shape:
            raise ValueError(
                f"control hint {tuple(hint.shape)} does not fit latents {tuple(x.shape)}: the "
                f"control image must be {self.cfg.downscale}x the latents' height and width"
            )
        h = h + hint
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb, context)
            skips += block_skips
        h = self.mid_block(h, emb, context)  # (B, C_last, h / 2^(n-1), w / 2^(n-1))
        down = [conv(s) for conv, s in zip(self.controlnet_down_blocks, skips, strict=True)]
        return self._scale(down, self.controlnet_mid_block(h), scale, guess_mode)

    def _scale(
        self, down: list[Tensor], mid: Tensor, scale: float | Tensor, guess_mode: bool
    ) -> tuple[list[Tensor], Tensor]:
        if isinstance(scale, Tensor):
            scale = scale.to(mid.device, mid.dtype).reshape(-1, 1, 1, 1)
        if guess_mode and not self.cfg.global_pool:
            # 0.1 .. 1.0 over the skips and the mid block (diffusers; shuffle models excepted).
            steps = torch.logspace(-1, 0, len(down) + 1, device=mid.device)
            steps = [s * scale for s in steps.to(mid.dtype)]
            down = [r * s for r, s in zip(down, steps, strict=False)]
            mid = mid * steps[-1]
        else:
            down = [r * scale for r in down]
            mid = mid * scale
        if self.cfg.global_pool:
            down = [r.mean(dim=(2, 3), keepdim=True) for r in down]
            mid = mid.mean(dim=(2, 3), keepdim=True)
        return down, mid
