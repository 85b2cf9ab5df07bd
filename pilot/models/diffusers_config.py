"""diffusers `config.json` <-> pilot configs for the UNet and the VAE.

Reading is strict: every key is either read, known to be harmless, or must hold the value that
switches an unimplemented diffusers feature off; anything else raises a `ValueError` naming the
key and value (so an SDXL UNet or an SD3 VAE is refused, not silently mis-built). Keys that a
config omits take diffusers' defaults, which are not always SD's (e.g. `cross_attention_dim`).
Used through `UNetConfig.from_diffusers/to_diffusers` and `VAEConfig.from_diffusers/...`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pilot.models.unet import UNetConfig
    from pilot.models.vae import VAEConfig

# UNet2DConditionModel settings pilot reads, with diffusers' defaults for omitted keys.
UNET_READ = {
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
# UNet2DConditionModel features pilot does not implement, with the values that switch them off.
UNET_NEUTRAL = {
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
# AutoencoderKL settings pilot reads, with diffusers' defaults for omitted keys.
VAE_READ = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",),
    "block_out_channels": (64,),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}
# AutoencoderKL features pilot does not implement (SD3 / Flux VAEs), with their off values.
VAE_NEUTRAL = {
    "act_fn": ("silu", "swish"),
    "shift_factor": (None,),
    "latents_mean": (None,),
    "latents_std": (None,),
    "use_quant_conv": (True,),
    "use_post_quant_conv": (True,),
    "mid_block_add_attention": (True,),
}


def check_config(d: dict, read: dict, neutral: dict, kind: str) -> None:
    """Reject a diffusers config that uses anything pilot's model does not implement.

    Args:
        d: The config.json dict. Keys starting with "_" (`_class_name`, ...) are metadata.
        read: Settings the pilot config reads.
        neutral: Unimplemented settings and the values that switch them off; a list value is
            neutral when all its entries are.
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


def unet_kwargs(d: dict) -> dict[str, Any]:
    """Keyword arguments of `UNetConfig` for a diffusers `UNet2DConditionModel` config."""
    check_config(d, UNET_READ, UNET_NEUTRAL, "UNet2DConditionModel")
    get = lambda key: d.get(key, UNET_READ[key])  # noqa: E731
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
    depth = get("transformer_layers_per_block")
    if isinstance(depth, (list, tuple)) and any(isinstance(v, (list, tuple)) for v in depth):
        raise ValueError(f"unsupported UNet transformer_layers_per_block={depth!r} (nested)")
    attention = tuple(kind == "CrossAttnDownBlock2D" for kind in down)
    sd_layout = tuple(i < len(down) - 1 for i in range(len(down)))
    return {
        "in_channels": get("in_channels"),
        "out_channels": get("out_channels"),
        "block_out_channels": tuple(get("block_out_channels")),
        "layers_per_block": _single("layers_per_block", get("layers_per_block")),
        "attention": None if attention == sd_layout else attention,  # None: the SD layout
        # The misnomer: diffusers' `attention_head_dim` is the number of heads per block
        # (it sets `num_attention_heads = attention_head_dim`; diffusers issue #2011).
        "num_heads": _int_or_tuple(get("attention_head_dim")),
        "cross_attention_dim": _single("cross_attention_dim", get("cross_attention_dim")),
        "use_linear_projection": get("use_linear_projection"),
        "transformer_layers_per_block": _int_or_tuple(depth),
        "norm_num_groups": get("norm_num_groups"),
        "norm_eps": get("norm_eps"),
        "flip_sin_to_cos": get("flip_sin_to_cos"),
        "freq_shift": get("freq_shift"),
        "upcast_attention": get("upcast_attention"),
        "sample_size": _single("sample_size", get("sample_size")),
    }


def unet_dict(cfg: UNetConfig) -> dict[str, Any]:
    """The diffusers `UNet2DConditionModel` config (JSON-compatible) equivalent to `cfg`."""
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.block_attention()]
    return {
        "sample_size": cfg.sample_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "flip_sin_to_cos": cfg.flip_sin_to_cos,
        "freq_shift": cfg.freq_shift,
        "down_block_types": down,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": [t.replace("Down", "Up") for t in reversed(down)],
        "block_out_channels": list(cfg.block_out_channels),
        "layers_per_block": cfg.layers_per_block,
        "act_fn": "silu",
        "norm_num_groups": cfg.norm_num_groups,
        "norm_eps": cfg.norm_eps,
        "cross_attention_dim": cfg.cross_attention_dim,
        "transformer_layers_per_block": _jsonable(cfg.transformer_layers_per_block),
        # The misnomer again: diffusers reads this as the number of heads.
        "attention_head_dim": _jsonable(cfg.num_heads),
        "use_linear_projection": cfg.use_linear_projection,
        "upcast_attention": cfg.upcast_attention,
    }


def vae_kwargs(d: dict) -> dict[str, Any]:
    """Keyword arguments of `VAEConfig` for a diffusers `AutoencoderKL` config."""
    check_config(d, VAE_READ, VAE_NEUTRAL, "AutoencoderKL")
    get = lambda key: d.get(key, VAE_READ[key])  # noqa: E731
    n = len(get("block_out_channels"))
    for key, kind in (
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ):
        if list(get(key)) != [kind] * n:
            raise ValueError(f"unsupported AutoencoderKL {key}={get(key)!r}: need {n} x {kind}")
    names = ("in_channels", "out_channels", "latent_channels", "layers_per_block")
    names += ("norm_num_groups", "scaling_factor", "force_upcast", "sample_size")
    return {"block_out_channels": tuple(get("block_out_channels"))} | {k: get(k) for k in names}


def vae_dict(cfg: VAEConfig) -> dict[str, Any]:
    """The diffusers `AutoencoderKL` config (JSON-compatible) equivalent to `cfg`."""
    n = len(cfg.block_out_channels)
    return {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(cfg.block_out_channels),
        "layers_per_block": cfg.layers_per_block,
        "act_fn": "silu",
        "latent_channels": cfg.latent_channels,
        "norm_num_groups": cfg.norm_num_groups,
        "sample_size": cfg.sample_size,
        "scaling_factor": cfg.scaling_factor,
        "force_upcast": cfg.force_upcast,
    }


def _single(key: str, value: Any) -> Any:
    """A setting diffusers allows per block but pilot keeps global: all entries must agree."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"unsupported per-block {key}={value!r}")
        return value[0]
    return value


def _int_or_tuple(value: int | Sequence[int]) -> int | tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _jsonable(value: int | tuple[int, ...]) -> int | list[int]:
    return list(value) if isinstance(value, tuple) else value
