"""Load Stable Diffusion 1.x / 2.x models from what users have on disk.

Every `load_*` takes `path`: a diffusers model folder (`model_index.json` + `unet/ vae/
text_encoder/ tokenizer/ scheduler/`), one component folder (`config.json` + weights), an
original CompVis / Stability single file (`.safetensors` or `.ckpt`), or a Hugging Face repo id
found in the local hub cache (see `pilot.weights.hub`). Models are built on the meta device and
filled with `load_state_dict(assign=True)`; any missing, unexpected or mis-shaped key is a
`WeightsError` naming the file.

Original files that hold both training and EMA UNet weights (`model_ema.*`) load the training
weights, as diffusers does by default; the `-emaonly` files already hold the EMA weights there.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pilot.weights import sd_original
from pilot.weights.hub import resolve
from pilot.weights.io import (
    Checkpoint,
    WeightsError,
    _listing,
    build_on_meta,
    describe_state_dict,
    load_into,
    read_checkpoint,
    read_keys,
)

Component = Literal["unet", "vae", "text_encoder"]
PathLike = str | os.PathLike


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
# Attention names of diffusers VAE folders saved before diffusers 0.14 -> current names.
_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


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


@dataclass(frozen=True)
class StableDiffusion:
    """The models of a Stable Diffusion 1.x / 2.x checkpoint.

    Attributes:
        unet: predicts `prediction_type` from latents, timesteps and text embeddings.
        vae: maps images in [-1, 1] to unscaled latents and back.
        text_encoder: CLIP text transformer, token ids to (B, 77, C) embeddings.
        tokenizer: CLIP BPE tokenizer producing (B, 77) ids.
        prediction_type: `epsilon` (SD 1.x, SD 2 512-base) or `v_prediction` (SD 2.x 768-v).
    """

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    prediction_type: str

    @property
    def scaling_factor(self) -> float:
        """Factor applied to VAE latents before the UNet (0.18215 for SD 1.x / 2.x)."""
        return self.vae.cfg.scaling_factor

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> StableDiffusion:
        """Move the three models in place; returns self."""
        for model in (self.unet, self.vae, self.text_encoder):
            model.to(device=device, dtype=dtype)
        return self


def load_unet(
    path: PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    config: Any = None,
) -> nn.Module:
    """Load a Stable Diffusion UNet.

    Args:
        path: diffusers folder (or its `unet/`), original single file, or cached repo id.
        dtype: floating dtype after loading; None keeps the file's.
        device: device after loading; None keeps CPU.
        config: a `UNetConfig` or `UNET_PRESETS` name, overriding `config.json` or, for single
            files, the config read from weight shapes. A single file whose shapes fit no
            preset (or a preset with other input / output channels) needs it: head counts and
            norm groups are not stored in the file.

    Raises:
        WeightsError: naming the file and the problem.
    """
    return _load("unet", path, dtype=dtype, device=device, config=config)


def load_vae(
    path: PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    config: Any = None,
) -> nn.Module:
    """Load a Stable Diffusion VAE (AutoencoderKL); also VAE-only original files.

    Args: as `load_unet`, with a `VAEConfig` or `VAE_PRESETS` name for `config`.
    """
    return _load("vae", path, dtype=dtype, device=device, config=config)


def load_text_encoder(
    path: PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    config: Any = None,
) -> nn.Module:
    """Load a CLIP text encoder (SD 1.x OpenAI CLIP or SD 2.x OpenCLIP, 23 of its 24 layers).

    Args: as `load_unet`, with a `CLIPTextConfig` or `CLIP_PRESETS` name for `config`.
    """
    return _load("text_encoder", path, dtype=dtype, device=device, config=config)


def load_config(path: PathLike, component: str) -> Any:
    """The config of one model of a diffusers pipeline folder (or of a model folder) from its
    config.json alone, no weights read: e.g. the VAE factor, to check a size before a slow load.

    Args:
        path: A diffusers pipeline folder or one model's folder.
        component: "unet", "vae" or "text_encoder".

    Raises:
        WeightsError: no readable config.json of that model, naming the folder.
    """
    if component not in _KINDS:
        raise ValueError(f"component {component!r}; valid: {', '.join(_KINDS)}")
    folder = _component_folder(Path(path), component)
    return _config_from_json(component, folder / "config.json")


def load_tokenizer(path: PathLike) -> Any:
    """Load the CLIP tokenizer of a model.

    A folder gives its `tokenizer/` (vocab.json + merges.txt or tokenizer.json, and its pad
    token); a single file gives pilot's shipped CLIP vocabulary, padded with `<|endoftext|>` for
    SD 1.x and `!` for SD 2.x (as the diffusers repos of those models do).
    """
    from pilot.models.tokenizer import CLIPTokenizer

    source = resolve(path)
    if source.is_dir():
        folder = source / "tokenizer" if (source / "tokenizer").is_dir() else source
        try:
            return CLIPTokenizer.from_folder(folder)
        except (OSError, ValueError, KeyError) as e:
            raise WeightsError(f"{folder}: not a CLIP tokenizer folder: {e}") from e
    if source.name.endswith(".txt.gz"):
        return CLIPTokenizer.from_bpe_gz(source)
    return _default_tokenizer(dict.fromkeys(read_keys(source)))


def _default_tokenizer(state_dict: Mapping[str, Any]) -> Any:
    """Shipped CLIP vocabulary; SD 2.x (OpenCLIP) pads with `!` (id 0), SD 1.x with EOS."""
    from pilot.models.tokenizer import EOS_TOKEN, CLIPTokenizer

    fmt = sd_original.text_format(state_dict)
    return CLIPTokenizer.default(pad_token="!" if fmt == "open_clip" else EOS_TOKEN)


def load_pipeline(
    path: PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    prediction_type: str | None = None,
    unet_config: Any = None,
    vae_config: Any = None,
    text_config: Any = None,
    tokenizer: Any = None,
) -> StableDiffusion:
    """Load all four models of a Stable Diffusion 1.x / 2.x checkpoint.

    Args:
        path: diffusers pipeline folder, original single file, or cached repo id.
        dtype: floating dtype of the models; None keeps the files'.
        device: device of the models; None keeps CPU.
        prediction_type: `epsilon` or `v_prediction`, overriding the folder's
            `scheduler/scheduler_config.json` or the single-file convention (see
            `sd_original.detect_prediction_type`: SD 2.x files are v-prediction unless their
            `global_step` is 875000, the 512-base model; pass it for 512-base .safetensors).
        unet_config, vae_config, text_config: each component's `config` (see `load_unet`,
            `load_vae`, `load_text_encoder`): a config object or preset name, needed for single
            files whose shapes fit no preset.
        tokenizer: a `CLIPTokenizer`, or a path `load_tokenizer` reads (a tokenizer or model
            folder, a BPE `.txt.gz`); None: the folder's `tokenizer/`, or pilot's shipped CLIP
            vocabulary (49408 tokens) for a single file.

    Raises:
        WeightsError: naming the file and the problem, e.g. a tokenizer with more tokens than
            the text encoder's embedding table (a single file of a small text encoder).
    """
    source = resolve(path)
    kwargs = dict(dtype=dtype, device=device)
    configs = dict(zip(_KINDS, (unet_config, vae_config, text_config), strict=True))
    if source.is_dir():
        _check_pipeline_folder(source)
        models = {c: _load(c, source / c, config=configs[c], **kwargs) for c in _KINDS}
        scheduler = _scheduler_config(source)
        pred = prediction_type or _folder_prediction_type(scheduler)
        _check_folder_schedule(source, scheduler)
        if tokenizer is None:
            tokenizer = load_tokenizer(source / "tokenizer")
    else:
        ckpt = read_checkpoint(source)
        _refuse_gan(ckpt, source)
        models = {c: _from_original(c, ckpt, source, configs[c], **kwargs) for c in _KINDS}
        _warn_unused(ckpt.tensors, source)
        pred = sd_original.detect_prediction_type(ckpt.tensors, ckpt.metadata, prediction_type)
        if tokenizer is None:
            tokenizer = _default_tokenizer(ckpt.tensors)
    if pred not in ("epsilon", "v_prediction"):
        raise WeightsError(f"{source}: unsupported prediction_type {pred!r}")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    _check_tokenizer(tokenizer, models["text_encoder"], source)
    return StableDiffusion(tokenizer=tokenizer, prediction_type=pred, **models)


def _check_tokenizer(tokenizer: Any, text_encoder: nn.Module, source: Path) -> None:
    """Refuse a tokenizer whose ids overflow the text encoder's embedding table."""
    n_tokens, n_embeddings = len(tokenizer.vocab), text_encoder.cfg.vocab_size
    if n_tokens > n_embeddings:
        raise WeightsError(
            f"{source}: the tokenizer has {n_tokens} tokens but the text encoder embeds only "
            f"{n_embeddings}: pass the tokenizer it was trained with "
            "(load_pipeline(..., tokenizer=FOLDER or CLIPTokenizer))"
        )


