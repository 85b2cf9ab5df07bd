"""Diffusion Pilot: direct image generators frame by frame."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names imported on first use, so `import pilot` (and `pilot --help`) stays light.
_LAZY = {
    "load_unet": "pilot.weights.loaders",
    "load_vae": "pilot.weights.loaders",
    "load_text_encoder": "pilot.weights.loaders",
    "load_tokenizer": "pilot.weights.loaders",
    "load_pipeline": "pilot.weights.loaders",
    "StableDiffusion": "pilot.weights.loaders",
    "load_controlnet": "pilot.weights.controlnet_loader",
    "apply_lora": "pilot.weights.lora",
    "read_lora": "pilot.weights.lora",
    "load_embedding": "pilot.weights.embeddings",
    "save_pipeline": "pilot.weights.save",
    "save_controlnet": "pilot.weights.save",
    "WeightsError": "pilot.weights.io",
}
__all__ = [
    "StableDiffusion",
    "WeightsError",
    "__version__",
    "apply_lora",
    "load_controlnet",
    "load_embedding",
    "load_pipeline",
    "load_text_encoder",
    "load_tokenizer",
    "load_unet",
    "load_vae",
    "read_lora",
    "save_controlnet",
    "save_pipeline",
]

if TYPE_CHECKING:
    from pilot.weights.controlnet_loader import load_controlnet
    from pilot.weights.embeddings import load_embedding
    from pilot.weights.io import WeightsError
    from pilot.weights.loaders import (
        StableDiffusion,
        load_pipeline,
        load_text_encoder,
        load_tokenizer,
        load_unet,
        load_vae,
    )
    from pilot.weights.lora import apply_lora, read_lora
    from pilot.weights.save import save_controlnet, save_pipeline


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pilot' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
