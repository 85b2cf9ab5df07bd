"""Key mapping for the original ControlNet files (lllyasviel's ControlNet 1.0 / 1.1 releases).

The original `ControlLDM` keeps the ControlNet under `control_model.`, in the CompVis UNet layout
plus three ControlNet parts:

- `input_hint_block.N` the hint encoder, an `nn.Sequential` of convs and SiLUs, so convs sit at
  even indices: 0 is our `conv_in`, 2, 4, ... our `blocks.0, 1, ...`, the last our `conv_out`;
- `zero_convs.N.0` the zero convolutions (our `controlnet_down_blocks.N`);
- `middle_block_out.0` the mid-block zero convolution (our `controlnet_mid_block`).

`time_embed`, `input_blocks` and `middle_block` are the UNet's and map with
`sd_original.map_unet_key`. Files come in three layouts (`detect_layout`):

- `v1.0`: the whole ControlLDM (`control_sd15_canny.pth`): `control_model.*` next to a full SD
  model (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`); only the
  ControlNet is read, the embedded base model is dropped on purpose;
- `v1.1`: the ControlNet alone under `control_model.*` (`control_v11p_sd15_canny.pth`, the
  extracted `control_*-fp16.safetensors`);
- `bare`: the ControlNet alone without a prefix (e.g. thibaud's SD 2.1 ControlNets).

The architectures of 1.0 and 1.1 are the same. The v1.1 shuffle model averages its residuals
over space (`global_average_pooling` in its yaml); the weights do not say so, so the loader
sets it for files named `*shuffle*`, as ComfyUI does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from torch import Tensor

from pilot.weights.sd_keys import (
    UNET_PREFIX,
    UNetLayout,
    count_indices,
    map_unet_key,
    unmap_unet_key,
)
from pilot.weights.sd_original import _need

CONTROL_PREFIX = "control_model."
Layout = Literal["v1.0", "v1.1", "bare", "diffusers"]

_HINT = "input_hint_block."
_ZERO = "zero_convs."
_MID_OUT = "middle_block_out.0."
_OURS_HINT = "controlnet_cond_embedding."


def detect_layout(state_dict: Mapping[str, Tensor]) -> Layout | None:
    """Which ControlNet layout a file's keys use (see the module docstring); None: no ControlNet."""
    keys = state_dict.keys()
    if any(k.startswith(CONTROL_PREFIX + _HINT) for k in keys):
        return "v1.0" if any(k.startswith(UNET_PREFIX) for k in keys) else "v1.1"
    if any(k.startswith(_HINT) for k in keys):
        return "bare"
    if any(k.startswith(_OURS_HINT) for k in keys):
        return "diffusers"
    return None


def hint_indices(state_dict: Mapping[str, Tensor]) -> list[int]:
    """Sorted `input_hint_block` conv indices of a (prefix-stripped) original state dict."""
    found = {k[len(_HINT) :].split(".")[0] for k in state_dict if k.startswith(_HINT)}
    return sorted(int(n) for n in found if n.isdigit())


def map_controlnet_key(key: str, layout: UNetLayout, last_hint: int) -> str | None:
    """Original ControlNet key (without `control_model.`) -> ours; None if not a ControlNet key.

    Args:
        key: e.g. `input_hint_block.14.weight`, `zero_convs.3.0.bias`, `input_blocks.1.0...`.
        layout: the UNet layout (only `layers_per_block` matters for the encoder).
        last_hint: index of the last hint conv (`conv_out`): 14 for the released models.
    """
    parts = key.split(".")
    if key.startswith(_HINT):
        n = int(parts[1])
        if n == 0:
            name = "conv_in"
        elif n == last_hint:
            name = "conv_out"
        else:
            name = f"blocks.{n // 2 - 1}"
        return ".".join([_OURS_HINT + name, *parts[2:]])
    if key.startswith(_ZERO):  # zero_convs.N.0.weight
        return ".".join([f"controlnet_down_blocks.{parts[1]}", *parts[3:]])
    if key.startswith(_MID_OUT):
        return "controlnet_mid_block." + key[len(_MID_OUT) :]
    if parts[0] in ("time_embed", "input_blocks", "middle_block"):
        return map_unet_key(key, layout)
    return None


