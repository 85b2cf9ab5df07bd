"""Load ControlNets: diffusers folders and the original single files, with the model loaders' rules.

`load_controlnet(path)` takes a diffusers `ControlNetModel` folder (`config.json` +
`diffusion_pytorch_model[.fp16].safetensors|.bin`, or a pipeline folder with `controlnet/`), a
bare diffusers weights file with its `config.json` beside it, an original ControlNet 1.0 / 1.1
file (`control_*.pth` / `.safetensors`, see `pilot.weights.controlnet_original`), or a cached
Hugging Face repo id. As in `pilot.weights.loaders`: safetensors first, pickles only through
`torch.load(weights_only=True)`, the model built on the meta device, and every missing,
unexpected or mis-shaped key a `WeightsError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from pilot.models.controlnet import CONTROLNET_PRESETS, ControlNet, ControlNetConfig
from pilot.weights import controlnet_original as original
from pilot.weights.configs import fitting_preset, no_preset_error, read_config_json
from pilot.weights.folders import _find_weights
from pilot.weights.hub import resolve
from pilot.weights.io import (
    WeightsError,
    build_on_meta,
    describe_state_dict,
    load_into,
    read_checkpoint,
)
from pilot.weights.sd_keys import UNetLayout

_CLASS = "ControlNetModel"
# Config keys that weight shapes fix; a preset matching them supplies the head counts.
_STRUCTURE = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types")
_STRUCTURE += ("cross_attention_dim", "use_linear_projection", "transformer_layers_per_block")
_STRUCTURE += ("conditioning_channels", "conditioning_embedding_out_channels")
# Keys a file may differ in from a preset and still take its head counts and norm groups: the
# hint encoder (plain convs) and the latent input (an SD UNet with more inputs) have neither.
_FREE = ("in_channels", "conditioning_channels", "conditioning_embedding_out_channels")
# What a file's weights do not store: config field -> what it is, for messages.
_UNSTORED = {"num_heads": "attention heads", "norm_num_groups": "GroupNorm groups"}


def load_controlnet(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    config: ControlNetConfig | str | None = None,
) -> ControlNet:
    """Load a ControlNet for Stable Diffusion 1.x / 2.x.

    Args:
        path: diffusers folder (or a pipeline folder with `controlnet/`), original single file
            (`control_model.*` keys, v1.0 or v1.1 layout, or without the prefix), bare diffusers
            weights file next to its `config.json`, or a cached repo id.
        dtype: floating dtype after loading; None keeps the file's (float16 on the CPU: float32).
        device: device after loading; None keeps CPU.
        config: a `ControlNetConfig` or `CONTROLNET_PRESETS` name, overriding `config.json` or
            the config read from an original file's weight shapes. An original file whose UNet
            shapes fit no preset needs it: head counts and norm groups are not stored in it.

    Raises:
        WeightsError: naming the file and the problem.
    """
    source = resolve(path)
    cfg = _explicit(config)
    if source.is_dir():
        folder = _folder(source)
        files = _find_weights(folder, ("diffusion_pytorch_model",))
        state_dict: dict[str, Tensor] = {}
        for file in files:  # one file, or the shards of an index
            state_dict.update(read_checkpoint(file).tensors)
        cfg = cfg or _config_from_json(folder / "config.json")
        return _build(cfg, state_dict, files[0] if len(files) == 1 else folder, dtype, device)
    tensors = read_checkpoint(source).tensors
    _refuse_unsupported(tensors, source)
    layout = original.detect_layout(tensors)
    if layout is None:
        raise WeightsError(
            f"{source}: holds no ControlNet weights ({describe_state_dict(tensors)})"
        )
    if layout == "diffusers":
        cfg = cfg or _config_from_json(source.parent / "config.json")
        return _build(cfg, tensors, source, dtype, device)
    stripped = original.strip_prefix(tensors, layout)
    cfg = cfg or _detect_config(stripped, source)
    state_dict = original.extract_controlnet(stripped, UNetLayout.from_config(cfg.unet))
    return _build(cfg, state_dict, source, dtype, device)


def _explicit(config: ControlNetConfig | str | None) -> ControlNetConfig | None:
    if not isinstance(config, str):
        return config
    if config not in CONTROLNET_PRESETS:
        raise ValueError(f"unknown ControlNet preset {config!r}: {sorted(CONTROLNET_PRESETS)}")
    return CONTROLNET_PRESETS[config]


def _folder(source: Path) -> Path:
    """`source/controlnet` for a pipeline folder, `source` for a ControlNet folder."""
    inner = source / "controlnet"
    if (inner / "config.json").is_file() and not (source / "config.json").is_file():
        return inner
    if (source / "model_index.json").is_file() and not (source / "config.json").is_file():
        raise WeightsError(
            f"{source}: a Stable Diffusion pipeline folder (model_index.json) without "
            "controlnet/, not a ControlNet; pass a ControlNet folder or file"
        )
    return source


def _build(cfg: ControlNetConfig, state_dict: Mapping[str, Tensor], source, dtype, device):
    model = build_on_meta(lambda: ControlNet(cfg))
    return load_into(model, state_dict, path=source, dtype=dtype, device=device)


def _refuse_unsupported(tensors: Mapping[str, Tensor], source: Path) -> None:
    """Clear errors for ControlNet-like files pilot does not load."""
    keys = tensors.keys()
    if any("lora_controlnet" in k for k in keys):
        raise WeightsError(f"{source}: a Control-LoRA file; pilot loads full ControlNets only")
    if any(k.startswith(("add_embedding.", "control_model.label_emb", "label_emb.")) for k in keys):
        raise WeightsError(f"{source}: an SDXL ControlNet; pilot loads SD 1.x / 2.x only")


def _config_from_json(path: Path) -> ControlNetConfig:
    d = read_config_json(path, "ControlNet")
    if d.get("_class_name", _CLASS) != _CLASS:
        raise WeightsError(f"{path}: describes a {d['_class_name']}, not a {_CLASS}")
    if d.get("addition_embed_type") == "text_time":  # SDXL's size / crop conditioning
        raise WeightsError(f"{path}: an SDXL ControlNet; pilot loads SD 1.x / 2.x only")
    try:
        return ControlNetConfig.from_diffusers(d)
    except ValueError as e:
        raise WeightsError(f"{path}: unsupported ControlNet config: {e}") from e


def _detect_config(state_dict: Mapping[str, Tensor], source: Path) -> ControlNetConfig:
    """Config from weight shapes; a preset with the same UNet shapes supplies the head counts.

    Raises:
        WeightsError: no preset fits, so head counts and norm groups would be guesses.
    """
    try:
        derived = original.detect_controlnet_config(state_dict)
    except (ValueError, StopIteration, IndexError) as e:
        raise WeightsError(f"{source}: cannot read the ControlNet architecture: {e}") from e
    derived["global_pool_conditions"] = "shuffle" in source.name.lower()
    name = fitting_preset(
        derived, CONTROLNET_PRESETS, ControlNetConfig.to_diffusers, _STRUCTURE, _FREE
    )
    if name is None:
        shapes = {k: derived[k] for k in _STRUCTURE}
        remedy = "pass load_controlnet(path, config=...) a ControlNetConfig or preset name"
        raise no_preset_error(source, "ControlNet", shapes, CONTROLNET_PRESETS, _UNSTORED, remedy)
    reference = CONTROLNET_PRESETS[name].to_diffusers()
    derived = {**reference, **derived, "attention_head_dim": reference["attention_head_dim"]}
    try:
        return ControlNetConfig.from_diffusers(derived)
    except ValueError as e:
        raise WeightsError(f"{source}: invalid ControlNet config {derived}: {e}") from e
