"""Load Stable Diffusion 1.x / 2.x models from what users have on disk.

Every `load_*` takes `path`: a diffusers model folder (`model_index.json` + `unet/ vae/
text_encoder/ tokenizer/ scheduler/`), one component folder (`config.json` + weights), an
original CompVis / Stability single file (`.safetensors` or `.ckpt`), or a Hugging Face repo id
found in the local hub cache (see `pilot.weights.hub`). Models are built on the meta device and
filled with `load_state_dict(assign=True)`; any missing, unexpected or mis-shaped key is a
`WeightsError` naming the file.

Configs come from `pilot.weights.configs`, diffusers folders are read by `pilot.weights.folders`,
`load_pipeline(vae=)` is checked by `pilot.weights.vae_swap`.
Original files that hold both training and EMA UNet weights (`model_ema.*`) load the training
weights, as diffusers does by default; the `-emaonly` files already hold the EMA weights there.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pilot.weights import sd_original
from pilot.weights.configs import (
    _KINDS,
    _api,
    _config,
    _config_from_json,
    _detect_config,
)
from pilot.weights.folders import (
    _check_folder_schedule,
    _check_pipeline_folder,
    _component_folder,
    _find_weights,
    _folder_prediction_type,
    _normalize_keys,
    _scheduler_config,
    folder_class_name,
)
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
from pilot.weights.kinds import refuse_other_kind
from pilot.weights.vae_swap import _latents as _latents  # load_pipeline(vae=), moved there
from pilot.weights.vae_swap import _swap_vae, _vae_latents

__all__ = [  # folder_class_name: from pilot.weights.folders, importable from here as before
    "GANCheckpointError",
    "StableDiffusion",
    "folder_class_name",
    "load_config",
    "load_pipeline",
    "load_text_encoder",
    "load_tokenizer",
    "load_unet",
    "load_vae",
]

Component = Literal["unet", "vae", "text_encoder"]
# `pilot.weights.kinds.guess_kind` of each component's bare weights files.
_OWN_KINDS = {"unet": ("unet",), "vae": ("vae",), "text_encoder": ("text_encoder", "open_clip")}
PathLike = str | os.PathLike


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
        dtype: floating dtype after loading; None keeps the file's (float16 on the CPU: float32).
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
    vae: PathLike | nn.Module | None = None,
) -> StableDiffusion:
    """Load all four models of a Stable Diffusion 1.x / 2.x checkpoint.

    Args:
        path: diffusers pipeline folder, original single file, or cached repo id.
        dtype: floating dtype of the models; None keeps the files' (float16 on the CPU: float32).
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
        vae: another VAE in place of the checkpoint's (e.g. `vae-ft-mse-840000-ema-pruned`):
            anything `load_vae` reads (an original-layout VAE file, a diffusers `vae/` folder or
            the pipeline folder holding one, a cached repo id; `vae_config` applies to it), or
            a loaded `AutoencoderKL` (a file of no preset: `vae_swap`). The own VAE is not read.

    Raises:
        WeightsError: naming the file and the problem, e.g. a tokenizer with more tokens than
            the text encoder's embedding table (a single file of a small text encoder), or a
            `vae` whose latents are not the checkpoint's (channels, or the image size factor).
    """
    source = resolve(path)
    kwargs = dict(dtype=dtype, device=device)
    configs = dict(zip(_KINDS, (unet_config, vae_config, text_config), strict=True))
    kinds = [c for c in _KINDS if vae is None or c != "vae"]  # a swapped VAE: not the own
    if source.is_dir():
        _check_pipeline_folder(source)
        models = {c: _load(c, source / c, config=configs[c], **kwargs) for c in kinds}
        own = None if vae is None else _vae_latents(source)
        scheduler = _scheduler_config(source)
        pred = prediction_type or _folder_prediction_type(scheduler)
        _check_folder_schedule(source, scheduler)
        if tokenizer is None:
            tokenizer = load_tokenizer(source / "tokenizer")
    else:
        ckpt = read_checkpoint(source)
        _refuse_gan(ckpt, source)
        models = {c: _from_original(c, ckpt, source, configs[c], **kwargs) for c in kinds}
        own = None if vae is None else _vae_latents(source, ckpt.tensors)
        _warn_unused(ckpt.tensors, source)
        pred = sd_original.detect_prediction_type(ckpt.tensors, ckpt.metadata, prediction_type)
        if tokenizer is None:
            tokenizer = _default_tokenizer(ckpt.tensors)
    if pred not in ("epsilon", "v_prediction"):
        raise WeightsError(f"{source}: unsupported prediction_type {pred!r}")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    _check_tokenizer(tokenizer, models["text_encoder"], source)
    if vae is not None:
        own_factor, unet = own and own[1], models["unet"]
        models["vae"] = _swap_vae(vae, source, own_factor, unet, configs["vae"], **kwargs)
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
    refuse_other_kind(ckpt.tensors, source, _KINDS[component].label, _OWN_KINDS[component])
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
        f" {len(lora)} of them are LoRA weights, not merged: apply them with"
        f" `--lora {source.name}` or pilot.apply_lora(sd, {str(source)!r})."
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
