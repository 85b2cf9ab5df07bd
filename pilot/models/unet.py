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

from pilot.nn.attention import SpatialTransformer
from pilot.nn.embeddings import TimestepEmbedding, timestep_embedding
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
    # it keeps for compatibility (diffusers issue #2011); see `from_diffusers`.
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
        check_diffusers_config(d, _DIFFUSERS_NEUTRAL, _DIFFUSERS_READ, "UNet2DConditionModel")
        get = lambda key: d.get(key, _DIFFUSERS_READ[key])  # noqa: E731  (diffusers' defaults)
        down = list(get("down_block_types"))
        for kind in down:
            if kind not in ("CrossAttnDownBlock2D", "DownBlock2D"):
                raise ValueError(f"unsupported UNet down_block_types entry {kind!r}")
        mirrored = [t.replace("Down", "Up") for t in reversed(down)]
        if list(get("up_block_types")) != mirrored:
            raise ValueError(
                f"unsupported UNet up_block_types={get('up_block_types')!r}: "
                f"expected the mirror of down_block_types, {mirrored!r}"
            )
        if get("norm_num_groups") is None:
            raise ValueError("unsupported UNet norm_num_groups=None (no output norm)")
        tlpb = get("transformer_layers_per_block")
        if isinstance(tlpb, (list, tuple)) and any(isinstance(v, (list, tuple)) for v in tlpb):
            raise ValueError(f"unsupported UNet transformer_layers_per_block={tlpb!r} (nested)")
        return cls(
            in_channels=get("in_channels"),
            out_channels=get("out_channels"),
            block_out_channels=tuple(get("block_out_channels")),
            layers_per_block=_single("layers_per_block", get("layers_per_block")),
            attention=_attention_or_default(tuple(k == "CrossAttnDownBlock2D" for k in down)),
            # The misnomer: diffusers' `attention_head_dim` is the number of heads per block
            # (it sets `num_attention_heads = attention_head_dim`; diffusers issue #2011).
            num_heads=_int_or_tuple(get("attention_head_dim")),
            cross_attention_dim=_single("cross_attention_dim", get("cross_attention_dim")),
            use_linear_projection=get("use_linear_projection"),
            transformer_layers_per_block=_int_or_tuple(tlpb),
            norm_num_groups=get("norm_num_groups"),
            norm_eps=get("norm_eps"),
            flip_sin_to_cos=get("flip_sin_to_cos"),
            freq_shift=get("freq_shift"),
            upcast_attention=get("upcast_attention"),
            sample_size=_single("sample_size", get("sample_size")),
        )

    def to_diffusers(self) -> dict:
        """The equivalent diffusers `UNet2DConditionModel` config (JSON-compatible)."""
        down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.block_attention()]
        up = [t.replace("Down", "Up") for t in reversed(down)]
        return {
            "sample_size": self.sample_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "down_block_types": down,
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "up_block_types": up,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "act_fn": "silu",
            "norm_num_groups": self.norm_num_groups,
            "norm_eps": self.norm_eps,
            "cross_attention_dim": self.cross_attention_dim,
            "transformer_layers_per_block": _jsonable(self.transformer_layers_per_block),
            # The misnomer: diffusers reads this as the number of heads (see `num_heads`).
            "attention_head_dim": _jsonable(self.num_heads),
            "use_linear_projection": self.use_linear_projection,
            "upcast_attention": self.upcast_attention,
        }


# diffusers UNet settings pilot reads, with diffusers' defaults for when a config omits them.
_DIFFUSERS_READ = {
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "attention_head_dim": 8,
    "cross_attention_dim": 1280,
    "use_linear_projection": False,
    "transformer_layers_per_block": 1,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "upcast_attention": False,
    "sample_size": None,
    # Ignored: dropout acts only in training; the head count of an unused text embedding.
    "dropout": 0.0,
    "addition_embed_type_num_heads": 64,
}
# diffusers UNet features pilot does not implement, with the values that switch them off.
_DIFFUSERS_NEUTRAL = {
    "center_input_sample": (False,),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "dual_cross_attention": (False,),
    "num_attention_heads": (None,),
    "downsample_padding": (1,),
    "mid_block_scale_factor": (1,),
    "act_fn": ("silu", "swish"),
    "reverse_transformer_layers_per_block": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "class_embeddings_concat": (False,),
    "projection_class_embeddings_input_dim": (None,),
    "addition_embed_type": (None,),
    "addition_time_embed_dim": (None,),
    "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1,),
    "time_embedding_type": ("positional",),
    "time_embedding_dim": (None,),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "attention_type": ("default",),
    "cross_attention_norm": (None,),
}