def _load(component: str, path: PathLike, *, config: Any, dtype, device) -> nn.Module:
    source = resolve(path)
    if source.is_dir():
        return _from_folder(component, _component_folder(source, component), config, dtype, device)
    ckpt = read_checkpoint(source)
    if sd_original.is_original(ckpt.tensors):
        model = _from_original(component, ckpt, source, config, dtype=dtype, device=device)
        _warn_unused(ckpt.tensors, source)
        return model
    if "pytorch-lightning_version" in ckpt.metadata:  # and not an original SD checkpoint
        raise WeightsError(
            f"{source}: a training checkpoint, not {_KINDS[component].label} weights: pass the "
            "folder its training exported (a diffusers folder with config.json)"
        )
    # A bare diffusers / transformers weights file: its config.json lies next to it.
    cfg = _config(component, config) or _config_from_json(component, source.parent / "config.json")
    state_dict = _normalize_keys(component, ckpt.tensors)
    return _build(component, cfg, state_dict, source, dtype, device)


def _from_folder(component: str, folder: Path, config: Any, dtype, device) -> nn.Module:
    cfg = _config(component, config) or _config_from_json(component, folder / "config.json")
    files = _find_weights(folder, _KINDS[component].stems)
    state_dict: dict[str, Tensor] = {}
    for file in files:  # one file, or the shards of an index
        state_dict.update(read_checkpoint(file).tensors)
    source = files[0] if len(files) == 1 else folder
    return _build(component, cfg, _normalize_keys(component, state_dict), source, dtype, device)


