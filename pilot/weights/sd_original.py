"""Conversion of the original CompVis / Stability single-file checkpoints (SD 1.x and 2.x).

An original file holds the whole latent diffusion model under four prefixes:

- `model.diffusion_model.` the UNet (`input_blocks`, `middle_block`, `output_blocks`, `out`),
- `first_stage_model.` the VAE (`encoder.down.N.block.M`, `mid.attn_1` with 1x1-conv q/k/v),
- `cond_stage_model.transformer.` the SD 1.x text encoder (a transformers CLIPTextModel),
- `cond_stage_model.model.` the SD 2.x OpenCLIP text tower (`transformer.resblocks.N` with a
  packed `attn.in_proj_weight`).

Pilot's models use diffusers' / transformers' key names: `extract_<component>` convert a whole file
to per-component state dicts with the per-key rules of `pilot.weights.sd_keys` (importable from
here too), `to_original` is the exact inverse (our own conversion, used by tests to write single
files). `detect_*_config` read the architecture from weight shapes and return configs in
diffusers / transformers form, for `UNetConfig.from_diffusers` and friends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from pilot.weights.sd_keys import (
    CLIP_PREFIX,
    OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    TextFormat,
    UNetLayout,
    count_indices,
    is_vae_attn_weight,
    map_clip_key,
    map_open_clip_key,
    map_unet_key,
    map_vae_key,
    text_format,
    unmap_clip_key,
    unmap_open_clip_key,
    unmap_unet_key,
    unmap_vae_key,
)

# The SD 2.x global step diffusers (convert_from_ckpt, single_file_utils) uses to tell the
# 512-base epsilon checkpoint from the 768-v checkpoints; any other SD 2.x file is v-prediction.
SD2_EPSILON_GLOBAL_STEP = 875000


def has_component(state_dict: Mapping[str, Tensor], component: str) -> bool:
    """Whether an original file holds `unet`, `vae` or `text_encoder` weights."""
    if component == "text_encoder":
        return text_format(state_dict) is not None
    if component == "vae" and "encoder.down.0.block.0.conv1.weight" in state_dict:
        return True  # a VAE-only file in the original layout
    prefix = {"unet": UNET_PREFIX, "vae": VAE_PREFIX}[component]
    return any(k.startswith(prefix) for k in state_dict)


def is_original(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether a state dict uses the original single-file layout (any component)."""
    return any(has_component(state_dict, c) for c in ("unet", "vae", "text_encoder"))


# Top-level DDPM buffers of ldm's LatentDiffusion (its training schedule), in every original file.
_SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "lvlb_weights",
)
_COMPONENT_PREFIXES = (UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX, OPEN_CLIP_PREFIX)


def unused_keys(state_dict: Mapping[str, Tensor]) -> list[str]:
    """Keys of an original file outside its SD components: no load reads them (e.g. LoRA).

    The EMA copy (`model_ema.`) and ldm's schedule buffers are not listed; a VAE-only file (no
    component prefix) has none.
    """
    if not any(k.startswith(_COMPONENT_PREFIXES) for k in state_dict):
        return []
    known = (*_COMPONENT_PREFIXES, "model_ema.")
    return [k for k in state_dict if not k.startswith(known) and k not in _SCHEDULE_BUFFERS]


def _strip(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _vae_prefix(state_dict: Mapping[str, Tensor]) -> str:
    """`first_stage_model.` in a full file; empty for a VAE-only file (e.g. vae-ft-mse-840000)."""
    return VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in state_dict) else ""


def extract_unet(
    state_dict: Mapping[str, Tensor], layout: UNetLayout, origins: dict[str, str] | None = None
) -> dict[str, Tensor]:
    """Our UNet state dict from an original file; unmappable keys are kept (reported later).

    `origins`, when given, receives each returned key's key in the file (for messages).
    """
    out = {}
    for key, value in _strip(state_dict, UNET_PREFIX).items():
        ours = map_unet_key(key, layout) or UNET_PREFIX + key
        out[ours] = value
        _note(origins, ours, UNET_PREFIX + key)
    return out


