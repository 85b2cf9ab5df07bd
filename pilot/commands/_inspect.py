"""What `pilot inspect` prints: a Stable Diffusion pipeline's components, or what another file
pilot loads is: a ControlNet folder, a DCGAN / Pix2Pix checkpoint or exported generator, a LoRA,
a textual inversion embedding or a standalone VAE (file or diffusers `vae/` folder); of a PNG,
the generation parameters it holds (`describe_png`)."""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from torch import nn


def describe_model(path: str) -> dict[str, Any]:
    """Load `path` as a Stable Diffusion pipeline and describe its models; a ControlNet or a GAN
    generator that `load_pipeline` refuses is described instead; an image, its parameters.

    Raises:
        WeightsError: `path` is none of these (the pipeline loader's error).
    """
    import pilot
    from pilot.commands._png_params import is_image_file
    from pilot.weights.io import WeightsError

    if is_image_file(path):
        return describe_png(path)
    try:
        sd = pilot.load_pipeline(path)
    except WeightsError as e:
        if (other := _describe_other(path, e)) is None:
            raise
        return other
    return {
        "path": path,
        "prediction_type": sd.prediction_type,
        "unet": describe_module(sd.unet),
        "vae": describe_module(sd.vae),
        "text_encoder": describe_module(sd.text_encoder),
        "tokenizer": {"vocab_size": len(sd.tokenizer.vocab), "pad": sd.tokenizer.pad_token_id},
    }


def describe_module(module: nn.Module) -> dict[str, Any]:
    """Config and parameter count of one model."""
    cfg = asdict(module.cfg) if is_dataclass(module.cfg) else vars(module.cfg)
    return {"config": cfg, "params": sum(p.numel() for p in module.parameters())}


def describe_png(path: str) -> dict[str, Any]:
    """What `pilot inspect IMAGE.png` prints: its size, the parameters text and pilot's JSON as
    stored; of an A1111 text, what `pilot generate --from` takes from it, what it names only
    and what it ignores.

    Raises:
        FileNotFoundError, ValueError: as `read_png_settings`.
    """
    from pilot.commands._png_params import read_png_chunks, read_png_settings
    from pilot.weights.hub import PACKAGED

    text, (width, height) = read_png_chunks(path)
    settings = read_png_settings(path, text)
    out: dict[str, Any] = {"path": str(path), "kind": "image", "width": width, "height": height}
    if "parameters" in text:
        out["parameters"] = text["parameters"]
    if settings.source == "pilot":
        out["pilot"] = json.loads(text["pilot"])  # what --from takes, as it is
    else:
        out["generate_from"] = settings.values | (
            {"strength": settings.strength} if settings.img2img else {}
        )
        named = {"lora": [f"{name}:{scale:g}" for name, scale in settings.loras],
                 "embedding": settings.embeddings, "vae": settings.vae,
                 "model": settings.model, "model_hash": settings.model_hash}  # fmt: skip
        out["named_only"] = {k: v for k, v in named.items() if v}
    if settings.ignored:
        out["ignored"] = settings.ignored
    needs = {  # what the PNG names or lacks (the init image is not in it)
        "--model MODEL": settings.source == "a1111" and settings.model not in PACKAGED,
        "--lora FILE": bool(settings.loras),
        "--init IMAGE": settings.img2img,
    }
    out["use_with"] = " ".join(["pilot generate --from", str(path), *filter(needs.get, needs)])
    return out


def _describe_other(path: str, error: Exception) -> dict[str, Any] | None:
    """A ControlNet or VAE folder, a GAN file, a LoRA, an embedding or a VAE file (which
    `load_pipeline` refused with `error`), described; None when `path` is none of these.

    Raises:
        WeightsError: a file that is one of these kinds but that pilot cannot use (an SDXL LoRA
            or embedding, a LyCORIS LoHa...), as the loader of its kind says.
    """
    from pilot.weights.gan import load_generator
    from pilot.weights.hub import resolve
    from pilot.weights.io import WeightsError
    from pilot.weights.loaders import GANCheckpointError

    try:
        source = resolve(path)
        if source.is_dir():
            kind = _folder_kind(source)
        elif isinstance(error, GANCheckpointError):
            kind, generator = load_generator(source)
            runs = "pilot walk" if kind == "dcgan" else "pilot conditioner apply"
            return {"path": path, "kind": kind, "generator": describe_module(generator),
                    "run_with": runs}  # fmt: skip
        else:
            kind = _file_kind(source)
    except (WeightsError, OSError):
        return None
    describe = _DESCRIBERS.get(kind or "")
    return None if describe is None else {"path": path, **describe(source)}


def _folder_kind(folder: Path) -> str | None:
    from pilot.weights.embeddings import DIFFUSERS_NAMES
    from pilot.weights.loaders import folder_class_name

    if any((folder / name).is_file() for name in DIFFUSERS_NAMES):
        return "embedding"
    return {"ControlNetModel": "controlnet", "AutoencoderKL": "vae"}.get(
        folder_class_name(folder) or ""
    )


