"""Key mapping for the original CompVis / Stability single-file checkpoints (SD 1.x and 2.x).

An original file holds the whole latent diffusion model under four prefixes:

- `model.diffusion_model.` the UNet (`input_blocks`, `middle_block`, `output_blocks`, `out`),
- `first_stage_model.` the VAE (`encoder.down.N.block.M`, `mid.attn_1` with 1x1-conv q/k/v),
- `cond_stage_model.transformer.` the SD 1.x text encoder (a transformers CLIPTextModel),
- `cond_stage_model.model.` the SD 2.x OpenCLIP text tower (`transformer.resblocks.N` with a
  packed `attn.in_proj_weight`).

Pilot's models use diffusers' / transformers' key names, so each component has a small rule-based
`map_<component>_key` (original -> ours) and `unmap_<component>_key` (ours -> original); block
indices are arithmetic on `layers_per_block`. `split_original` converts a whole file to
per-component state dicts, `to_original` is the exact inverse (our own conversion, used by tests to
write single files). `detect_*_config` read the architecture from weight shapes and return configs
in diffusers / transformers form, for `UNetConfig.from_diffusers` and friends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: transformers CLIPTextModel
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP ViT-H/14 text tower

TextFormat = Literal["clip", "open_clip"]

# The SD 2.x global step diffusers (convert_from_ckpt, single_file_utils) uses to tell the
# 512-base epsilon checkpoint from the 768-v checkpoints; any other SD 2.x file is v-prediction.
SD2_EPSILON_GLOBAL_STEP = 875000

_RESNET = {  # ldm ResBlock (Sequential indices) -> diffusers ResnetBlock2D
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_UNET_TOP = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
_VAE_TOP = {
    "encoder.norm_out": "encoder.conv_norm_out",
    "decoder.norm_out": "decoder.conv_norm_out",
}
_VAE_RESNET = {"nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_OPEN_CLIP_TOP = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}
# Contrastive-training parts of the OpenCLIP tower, unused for SD conditioning.
_OPEN_CLIP_DROPPED = ("text_projection", "logit_scale", "attn_mask")
_OPEN_CLIP_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def _invert(table: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


def _rename_prefix(key: str, table: Mapping[str, str]) -> str | None:
    """Replace the longest dotted prefix of `key` found in `table`; None when none matches."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in table:
            return ".".join([table[head], *parts[n:]])
    return None


@dataclass(frozen=True)
class UNetLayout:
    """What the UNet key arithmetic needs from a config.

    Attributes:
        layers_per_block: resnets per down block (up blocks have one more).
        attn_up: per up block, whether it has cross-attention (moves the upsampler index).
    """

    layers_per_block: int
    attn_up: tuple[bool, ...]

    @classmethod
    def from_config(cls, cfg: Any) -> UNetLayout:
        """From a diffusers UNet config dict or any config with `to_diffusers()`."""
        d = cfg if isinstance(cfg, Mapping) else cfg.to_diffusers()
        attn_up = tuple("CrossAttn" in t for t in d["up_block_types"])
        return cls(int(d["layers_per_block"]), attn_up)


def map_unet_key(key: str, layout: UNetLayout) -> str | None:
    """Original UNet key (without `model.diffusion_model.`) -> ours; None if not a UNet key."""
    top = _rename_prefix(key, _UNET_TOP)
    if top is not None:
        return top
    parts = key.split(".")
    step = layout.layers_per_block + 1
    if parts[0] == "input_blocks" and len(parts) > 3:
        b, j = divmod(int(parts[1]) - 1, step)
        kind, rest = parts[2], parts[3:]
        if j == layout.layers_per_block and kind == "0" and rest[0] == "op":
            return _join(f"down_blocks.{b}.downsamplers.0.conv", rest[1:])
        if kind == "0":
            return _resnet(f"down_blocks.{b}.resnets.{j}", rest)
        return _join(f"down_blocks.{b}.attentions.{j}", rest)
    if parts[0] == "middle_block" and len(parts) > 2:
        k = int(parts[1])
        if k == 1:
            return _join("mid_block.attentions.0", parts[2:])
        return _resnet(f"mid_block.resnets.{k // 2}", parts[2:])
    if parts[0] == "output_blocks" and len(parts) > 3:
        b, j = divmod(int(parts[1]), step)
        kind, rest = int(parts[2]), parts[3:]
        if kind == 0:
            return _resnet(f"up_blocks.{b}.resnets.{j}", rest)
        if kind == 1 and layout.attn_up[b]:
            return _join(f"up_blocks.{b}.attentions.{j}", rest)
        return _join(f"up_blocks.{b}.upsamplers.0", rest)  # rest = conv.weight / conv.bias
    return None


