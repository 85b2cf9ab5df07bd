"""What `pilot inspect` prints: a Stable Diffusion pipeline's components, or what another model
pilot loads is (a ControlNet folder, a DCGAN / Pix2Pix checkpoint or exported generator)."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any

from torch import nn


def describe_model(path: str) -> dict[str, Any]:
    """Load `path` as a Stable Diffusion pipeline and describe its models; a ControlNet or a GAN
    generator that `load_pipeline` refuses is described instead.

    Raises:
        WeightsError: `path` is none of these (the pipeline loader's error).
    """
    import pilot
    from pilot.weights.io import WeightsError

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


def _describe_other(path: str, error: Exception) -> dict[str, Any] | None:
    """A ControlNet folder or a GAN file (which `load_pipeline` refused with `error`),
    described; None when `path` is neither."""
    import pilot
    from pilot.weights.gan import load_generator
    from pilot.weights.hub import resolve
    from pilot.weights.io import WeightsError
    from pilot.weights.loaders import GANCheckpointError, folder_class_name

    try:
        source = resolve(path)
        if source.is_dir():
            if folder_class_name(source) != "ControlNetModel":
                return None
            controlnet = describe_module(pilot.load_controlnet(source))
            return {"path": path, "kind": "controlnet", "controlnet": controlnet}
        if not isinstance(error, GANCheckpointError):
            return None  # not read again: the pipeline loader knows a GAN file when it sees one
        kind, generator = load_generator(source)
    except (WeightsError, OSError):
        return None
    runs = "pilot walk" if kind == "dcgan" else "pilot conditioner apply"
    return {"path": path, "kind": kind, "generator": describe_module(generator), "run_with": runs}
