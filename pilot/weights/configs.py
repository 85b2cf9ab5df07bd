"""Configs of the Stable Diffusion components the loaders build (`pilot.weights.loaders`).

A config is explicit (a config object or a preset name), read from a diffusers / transformers
`config.json`, or read from the weight shapes of an original single file. Shapes do not fix every
value (head counts, norm groups, the VAE's latent scale): a preset with the same shapes supplies
them, and with no such preset the load is refused rather than guessed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pilot.weights import sd_original
from pilot.weights.io import WeightsError


@dataclass(frozen=True)
class _Kind:
    """How one component is stored in diffusers folders and detected from single files."""

    label: str  # for messages
    stems: tuple[str, ...]  # weight file names in a component folder, without suffixes
    classes: tuple[str, ...]  # `_class_name` / `architectures` a fitting config.json names
    structure: tuple[str, ...]  # config keys read from weights, compared with the presets
    # Config values the weights of a single file do not determine (`detect_*_config` guesses
    # them); only a preset with the same shapes may supply them. Field -> what it is, for messages.
    unstored: Mapping[str, str]
    # Keys the single-file format fixes whatever the preset says (OpenAI CLIP: quick_gelu,
    # OpenCLIP: gelu), taken from the detected config over a matching preset.
    from_format: tuple[str, ...] = ()
    # Structure keys in which a file may differ from a preset and still take its unstored values:
    # SD's inpainting (9), depth (5) and instruct-pix2pix (8) UNets are SD UNets with more inputs.
    free: tuple[str, ...] = ()


_KINDS: dict[str, _Kind] = {
    "unet": _Kind(
        "UNet",
        ("diffusion_pytorch_model",),
        ("UNet2DConditionModel",),
        (
            "in_channels",
            "out_channels",
            "block_out_channels",
            "layers_per_block",
            "down_block_types",
            "up_block_types",
            "cross_attention_dim",
            "use_linear_projection",
            "transformer_layers_per_block",
        ),
        {"num_heads": "attention heads", "norm_num_groups": "GroupNorm groups"},
        free=("in_channels", "out_channels"),
    ),
    "vae": _Kind(
        "VAE",
        ("diffusion_pytorch_model",),
        ("AutoencoderKL",),
        (
            "in_channels",
            "out_channels",
            "block_out_channels",
            "layers_per_block",
            "latent_channels",
        ),
        {"norm_num_groups": "GroupNorm groups", "scaling_factor": "latent scaling factor"},
    ),
    "text_encoder": _Kind(
        "text encoder",
        ("model", "pytorch_model"),
        ("CLIPTextModel", "CLIPTextModelWithProjection"),
        (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "max_position_embeddings",
        ),
        {"num_heads": "attention heads"},
        ("hidden_act",),
    ),
}
_DETECTORS: dict[str, Callable[[Mapping[str, Tensor]], dict[str, Any]]] = {
    "unet": sd_original.detect_unet_config,
    "vae": sd_original.detect_vae_config,
    "text_encoder": sd_original.detect_text_config,
}
# load_pipeline's argument for each component's config.
_PIPELINE_CONFIG = {"unet": "unet_config", "vae": "vae_config", "text_encoder": "text_config"}


@dataclass(frozen=True)
class _ModelAPI:
    """A pilot model family: config <-> diffusers/transformers dict, class, presets."""

    from_dict: Callable[[dict], Any]
    to_dict: Callable[[Any], dict]
    model: Callable[[Any], nn.Module]
    presets: Mapping[str, Any]


def _api(component: str) -> _ModelAPI:
    """The pilot model of a component (imported lazily: `import pilot` stays light)."""
    if component == "unet":
        from pilot.models.unet import UNET_PRESETS, UNet, UNetConfig

        return _ModelAPI(UNetConfig.from_diffusers, UNetConfig.to_diffusers, UNet, UNET_PRESETS)
    if component == "vae":
        from pilot.models.vae import VAE_PRESETS, AutoencoderKL, VAEConfig

        vae_api = (VAEConfig.from_diffusers, VAEConfig.to_diffusers)
        return _ModelAPI(*vae_api, AutoencoderKL, VAE_PRESETS)
    from pilot.models.clip import CLIP_PRESETS, CLIPTextConfig, CLIPTextModel

    clip_api = (CLIPTextConfig.from_transformers, CLIPTextConfig.to_transformers)
    return _ModelAPI(*clip_api, CLIPTextModel, CLIP_PRESETS)


def _config(component: str, config: Any) -> Any:
    """An explicit config: a config object, or the name of a preset."""
    if config is None or not isinstance(config, str):
        return config
    presets = _api(component).presets
    if config not in presets:
        raise ValueError(f"unknown {_KINDS[component].label} preset {config!r}: {sorted(presets)}")
    return presets[config]


def _detect_config(component: str, tensors: Mapping[str, Tensor], source: Path) -> Any:
    """Config read from weight shapes; a preset whose shapes match supplies what is not.

    Raises:
        WeightsError: no preset matches, so the values the file does not store (head counts,
            norm groups) would be guesses: the caller must pass a config.
    """
    api, kind = _api(component), _KINDS[component]
    try:
        derived = _DETECTORS[component](tensors)
    except (ValueError, StopIteration, IndexError) as e:
        raise WeightsError(f"{source}: cannot read the {kind.label} architecture: {e}") from e
    name = fitting_preset(derived, api.presets, api.to_dict, kind.structure, kind.free)
    if name is None:
        raise _no_preset(component, derived, source)
    preset = api.presets[name]
    reference = api.to_dict(preset)
    read = {k: derived[k] for k in (*kind.structure, *kind.from_format)}
    if all(_plain(read[k]) == _plain(reference.get(k)) for k in read):
        return preset
    try:
        return api.from_dict({**reference, **read})
    except ValueError as e:
        raise WeightsError(f"{source}: invalid {kind.label} config {read}: {e}") from e


def fitting_preset(
    derived: Mapping[str, Any],
    presets: Mapping[str, Any],
    to_dict: Callable[[Any], dict],
    structure: tuple[str, ...],
    free: tuple[str, ...] = (),
) -> str | None:
    """The first preset whose config dict equals `derived` on the `structure` keys, failing that
    on the `structure` keys less the `free` ones (e.g. a UNet with more input channels); None
    when none does.
    """
    exact = tuple(k for k in structure if k not in free)
    for keys in (structure, exact):
        for name, preset in presets.items():
            reference = to_dict(preset)
            if all(_plain(derived.get(k)) == _plain(reference.get(k)) for k in keys):
                return name
    return None


def _no_preset(component: str, derived: Mapping[str, Any], source: Path) -> WeightsError:
    """The error for a single-file component whose shapes fit no preset."""
    kind = _KINDS[component]
    loader = "load_text_encoder" if component == "text_encoder" else f"load_{component}"
    remedy = f"pass config= to {loader}, or {_PIPELINE_CONFIG[component]}= to load_pipeline"
    shapes = {k: derived[k] for k in kind.structure}
    saver = "pilot.weights.save.save_vae" if component == "vae" else None
    return no_preset_error(
        source, kind.label, shapes, _api(component).presets, kind.unstored, remedy, saver
    )


def no_preset_error(
    source: Path,
    label: str,
    shapes: Mapping[str, Any],
    presets: Mapping[str, Any],
    unstored: Mapping[str, str],
    remedy: str,
    saver: str | None = None,
) -> WeightsError:
    """The error for a single file whose shapes fit no preset: pilot does not guess `unstored`.

    Args:
        unstored: config field -> what it is, for the values the file does not store.
        remedy: what to pass instead, e.g. `pass config= to load_unet`.
        saver: the function that saves it as a folder (default: the pipeline's and the
            ControlNet's).
    """
    what = " and ".join(f"{name} ({key})" for key, name in unstored.items())
    names = ", ".join(sorted(presets))
    return WeightsError(
        f"{source}: the {label} shapes {dict(shapes)} fit no preset ({names}). "
        f"Its {what} are not stored in the file and pilot will not guess them: {remedy}. "
        f"For the pilot commands, save it once as a folder, which stores them "
        f"({saver or 'pilot.save_pipeline / pilot.save_controlnet'})"
    )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def read_config_json(path: Path, label: str) -> dict:
    """The dict of a diffusers model's config.json; WeightsError naming the folder (none there)
    or the file (unreadable)."""
    if not path.is_file():
        raise WeightsError(f"{path.parent}: no config.json, not a diffusers {label} folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable config: {e}") from e


def _config_from_json(component: str, path: Path) -> Any:
    kind = _KINDS[component]
    d = read_config_json(path, kind.label)
    name = d.get("_class_name") or (d.get("architectures") or [None])[0]
    if name is not None and name not in kind.classes:
        raise WeightsError(f"{path}: describes a {name}, not a {kind.label} ({kind.classes[0]})")
    try:
        return _api(component).from_dict(d)
    except ValueError as e:
        hint = ""
        if d.get("addition_embed_type") == "text_time" or d.get("cross_attention_dim") == 2048:
            hint = " It looks like an SDXL UNet; pilot loads SD 1.x / 2.x only."
        raise WeightsError(f"{path}: unsupported {kind.label} config: {e}.{hint}") from e