def unmap_unet_key(key: str, layout: UNetLayout) -> str:
    """Our UNet key -> original (without `model.diffusion_model.`); inverse of `map_unet_key`."""
    top = _rename_prefix(key, _invert(_UNET_TOP))
    if top is not None:
        return top
    parts = key.split(".")
    step = layout.layers_per_block + 1
    if parts[0] == "down_blocks":
        b, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.*
            return _join(f"input_blocks.{1 + b * step + layout.layers_per_block}.0.op", parts[5:])
        j, rest = int(parts[3]), parts[4:]
        if kind == "resnets":
            return _unresnet(f"input_blocks.{1 + b * step + j}.0", rest)
        return _join(f"input_blocks.{1 + b * step + j}.1", rest)
    if parts[0] == "mid_block":
        kind, n, rest = parts[1], int(parts[2]), parts[3:]
        if kind == "attentions":
            return _join("middle_block.1", rest)
        return _unresnet(f"middle_block.{2 * n}", rest)
    if parts[0] == "up_blocks":
        b, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":  # up_blocks.b.upsamplers.0.conv.*
            index = 2 if layout.attn_up[b] else 1
            return _join(f"output_blocks.{b * step + layout.layers_per_block}.{index}", parts[4:])
        j, rest = int(parts[3]), parts[4:]
        if kind == "resnets":
            return _unresnet(f"output_blocks.{b * step + j}.0", rest)
        return _join(f"output_blocks.{b * step + j}.1", rest)
    raise KeyError(f"not a UNet key: {key}")


def _join(head: str, rest: Sequence[str]) -> str:
    return ".".join([head, *rest])


def _resnet(head: str, rest: Sequence[str]) -> str:
    return _join(head, [_rename_prefix(".".join(rest), _RESNET) or ".".join(rest)])


def _unresnet(head: str, rest: Sequence[str]) -> str:
    return _join(head, [_rename_prefix(".".join(rest), _invert(_RESNET)) or ".".join(rest)])


def map_vae_key(key: str, num_blocks: int) -> str | None:
    """Original VAE key (without `first_stage_model.`) -> ours; None if not a VAE key.

    The decoder's `up.N` run in the opposite order to diffusers' `up_blocks`: up.0 is the last.
    """
    top = _rename_prefix(key, _VAE_TOP)
    if top is not None:
        return top
    parts = key.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return key
    if parts[0] not in ("encoder", "decoder") or len(parts) < 3:
        return None
    side, group = parts[0], parts[1]
    if group in ("down", "up"):
        i = int(parts[2]) if group == "down" else num_blocks - 1 - int(parts[2])
        blocks = f"{side}.{group}_blocks.{i}"
        if parts[3] == "block":  # {side}.down.i.block.j.*
            rest = ".".join(parts[5:])
            return f"{blocks}.resnets.{parts[4]}." + (_rename_prefix(rest, _VAE_RESNET) or rest)
        return _join(f"{blocks}.{group}samplers.0", parts[4:])  # downsample.conv / upsample.conv
    if group == "mid":
        if parts[2].startswith("block_"):
            rest = ".".join(parts[3:])
            n = int(parts[2][len("block_") :]) - 1
            return f"{side}.mid_block.resnets.{n}." + (_rename_prefix(rest, _VAE_RESNET) or rest)
        if parts[2] == "attn_1":
            rest = _rename_prefix(".".join(parts[3:]), _VAE_ATTN)
            return f"{side}.mid_block.attentions.0.{rest}"
    return key  # conv_in, conv_out: same names