def _from_original(
    component: str, ckpt: Checkpoint, source: Path, config: Any, *, dtype, device
) -> nn.Module:
    tensors = ckpt.tensors
    kind = _KINDS[component]
    if any(k.startswith(("conditioner.", "model.diffusion_model.label_emb")) for k in tensors):
        raise WeightsError(f"{source}: an SDXL checkpoint; pilot loads SD 1.x / 2.x only")
    if not sd_original.has_component(tensors, component):
        looks = describe_state_dict(tensors)
        raise WeightsError(f"{source}: holds no {kind.label} weights ({looks})")
    cfg = _config(component, config) or _detect_config(component, tensors, source)
    as_dict = _api(component).to_dict(cfg)
    origins: dict[str, str] = {}
    if component == "unet":
        layout = sd_original.UNetLayout.from_config(as_dict)
        state_dict = sd_original.extract_unet(tensors, layout, origins)
    elif component == "vae":
        num_blocks = len(as_dict["block_out_channels"])
        state_dict = sd_original.extract_vae(tensors, num_blocks, origins)
    else:
        layers = as_dict["num_hidden_layers"]
        state_dict = sd_original.extract_text_encoder(tensors, layers, origins)

    def file_key(key: str) -> str:  # messages name the keys of the user's file
        if key in origins:
            return origins[key]
        try:
            return sd_original.original_key(component, key, as_dict, tensors)
        except (KeyError, ValueError, IndexError):
            return key

    looks = f"{describe_state_dict(tensors)}, {kind.label} keys named as in the file"
    return _build(component, cfg, state_dict, source, dtype, device, file_key, looks)