def _file_kind(source: Path) -> str | None:
    """`pilot.weights.kinds.guess_kind` of a file; a big model's safetensors file is judged by
    its key names alone (not read again)."""
    from pilot.weights.embeddings import read_embedding
    from pilot.weights.io import PICKLE_SUFFIXES, WeightsError, read_checkpoint, read_keys
    from pilot.weights.kinds import guess_kind

    if source.suffix.lower() not in PICKLE_SUFFIXES:
        by_name = guess_kind(dict.fromkeys(read_keys(source)))
        if by_name in ("checkpoint", "sdxl", "controlnet", "unet", "text_encoder", "open_clip"):
            return by_name
    try:
        return guess_kind(read_checkpoint(source).tensors)
    except WeightsError:
        if source.suffix.lower() not in PICKLE_SUFFIXES:
            raise
        read_embedding(source)  # an A1111 .pt: its tensors are one level down
        return "embedding"


def _describe_controlnet(source: Path) -> dict[str, Any]:
    import pilot

    return {"kind": "controlnet", "controlnet": describe_module(pilot.load_controlnet(source))}


def _describe_lora(source: Path) -> dict[str, Any]:
    """Format, base model guessed from shapes, layer counts, rank and alpha ranges."""
    from pilot.weights.lora import read_lora

    layers = read_lora(source).layers
    unet = [n for n in layers if n.startswith(("lora_unet_", "unet."))]
    ranks = [f.down.shape[0] for f in layers.values()]
    alphas = [f.alpha for f in layers.values() if f.alpha is not None]
    context = {f.down.shape[1] for n, f in layers.items() if "attn2" in n and "to_k" in n}
    text = {f.down.shape[1] for n, f in layers.items() if "q_proj" in n}
    width = next(iter(context)) if len(context) == 1 else None
    text_width = next(iter(text)) if len(text) == 1 else None
    base = _BASES.get(width) if width else _BASES.get(text_width)
    return {
        "kind": "lora",
        "format": "kohya-ss / A1111"
        if any(n.startswith("lora_") for n in layers)
        else "diffusers / PEFT",  # fmt: skip
        "base": base or "unknown",
        "cross_attention_width": width,
        "text_encoder_width": text_width,
        "layers": len(layers),
        "unet_layers": len(unet),
        "text_encoder_layers": len(layers) - len(unet),
        "conv_layers": sum(f.down.ndim == 4 for f in layers.values()),
        "rank": [min(ranks), max(ranks)],
        "alpha": [min(alphas), max(alphas)] if alphas else None,
        "use_with": "--lora FILE[:SCALE] or pilot.apply_lora",
    }


def _describe_embedding(source: Path) -> dict[str, Any]:
    """Format, the prompt word and the tokens it adds, vectors and their width."""
    from pilot.weights.embeddings import default_token, read_embedding

    vectors, stored = read_embedding(source)
    token, (count, width) = default_token(source, stored), vectors.shape
    return {
        "kind": "embedding",
        "format": "diffusers" if stored is not None else f"A1111 {source.suffix.lower()}",
        "token": token,
        "tokens": [token] + [f"{token}_{k}" for k in range(1, count)],
        "vectors": count,
        "width": width,
        "base": {768: "SD 1.x", 1024: "SD 2.x"}.get(width, "unknown"),
        "use_with": "--embedding FILE, then the token in the prompt; or pilot.load_embedding",
    }


def _describe_vae(source: Path) -> dict[str, Any]:
    """Latent channels and the image size factor, and the model's config (of a file of no
    preset, its shapes: what it does not store, `--vae` takes from the model's own VAE)."""
    import pilot
    from pilot.weights.io import WeightsError

    try:
        vae = pilot.load_vae(source)
    except WeightsError:
        if source.is_dir():
            raise
        return _describe_vae_shapes(source)
    return {
        "kind": "vae",
        "format": "diffusers" if source.is_dir() else _vae_file_format(source),
        "latent_channels": vae.cfg.latent_channels,
        "downsample_factor": vae.cfg.downsample_factor,
        "scaling_factor": vae.cfg.scaling_factor,
        "vae": describe_module(vae),
        "use_with": "--vae FILE or pilot.load_pipeline(..., vae=)",
    }


def _describe_vae_shapes(source: Path) -> dict[str, Any]:
    """A VAE file whose shapes fit no preset, described from them alone."""
    from pilot.weights import sd_original
    from pilot.weights.configs import _KINDS
    from pilot.weights.io import read_checkpoint

    derived = sd_original.detect_vae_config(read_checkpoint(source).tensors)
    return {
        "kind": "vae",
        "format": _vae_file_format(source),
        "latent_channels": derived["latent_channels"],
        "downsample_factor": 2 ** (len(derived["block_out_channels"]) - 1),
        "scaling_factor": None,
        "shapes": {k: derived[k] for k in _KINDS["vae"].structure},
        "note": "fits no preset: its GroupNorm groups and scaling factor are not in the file; "
        "--vae and load_pipeline(vae=) take those of a model folder's own VAE of these shapes",
        "use_with": "--vae FILE or pilot.load_pipeline(..., vae=)",
    }


def _vae_file_format(source: Path) -> str:
    from pilot.weights import sd_original
    from pilot.weights.io import read_keys

    keys = dict.fromkeys(read_keys(source))
    return "original (CompVis) layout" if sd_original.is_original(keys) else "diffusers"


_BASES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}  # cross-attention / text width
_DESCRIBERS = {
    "controlnet": _describe_controlnet,
    "lora": _describe_lora,
    "embedding": _describe_embedding,
    "vae": _describe_vae,
    "original_vae": _describe_vae,
}
