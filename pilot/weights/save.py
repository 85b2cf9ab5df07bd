"""Write Stable Diffusion models as a diffusers pipeline folder.

The layout `pilot.load_pipeline`, diffusers' `StableDiffusionPipeline.from_pretrained` and
transformers read: `model_index.json`, `unet/` and `vae/` (`config.json` +
`diffusion_pytorch_model.safetensors`), `text_encoder/` (`config.json` + `model.safetensors`),
`tokenizer/` (`vocab.json`, `merges.txt`, special tokens) and `scheduler/` (the SD training
schedule and the prediction type). Used for the models the project trains itself.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from pilot.weights.io import save_state_dict

DIFFUSERS_VERSION = "0.30.0"  # oldest diffusers whose config format we write
SD_SCHEDULER = {  # SD 1.x / 2.x training schedule, in DDIMScheduler's terms
    "_class_name": "DDIMScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def save_pipeline(sd, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `sd` (a `pilot.StableDiffusion`) as a diffusers pipeline folder, atomically.

    The folder is assembled next to its final place and renamed onto it, so a crash leaves
    either the previous folder or the complete new one.

    Raises:
        FileExistsError: `folder` exists and `overwrite` is False.
    """
    return _write_folder(folder, lambda tmp: _write_components(sd, tmp), overwrite=overwrite)


def _write_folder(folder: str | os.PathLike, write, *, overwrite: bool) -> Path:
    """Run `write(tmp)` on a fresh folder beside `folder`, then rename it onto `folder`."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder}: exists (pass overwrite=True to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; model folders are ordinary shared outputs
    try:
        write(tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _write_components(sd, folder: Path) -> None:
    diffusers_class = {"_diffusers_version": DIFFUSERS_VERSION}
    _write_model(
        folder / "unet",
        sd.unet,
        {"_class_name": "UNet2DConditionModel", **diffusers_class, **sd.unet.cfg.to_diffusers()},
        "diffusion_pytorch_model",
    )
    _write_model(
        folder / "vae",
        sd.vae,
        {"_class_name": "AutoencoderKL", **diffusers_class, **sd.vae.cfg.to_diffusers()},
        "diffusion_pytorch_model",
    )
    text_config = {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        **sd.text_encoder.cfg.to_transformers(),
    }
    _write_model(folder / "text_encoder", sd.text_encoder, text_config, "model")
    write_tokenizer(sd.tokenizer, folder / "tokenizer")
    scheduler = {**SD_SCHEDULER, "prediction_type": sd.prediction_type}
    _write_json(folder / "scheduler" / "scheduler_config.json", scheduler)
    index = {
        "_class_name": "StableDiffusionPipeline",
        **diffusers_class,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    _write_json(folder / "model_index.json", index)


def save_controlnet(controlnet, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a `pilot.models.controlnet.ControlNet` as a diffusers `ControlNetModel` folder.

    Atomic like `save_pipeline`; `pilot.load_controlnet` and diffusers read it.

    Raises:
        FileExistsError: `folder` exists and `overwrite` is False.
    """
    return _save_diffusers_model(controlnet, "ControlNetModel", folder, overwrite=overwrite)


def save_vae(vae, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a `pilot.models.vae.AutoencoderKL` as a diffusers `AutoencoderKL` folder.

    Atomic like `save_pipeline`; `pilot.load_vae` and diffusers read it (a pipeline's `vae/`).

    Raises:
        FileExistsError: `folder` exists and `overwrite` is False.
    """
    return _save_diffusers_model(vae, "AutoencoderKL", folder, overwrite=overwrite)


def save_preview_decoder(decoder, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a `pilot.models.preview.PreviewDecoder` folder (config.json + safetensors), atomic;
    `pilot.models.preview.load_preview_decoder` reads it.

    Raises:
        FileExistsError: `folder` exists and `overwrite` is False.
    """
    from pilot.models.preview import preview_config_dict

    config = preview_config_dict(decoder.cfg)
    return _write_folder(
        folder,
        lambda tmp: _write_model(tmp, decoder, config, "diffusion_pytorch_model"),
        overwrite=overwrite,
    )


def _save_diffusers_model(
    model, class_name: str, folder: str | os.PathLike, *, overwrite: bool
) -> Path:
    """One diffusers model folder (config.json + diffusion_pytorch_model.safetensors), atomic."""
    config = {
        "_class_name": class_name,
        "_diffusers_version": DIFFUSERS_VERSION,
        **model.cfg.to_diffusers(),
    }
    return _write_folder(
        folder,
        lambda tmp: _write_model(tmp, model, config, "diffusion_pytorch_model"),
        overwrite=overwrite,
    )


def _write_model(folder: Path, model, config: dict, stem: str) -> None:
    _write_json(folder / "config.json", config)
    save_state_dict(model.state_dict(), folder / f"{stem}.safetensors")


def write_tokenizer(tokenizer, folder: str | os.PathLike) -> None:
    """A `CLIPTokenizer` as a transformers tokenizer folder (vocab.json, merges.txt, tokens)."""
    folder = Path(folder)
    _write_json(folder / "vocab.json", tokenizer.vocab)
    merges = sorted(tokenizer.ranks, key=tokenizer.ranks.get)
    lines = ["#version: 0.2", *(" ".join(pair) for pair in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    names = {v: k for k, v in tokenizer.vocab.items()}
    special = {
        "bos_token": names[tokenizer.bos_token_id],
        "eos_token": names[tokenizer.eos_token_id],
        "unk_token": names[tokenizer.eos_token_id],
        "pad_token": tokenizer.pad_token,
    }
    _write_json(folder / "special_tokens_map.json", special)
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, **special}
    _write_json(folder / "tokenizer_config.json", config)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