def _note(origins: dict[str, str] | None, ours: str, key: str) -> None:
    if origins is not None:
        origins[ours] = key


def extract_vae(
    state_dict: Mapping[str, Tensor], num_blocks: int, origins: dict[str, str] | None = None
) -> dict[str, Tensor]:
    """Our VAE state dict; the mid attention's 1x1 conv weights become linear weights.

    `origins`: as in `extract_unet`.
    """
    out, prefix = {}, _vae_prefix(state_dict)
    for key, value in _strip(state_dict, prefix).items():
        if key.startswith("loss."):
            continue  # training-only LPIPS / discriminator weights of VAE files
        ours = map_vae_key(key, num_blocks)
        if ours is None:
            ours = VAE_PREFIX + key
        elif is_vae_attn_weight(ours) and value.ndim == 4:
            value = value[:, :, 0, 0]  # (C, C, 1, 1) conv -> (C, C) linear
        out[ours] = value
        _note(origins, ours, prefix + key)
    return out


def extract_text_encoder(
    state_dict: Mapping[str, Tensor],
    num_layers: int | None = None,
    origins: dict[str, str] | None = None,
) -> dict[str, Tensor]:
    """Our CLIP text state dict from an SD 1.x or SD 2.x original file.

    Args:
        state_dict: the original file's tensors.
        num_layers: layers our encoder keeps; defaults to all for SD 1.x and all but the last for
            SD 2.x (see `map_open_clip_key`).
        origins: as in `extract_unet`.
    """
    if text_format(state_dict) == "clip":
        out = {}
        for key, value in _strip(state_dict, CLIP_PREFIX).items():
            out[ours := map_clip_key(key)] = value
            _note(origins, ours, CLIP_PREFIX + key)
        return out
    tower = _strip(state_dict, OPEN_CLIP_PREFIX)
    if num_layers is None:
        num_layers = count_indices(tower, "transformer.resblocks.") - 1
    out = {}
    for key, value in tower.items():
        ours = map_open_clip_key(key, num_layers)
        if ours is None:
            continue
        if ".qkv_proj." in ours:  # packed (3 * width, ...) -> q, k, v
            for name, part in zip(
                ("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True
            ):
                out[ours.replace("qkv_proj", name)] = part
                _note(origins, ours.replace("qkv_proj", name), OPEN_CLIP_PREFIX + key)
        else:
            out[ours] = value
            _note(origins, ours, OPEN_CLIP_PREFIX + key)
    return out


def original_key(
    component: str, key: str, config: Mapping[str, Any], state_dict: Mapping[str, Tensor]
) -> str:
    """Where our `key` of `component` lies in an original file (with its prefix), for messages.

    Args:
        component: `unet`, `vae` or `text_encoder`.
        key: a key of our model.
        config: the component's diffusers / transformers config dict.
        state_dict: the original file's tensors (for its prefixes).

    Raises:
        KeyError, ValueError, IndexError: `key` has no place in the original layout.
    """
    if component == "unet":
        return UNET_PREFIX + unmap_unet_key(key, UNetLayout.from_config(config))
    if component == "vae":
        num_blocks = len(config["block_out_channels"])
        return _vae_prefix(state_dict) + unmap_vae_key(key, num_blocks)
    if text_format(state_dict) == "open_clip":
        return OPEN_CLIP_PREFIX + unmap_open_clip_key(key)
    wrapped = any(k.startswith(CLIP_PREFIX + "text_model.") for k in state_dict)
    return CLIP_PREFIX + (unmap_clip_key(key) if wrapped else key)


def to_original(
    components: Mapping[str, Mapping[str, Tensor]],
    *,
    unet_config: Any = None,
    vae_num_blocks: int | None = None,
    text_format: TextFormat = "clip",
) -> dict[str, Tensor]:
    """Write our component state dicts in the original single-file layout (inverse conversion).

    Args:
        components: any of `unet`, `vae`, `text_encoder`, each keyed like our models.
        unet_config: diffusers UNet config dict or config with `to_diffusers()` (for the UNet).
        vae_num_blocks: number of VAE resolution levels (for the VAE).
        text_format: `clip` (SD 1.x) or `open_clip` (SD 2.x). For OpenCLIP the unused 24th block
            is written as a copy of the last one, with an identity `text_projection` and the CLIP
            `logit_scale`, so the file has the shape of a real SD 2.x checkpoint.

    Returns:
        One flat state dict with the original prefixes.
    """
    out: dict[str, Tensor] = {}
    if "unet" in components:
        layout = UNetLayout.from_config(unet_config)
        for key, value in components["unet"].items():
            out[UNET_PREFIX + unmap_unet_key(key, layout)] = value
    if "vae" in components:
        for key, value in components["vae"].items():
            if is_vae_attn_weight(key) and value.ndim == 2:
                value = value[:, :, None, None]  # (C, C) linear -> (C, C, 1, 1) conv
            out[VAE_PREFIX + unmap_vae_key(key, vae_num_blocks)] = value
    if "text_encoder" in components:
        text = components["text_encoder"]
        if text_format == "clip":
            out.update({CLIP_PREFIX + unmap_clip_key(k): v for k, v in text.items()})
        else:
            out.update(_to_open_clip(text))
    return out


def _to_open_clip(text: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in text.items():
        if key.endswith("position_ids"):
            continue
        name = unmap_open_clip_key(key)
        if ".attn.in_proj_" in name:
            if ".q_proj." in key:  # pack q, k, v in that order
                k_, v_ = (text[key.replace("q_proj", p)] for p in ("k_proj", "v_proj"))
                out[OPEN_CLIP_PREFIX + name] = torch.cat([value, k_, v_], dim=0)
            continue
        out[OPEN_CLIP_PREFIX + name] = value
    last = count_indices(_strip(out, OPEN_CLIP_PREFIX), "transformer.resblocks.") - 1
    head = f"{OPEN_CLIP_PREFIX}transformer.resblocks."
    for key in [k for k in out if k.startswith(f"{head}{last}.")]:
        out[key.replace(f"{head}{last}.", f"{head}{last + 1}.")] = out[key].clone()
    width = text["final_layer_norm.weight"].shape[0]
    out[OPEN_CLIP_PREFIX + "text_projection"] = torch.eye(width)
    out[OPEN_CLIP_PREFIX + "logit_scale"] = torch.tensor(4.6052)  # log(100), the trained CLIP value
    return out


def detect_unet_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Diffusers-style UNet config read from the shapes of an original file's UNet weights.

    Channels, `layers_per_block`, attention placement, transformer depth, context width
    (`attn2.to_k`) and linear vs. 1x1-conv `proj_in` come from the weights. Head counts do not:
    this guesses SD 2.x's 64-channel heads for linear projections and SD 1.x's 8 heads otherwise;
    callers replace the guess by a preset whose shapes match, or by an explicit config.

    Raises:
        ValueError: the file holds no SD-style UNet.
    """
    u = _strip(state_dict, UNET_PREFIX)
    conv_in = _need(u, "input_blocks.0.0.weight", "UNet")  # (C, in, 3, 3)
    n_in = count_indices(u, "input_blocks.")
    ops = sorted(int(k.split(".")[1]) for k in u if k.endswith(".0.op.weight"))
    layers = ops[0] - 1 if ops else n_in - 1
    step = layers + 1
    n_blocks = n_in // step
    first = [1 + b * step for b in range(n_blocks)]
    channels = [_need(u, f"input_blocks.{i}.0.out_layers.3.weight", "UNet").shape[0] for i in first]
    attn_down = [f"input_blocks.{i}.1.proj_in.weight" in u for i in first]
    attn_up = [f"output_blocks.{b * step}.1.proj_in.weight" in u for b in range(n_blocks)]
    depths = {count_indices(u, f"input_blocks.{i}.1.transformer_blocks.") for i in first}
    proj_in = _need(u, "middle_block.1.proj_in.weight", "UNet")
    context = next(v for k, v in u.items() if k.endswith("attn2.to_k.weight")).shape[1]
    linear = proj_in.ndim == 2  # SD 2.x: Linear (C, C); SD 1.x: 1x1 Conv (C, C, 1, 1)
    depths.discard(0)
    return {
        "in_channels": conv_in.shape[1],
        "out_channels": _need(u, "out.2.weight", "UNet").shape[0],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn_down],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attn_up],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": context,
        "use_linear_projection": linear,
        "transformer_layers_per_block": max(depths, default=1),
        "attention_head_dim": [c // 64 for c in channels] if linear else 8,
        "norm_num_groups": 32,
    }


def detect_vae_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Diffusers-style AutoencoderKL config from an original file (or a VAE-only file).

    Group-norm group count is not in the weights: 32, as in every SD VAE.
    """
    v = _strip(state_dict, _vae_prefix(state_dict))
    n = count_indices(v, "encoder.down.")
    conv1 = [_need(v, f"encoder.down.{i}.block.0.conv1.weight", "VAE") for i in range(n)]
    return {
        "in_channels": _need(v, "encoder.conv_in.weight", "VAE").shape[1],
        "out_channels": _need(v, "decoder.conv_out.weight", "VAE").shape[0],
        "block_out_channels": [w.shape[0] for w in conv1],
        "layers_per_block": count_indices(v, "encoder.down.0.block."),
        "latent_channels": _need(v, "quant_conv.weight", "VAE").shape[0] // 2,  # (2z, 2z, 1, 1)
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "norm_num_groups": 32,
        "scaling_factor": 0.18215,
    }


def detect_text_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Transformers-style CLIPTextConfig from an original file.

    Heads are not in the weights: 64-channel heads, true of ViT-L/14 (12) and OpenCLIP-H (16).
    SD 1.x's OpenAI CLIP uses quick_gelu, SD 2.x's OpenCLIP uses exact gelu.
    """
    fmt = text_format(state_dict)
    if fmt is None:
        raise ValueError("no text encoder (cond_stage_model.transformer / .model) in the file")
    t = extract_text_encoder(state_dict)
    tokens = _need(t, "embeddings.token_embedding.weight", "text encoder")  # (vocab, width)
    width = tokens.shape[1]
    positions = _need(t, "embeddings.position_embedding.weight", "text encoder")
    return {
        "vocab_size": tokens.shape[0],
        "hidden_size": width,
        "intermediate_size": _need(t, "encoder.layers.0.mlp.fc1.weight", "text").shape[0],
        "num_hidden_layers": count_indices(t, "encoder.layers."),
        "num_attention_heads": width // 64,
        "max_position_embeddings": positions.shape[0],
        "hidden_act": "quick_gelu" if fmt == "clip" else "gelu",
        "layer_norm_eps": 1e-5,
    }


def detect_prediction_type(
    state_dict: Mapping[str, Tensor],
    metadata: Mapping[str, Any],
    prediction_type: str | None = None,
) -> str:
    """`epsilon` or `v_prediction` for an original file.

    An explicit `prediction_type` wins. SD 1.x is epsilon. SD 2.x follows diffusers' convention:
    v-prediction (the 768-v models), except a file whose `global_step` is 875000, the SD 2 512-base
    epsilon checkpoint. Files without that metadata (most .safetensors) need the argument.
    """
    if prediction_type is not None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type={prediction_type!r}: use epsilon or v_prediction")
        return prediction_type
    if text_format(state_dict) != "open_clip":
        return "epsilon"
    step = metadata.get("global_step")
    try:
        step = int(step) if step is not None else None
    except (TypeError, ValueError):
        step = None
    return "epsilon" if step == SD2_EPSILON_GLOBAL_STEP else "v_prediction"


def _need(state_dict: Mapping[str, Tensor], key: str, what: str) -> Tensor:
    if key not in state_dict:
        raise ValueError(f"no {key}: this is not an SD 1.x/2.x {what}")
    return state_dict[key]
