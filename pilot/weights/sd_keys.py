"""Key names of the original CompVis / Stability single files (SD 1.x and 2.x) and pilot's.

A file keeps each component under its prefix (`UNET_PREFIX`, ...; see `pilot.weights.sd_original`
for the layout). Pilot's models use diffusers' / transformers' key names, so each component has a
small rule-based `map_<component>_key` (original -> ours) and `unmap_<component>_key` (ours ->
original) on keys without the prefix; UNet block indices are arithmetic on `layers_per_block`
(`UNetLayout`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: transformers CLIPTextModel
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP ViT-H/14 text tower

TextFormat = Literal["clip", "open_clip"]

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


def is_vae_attn_weight(our_key: str) -> bool:
    """Whether our VAE `key` is a mid-attention q/k/v/out weight (a 1x1 conv in the file)."""
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
    `attn.in_proj_*` map to a `self_attn.qkv_proj.*` placeholder that
    `sd_original.extract_text_encoder` splits into q/k/v. `text_projection` and `logit_scale` are
    not used for conditioning and are dropped.
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


def count_indices(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    """Number of distinct integer indices `N` in keys `prefix + N + ...`."""
    found = {k[len(prefix) :].split(".")[0] for k in state_dict if k.startswith(prefix)}
    return len({int(n) for n in found if n.isdigit()})
