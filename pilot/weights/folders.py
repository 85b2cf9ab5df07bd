"""The diffusers folders the loaders read (`pilot.weights.loaders`).

Component subfolders, their weight files (safetensors before `.bin`, full before the fp16
variant, or the shards of an index), key spellings of older diffusers / transformers versions,
checks that a folder is an SD 1.x / 2.x pipeline, and its `scheduler/scheduler_config.json`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from pilot.weights.configs import _KINDS
from pilot.weights.io import WeightsError

# Attention names of diffusers VAE folders saved before diffusers 0.14 -> current names.
_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _component_folder(source: Path, component: str) -> Path:
    """`source/<component>` for a pipeline folder, `source` for a component folder."""
    if (source / component / "config.json").is_file() and not (source / "config.json").is_file():
        return source / component
    if (source / "model_index.json").is_file():
        raise WeightsError(f"{source}: pipeline folder without {component}/config.json")
    return source


def _find_weights(folder: Path, stems: tuple[str, ...]) -> list[Path]:
    """The weights of a component folder: safetensors before .bin, full before fp16 variant."""
    for ext in (".safetensors", ".bin"):
        for variant in ("", ".fp16"):
            for stem in stems:
                file = folder / f"{stem}{variant}{ext}"
                if file.is_file():
                    return [file]
                index = folder / f"{stem}{variant}{ext}.index.json"
                if index.is_file():
                    return _shards(index)
    names = ", ".join(f"{s}[.fp16].safetensors|.bin" for s in stems)
    raise WeightsError(f"{folder}: no weights file (looked for {names})")


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        raise WeightsError(f"{index}: unreadable shard index: {e}") from e
    return [index.parent / name for name in sorted(set(weight_map.values()))]


def _normalize_keys(component: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Older diffusers / transformers key spellings -> current ones."""
    if component == "text_encoder":  # transformers < 5 saved CLIPTextModel under `text_model.`
        return {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    if component == "vae":
        out = {}
        for key, value in state_dict.items():
            head, _, leaf = key.rpartition(".")  # leaf: weight / bias
            owner, _, name = head.rpartition(".")
            if ".mid_block.attentions." in key and name in _LEGACY_VAE_ATTENTION:
                key = f"{owner}.{_LEGACY_VAE_ATTENTION[name]}.{leaf}"
            out[key] = value
        return out
    return dict(state_dict)


def _check_pipeline_folder(source: Path) -> None:
    index = source / "model_index.json"
    if not index.is_file():
        if all((source / c).is_dir() for c in _KINDS):
            return
        if name := folder_class_name(source):  # one model of a pipeline, or a ControlNet
            hint = (
                "load it with pilot.load_controlnet (`pilot generate --controlnet`)"
                if name == "ControlNetModel"
                else f"pass the pipeline folder that holds it ({source.parent})"
            )
            raise WeightsError(
                f"{source}: a diffusers {name} folder (one model, no model_index.json), not a "
                f"pipeline folder: {hint}"
            )
        raise WeightsError(f"{source}: no model_index.json, not a diffusers pipeline folder")
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError) as e:
        raise WeightsError(f"{index}: unreadable: {e}") from e
    if "XL" in name or "StableDiffusion3" in name:
        raise WeightsError(f"{index}: a {name}; pilot loads SD 1.x / 2.x pipelines only")


def folder_class_name(folder: Path) -> str | None:
    """The `_class_name` of a diffusers model folder's config.json (None: none readable)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = config.get("_class_name") if isinstance(config, dict) else None
    return name if isinstance(name, str) else None


# diffusers' scheduler defaults, which stand in for a key scheduler_config.json leaves out; SD's
# own values (`pilot.weights.save.SD_SCHEDULER`, what pilot samples with) are compared to them.
_SCHEDULE_DEFAULTS = {
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "rescale_betas_zero_snr": False,
}


def _scheduler_config(source: Path) -> dict | None:
    """A pipeline folder's `scheduler/scheduler_config.json`, None when it has none."""
    path = source / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable: {e}") from e


def _check_folder_schedule(source: Path, config: dict | None) -> None:
    """Warn when the folder's scheduler `config` trains on other noise levels than SD's.

    Sampling always uses SD 1.x / 2.x's scaled_linear betas 0.00085..0.012 over 1000 steps; a
    fine-tune trained on another schedule is sampled on the wrong noise levels.
    """
    from pilot.weights.save import SD_SCHEDULER

    if config is None:
        return
    other = {
        key: config.get(key, default)
        for key, default in _SCHEDULE_DEFAULTS.items()
        if config.get(key, default) != SD_SCHEDULER.get(key, default)
    }
    if other:
        warnings.warn(
            f"{source / 'scheduler' / 'scheduler_config.json'}: the model was trained with "
            f"{other}, not SD's scaled_linear betas 0.00085..0.012 over 1000 steps; pilot samples "
            "with SD's schedule only, so results will be off",
            stacklevel=3,
        )


def _folder_prediction_type(config: dict | None) -> str:
    """The scheduler `config`'s prediction type (diffusers' default: epsilon)."""
    return "epsilon" if config is None else config.get("prediction_type", "epsilon")