def _warn_unused(tensors: Mapping[str, Tensor], source: Path) -> None:
    """Report the keys of an original file that no component reads (LoRA weights, extras)."""
    unused = sd_original.unused_keys(tensors)
    if not unused:
        return
    lora = [k for k in unused if k.startswith("lora_")]
    note = (
        f" {len(lora)} of them are LoRA weights, NOT applied: pilot does not apply LoRAs."
        if lora
        else ""
    )
    warnings.warn(
        f"{source}: {len(unused)} keys outside the SD components were not loaded: "
        f"{_listing(unused, 5)}.{note}",
        stacklevel=3,
    )


def _build(
    component: str, cfg: Any, state_dict, source: Path, dtype, device, file_key=None, looks=None
) -> nn.Module:
    model_cls = _api(component).model
    model = build_on_meta(lambda: model_cls(cfg))
    return load_into(
        model, state_dict, path=source, dtype=dtype, device=device, file_key=file_key, looks=looks
    )


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
    exact = [k for k in kind.structure if k not in kind.free]
    for keys in (kind.structure, exact):  # a preset, then a preset with other in/out channels
        for preset in api.presets.values():
            reference = api.to_dict(preset)
            if not all(_plain(derived.get(k)) == _plain(reference.get(k)) for k in keys):
                continue
            read = {k: derived[k] for k in (*kind.structure, *kind.from_format)}
            if all(_plain(read[k]) == _plain(reference.get(k)) for k in read):
                return preset
            try:
                return api.from_dict({**reference, **read})
            except ValueError as e:
                raise WeightsError(f"{source}: invalid {kind.label} config {read}: {e}") from e
    raise _no_preset(component, derived, source)


def _no_preset(component: str, derived: Mapping[str, Any], source: Path) -> WeightsError:
    """The error for a single-file component whose shapes fit no preset."""
    kind, presets = _KINDS[component], sorted(_api(component).presets)
    shapes = {k: derived[k] for k in kind.structure}
    unstored = " and ".join(f"{what} ({key})" for key, what in kind.unstored.items())
    loader = "load_text_encoder" if component == "text_encoder" else f"load_{component}"
    return WeightsError(
        f"{source}: the {kind.label} shapes {shapes} fit no preset ({', '.join(presets)}). "
        f"Its {unstored} are not stored in the file and pilot will not guess them: pass "
        f"config= to {loader}, or {_PIPELINE_CONFIG[component]}= to load_pipeline"
    )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _config_from_json(component: str, path: Path) -> Any:
    kind = _KINDS[component]
    if not path.is_file():
        raise WeightsError(f"{path.parent}: no config.json, not a diffusers {kind.label} folder")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable config: {e}") from e
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


class GANCheckpointError(WeightsError):
    """`load_pipeline` was given a Diffusion Pilot GAN checkpoint (`pilot.weights.gan`)."""


def _refuse_gan(ckpt: Checkpoint, source: Path) -> None:
    """A one-line error for a Diffusion Pilot GAN checkpoint (`pilot.weights.gan`)."""
    kind = ckpt.metadata.get("pilot_kind")
    if kind is None:
        return
    what = "training checkpoint" if "global_step" in ckpt.metadata else "exported generator"
    raise GANCheckpointError(
        f"{source}: a Diffusion Pilot {kind} {what}, not a Stable Diffusion model: "
        f"`pilot walk` (dcgan) or `pilot conditioner apply` (pix2pix) runs it "
        "(pilot.weights.gan.load_generator loads it)"
    )


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