def unmap_controlnet_key(key: str, layout: UNetLayout, last_hint: int) -> str:
    """Our ControlNet key -> original (without `control_model.`); inverse of `map_..._key`."""
    parts = key.split(".")
    if key.startswith(_OURS_HINT):
        name, rest = parts[1], parts[2:]
        if name == "conv_in":
            n = 0
        elif name == "conv_out":
            n = last_hint
        else:  # blocks.k.*
            n, rest = 2 * (int(parts[2]) + 1), parts[3:]
        return ".".join([f"{_HINT}{n}", *rest])
    if parts[0] == "controlnet_down_blocks":
        return ".".join([f"{_ZERO}{parts[1]}.0", *parts[2:]])
    if parts[0] == "controlnet_mid_block":
        return _MID_OUT + ".".join(parts[1:])
    return unmap_unet_key(key, layout)


def strip_prefix(state_dict: Mapping[str, Tensor], layout: Layout) -> dict[str, Tensor]:
    """The ControlNet's original keys without `control_model.` (other keys dropped for v1.0)."""
    if layout == "bare":
        return dict(state_dict)
    n = len(CONTROL_PREFIX)
    if layout == "v1.1":  # keep anything unknown, so loading reports it as unexpected
        return {k[n:] if k.startswith(CONTROL_PREFIX) else k: v for k, v in state_dict.items()}
    return {k[n:]: v for k, v in state_dict.items() if k.startswith(CONTROL_PREFIX)}


def extract_controlnet(state_dict: Mapping[str, Tensor], layout: UNetLayout) -> dict[str, Tensor]:
    """Our ControlNet state dict from prefix-stripped original keys; unknown keys are kept."""
    last_hint = hint_indices(state_dict)[-1]
    return {map_controlnet_key(k, layout, last_hint) or k: v for k, v in state_dict.items()}


def to_original(
    state_dict: Mapping[str, Tensor], unet_config: Any, *, prefix: str = CONTROL_PREFIX
) -> dict[str, Tensor]:
    """Our ControlNet state dict in the original layout (`v1.1` with the default prefix).

    Args:
        state_dict: keyed like `ControlNet.state_dict()`.
        unet_config: the ControlNet's `UNetConfig` (or diffusers UNet config dict).
        prefix: `control_model.` (v1.1 files) or "" (bare files).
    """
    layout = UNetLayout.from_config(unet_config)
    blocks = count_indices(state_dict, _OURS_HINT + "blocks.")
    last_hint = 2 * (blocks + 1)
    return {prefix + unmap_controlnet_key(k, layout, last_hint): v for k, v in state_dict.items()}


def detect_controlnet_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Diffusers-style `ControlNetModel` config read from prefix-stripped original weights.

    Head counts are not in the weights: like `sd_original.detect_unet_config` this guesses SD
    2.x's 64-channel heads for linear projections and SD 1.x's 8 heads otherwise; callers
    replace the guess by a preset whose shapes match, or by an explicit config.

    Raises:
        ValueError: the weights hold no SD 1.x / 2.x ControlNet.
    """
    c = state_dict
    conv_in = _need(c, "input_blocks.0.0.weight", "ControlNet")  # (C0, in, 3, 3)
    n_in = count_indices(c, "input_blocks.")
    ops = sorted(int(k.split(".")[1]) for k in c if k.endswith(".0.op.weight"))
    layers = ops[0] - 1 if ops else n_in - 1
    step = layers + 1
    first = [1 + b * step for b in range(n_in // step)]
    channels = [
        _need(c, f"input_blocks.{i}.0.out_layers.3.weight", "ControlNet").shape[0] for i in first
    ]
    attn = [f"input_blocks.{i}.1.proj_in.weight" in c for i in first]
    depths = {count_indices(c, f"input_blocks.{i}.1.transformer_blocks.") for i in first}
    depths.discard(0)
    linear = _need(c, "middle_block.1.proj_in.weight", "ControlNet").ndim == 2
    context = next(v for k, v in c.items() if k.endswith("attn2.to_k.weight")).shape[1]
    hints = hint_indices(c)
    hint_w = [_need(c, f"{_HINT}{n}.weight", "ControlNet") for n in hints]
    return {
        "in_channels": conv_in.shape[1],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "cross_attention_dim": context,
        "use_linear_projection": linear,
        "transformer_layers_per_block": max(depths, default=1),
        "attention_head_dim": [ch // 64 for ch in channels] if linear else 8,
        "conditioning_channels": hint_w[0].shape[1],
        # conv_in's width, then every second conv of the rest (the stride-2 ones)
        "conditioning_embedding_out_channels": [hint_w[0].shape[0]]
        + [w.shape[0] for w in hint_w[2:-1:2]],
    }