def unmap_vae_key(key: str, num_blocks: int) -> str:
    """Our VAE key -> original (without `first_stage_model.`); inverse of `map_vae_key`."""
    top = _rename_prefix(key, _invert(_VAE_TOP))
    if top is not None:
        return top
    parts = key.split(".")
    if len(parts) < 4:
        return key
    side, group = parts[0], parts[1]
    if group in ("down_blocks", "up_blocks"):
        short = group.split("_")[0]
        i = int(parts[2]) if short == "down" else num_blocks - 1 - int(parts[2])
        if parts[3] == "resnets":
            rest = ".".join(parts[5:])
            rest = _rename_prefix(rest, _invert(_VAE_RESNET)) or rest
            return f"{side}.{short}.{i}.block.{parts[4]}.{rest}"
        return _join(f"{side}.{short}.{i}.{short}sample", parts[5:])
    if group == "mid_block":
        rest = ".".join(parts[4:])
        if parts[2] == "attentions":
            return f"{side}.mid.attn_1." + _rename_prefix(rest, _invert(_VAE_ATTN))
        rest = _rename_prefix(rest, _invert(_VAE_RESNET)) or rest
        return f"{side}.mid.block_{int(parts[3]) + 1}.{rest}"
    return key


def _is_vae_attn_weight(our_key: str) -> bool:
    return ".mid_block.attentions.0.to_" in our_key and our_key.endswith(".weight")


def map_clip_key(key: str) -> str:
    """SD 1.x text key (without `cond_stage_model.transformer.`) -> ours.

    Files saved with transformers < 4.x-era wrappers say `text_model.`; pilot drops it.
    """
    return key.removeprefix("text_model.")


def unmap_clip_key(key: str) -> str:
    """Our CLIP key -> SD 1.x text key (without `cond_stage_model.transformer.`)."""
    return "text_model." + key


def map_open_clip_key(key: str, num_layers: int) -> str | None:
    """OpenCLIP text key (without `cond_stage_model.model.`) -> ours; None when dropped on purpose.

    SD 2.x conditions on the penultimate layer of the 24-layer OpenCLIP tower (`layer: penultimate`
    in the v2 yaml), so `resblocks.23` (any block >= `num_layers`) is dropped and our encoder,
    like diffusers', has 23 layers with the final LayerNorm applied after the 23rd. The packed
    `attn.in_proj_*` map to a `self_attn.qkv_proj.*` placeholder that `split_original` splits into
    q/k/v. `text_projection` and `logit_scale` are not used for conditioning and are dropped.
    """
    if key in _OPEN_CLIP_TOP:
        return _OPEN_CLIP_TOP[key]
    if key.split(".")[0] in _OPEN_CLIP_DROPPED:
        return None
    parts = key.split(".")
    if parts[:2] != ["transformer", "resblocks"]:
        return key  # unknown: kept under its own name, so loading reports it as unexpected
    n = int(parts[2])
    if n >= num_layers:
        return None
    rest = ".".join(parts[3:])
    if rest.startswith("attn.in_proj_"):
        rest = "self_attn.qkv_proj." + rest[len("attn.in_proj_") :]
    else:
        rest = _rename_prefix(rest, _OPEN_CLIP_LAYER) or rest
    return f"encoder.layers.{n}.{rest}"


def unmap_open_clip_key(key: str) -> str:
    """Our CLIP key -> OpenCLIP key (q/k/v keys land on the packed `attn.in_proj_*`)."""
    inverse = _invert(_OPEN_CLIP_TOP)
    if key in inverse:
        return inverse[key]
    parts = key.split(".")  # encoder.layers.N.*
    rest = ".".join(parts[3:])
    if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
        rest = "attn.in_proj_" + rest.split(".")[-1]
    else:
        rest = _rename_prefix(rest, _invert(_OPEN_CLIP_LAYER)) or rest
    return f"transformer.resblocks.{parts[2]}.{rest}"


def text_format(state_dict: Mapping[str, Tensor]) -> TextFormat | None:
    """Which text encoder an original file holds: SD 1.x `clip`, SD 2.x `open_clip`, or None."""
    if any(k.startswith(OPEN_CLIP_PREFIX) for k in state_dict):
        return "open_clip"
    if any(k.startswith(CLIP_PREFIX) for k in state_dict):
        return "clip"
    return None


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
        elif _is_vae_attn_weight(ours) and value.ndim == 4:
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


def original_key(component: str, key: str, config: Mapping[str, Any], state_dict) -> str:
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
            if _is_vae_attn_weight(key) and value.ndim == 2:
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


def count_indices(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    """Number of distinct integer indices `N` in keys `prefix + N + ...`."""
    found = {k[len(prefix) :].split(".")[0] for k in state_dict if k.startswith(prefix)}
    return len({int(n) for n in found if n.isdigit()})


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