def check_diffusers_config(d: dict, neutral: dict, read: dict, kind: str) -> None:
    """Reject a diffusers config that uses anything pilot's model does not implement.

    Args:
        d: The config.json dict. Keys starting with "_" (`_class_name`, ...) are metadata.
        neutral: Unimplemented settings and the values that switch them off; a list value is
            neutral when all its entries are.
        read: Settings the pilot config reads.
        kind: The diffusers class name, for messages.

    Raises:
        ValueError: naming the first offending key and its value.
    """
    for key, value in d.items():
        if key.startswith("_") or key in read:
            continue
        if key not in neutral:
            raise ValueError(f"unsupported {kind} config key {key!r} (value {value!r})")
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(v not in neutral[key] for v in values):
            raise ValueError(f"unsupported {kind} setting {key}={value!r}")


def _single(key: str, value):
    """A setting diffusers allows per block but pilot keeps global: all entries must agree."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"unsupported per-block {key}={value!r}")
        return value[0]
    return value


def _attention_or_default(attention: tuple[bool, ...]) -> tuple[bool, ...] | None:
    """None (the SD layout) when `attention` is that layout, so configs compare equal."""
    return (
        None
        if attention == tuple(i < len(attention) - 1 for i in range(len(attention)))
        else attention
    )


def _int_or_tuple(value: int | Sequence[int]) -> int | tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _per_block(value: int | tuple[int, ...], n: int) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,) * n


def _jsonable(value: int | tuple[int, ...]) -> int | list[int]:
    return list(value) if isinstance(value, tuple) else value


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
    """Residual blocks (each optionally followed by a transformer), then an optional downsampler."""

    def __init__(
        self, cfg: UNetConfig, i: int, in_channels: int, temb_channels: int, attention: bool
    ) -> None:
        super().__init__()
        ch, groups = cfg.block_out_channels[i], cfg.norm_num_groups
        self.resnets = nn.ModuleList(
            ResnetBlock2D(
                in_channels if j == 0 else ch,
                ch,
                temb_channels=temb_channels,
                groups=groups,
                eps=cfg.norm_eps,
            )
            for j in range(cfg.layers_per_block)
        )
        self.attentions = _transformers(cfg, i, cfg.layers_per_block) if attention else None
        last = i == len(cfg.block_out_channels) - 1
        self.downsamplers = None if last else nn.ModuleList([Downsample2D(ch)])

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
    """Residual blocks over [h, skip] concatenations (optionally with transformers), then 2x up."""

    def __init__(
        self, cfg: UNetConfig, i: int, prev_channels: int, temb_channels: int, attention: bool
    ) -> None:
        super().__init__()
        chans = cfg.block_out_channels
        ch, layers = chans[i], cfg.layers_per_block + 1
        # Skips are consumed in reverse: the last one comes from the next-higher block's input.
        skip_in = chans[max(i - 1, 0)]
        self.resnets = nn.ModuleList(
            ResnetBlock2D(
                (prev_channels if j == 0 else ch) + (skip_in if j == layers - 1 else ch),
                ch,
                temb_channels=temb_channels,
                groups=cfg.norm_num_groups,
                eps=cfg.norm_eps,
            )
            for j in range(layers)
        )
        self.attentions = _transformers(cfg, i, layers) if attention else None
        self.upsamplers = nn.ModuleList([Upsample2D(ch)]) if i > 0 else None

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
    """Resnet, cross-attention transformer, resnet at the lowest resolution."""

    def __init__(self, cfg: UNetConfig, temb_channels: int) -> None:
        super().__init__()
        last = len(cfg.block_out_channels) - 1
        ch = cfg.block_out_channels[last]
        self.resnets = nn.ModuleList(
            ResnetBlock2D(
                ch, ch, temb_channels=temb_channels, groups=cfg.norm_num_groups, eps=cfg.norm_eps
            )
            for _ in range(2)
        )
        self.attentions = _transformers(cfg, last, 1)

    def forward(self, h: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        """Map (B, C, h, w) to (B, C, h, w)."""
        h = self.resnets[0](h, emb)
        h = self.attentions[0](h, context)
        return self.resnets[1](h, emb)


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
        temb = 4 * chans[0]
        attention = cfg.block_attention()
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], temb)
        self.down_blocks = nn.ModuleList(
            DownBlock(cfg, i, chans[max(i - 1, 0)], temb, attention[i]) for i in range(n)
        )
        self.mid_block = MidBlock(cfg, temb)
        # Up block u works at the resolution of down block i = n - 1 - u.
        self.up_blocks = nn.ModuleList(
            UpBlock(cfg, i, chans[min(i + 1, n - 1)], temb, attention[i])
            for i in reversed(range(n))
        )
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, chans[0], eps=cfg.norm_eps)
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
