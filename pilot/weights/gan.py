"""Loading the generators of Diffusion Pilot's own GAN trainings (DCGAN, Pix2Pix).

A training checkpoint (`train/`'s Lightning `.ckpt`) or an exported `.safetensors` holds the
generator under the prefix `generator.` and two string entries: `pilot_kind` ("dcgan" or
"pix2pix") and `pilot_config` (the JSON of the model's config dataclass). Both are read with
`read_checkpoint`, so a `.ckpt` goes through `torch.load(weights_only=True)` and lightning is
never imported.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from typing import Any

from torch import Tensor, nn

from pilot.weights.io import (
    WeightsError,
    load_into,
    read_checkpoint,
    save_state_dict,
)

GENERATOR_PREFIX = "generator."


def _classes(kind: str) -> tuple[type, type]:
    if kind == "dcgan":
        from pilot.models.dcgan import DCGANConfig, DCGANGenerator

        return DCGANConfig, DCGANGenerator
    if kind == "pix2pix":
        from pilot.models.pix2pix import Pix2PixConfig, UNetGenerator

        return Pix2PixConfig, UNetGenerator
    raise ValueError(f"unknown GAN kind {kind!r}; expected 'dcgan' or 'pix2pix'")


def config_from_dict(cls: type, values: dict[str, Any], *, source: str) -> Any:
    """Build config dataclass `cls` from a dict (JSON/YAML), rejecting unknown keys by name."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{source}: unknown {cls.__name__} keys {unknown} (known: {sorted(known)})"
        )
    return cls(**values)


def load_generator(
    path: str | os.PathLike, *, kind: str | None = None, device: str = "cpu"
) -> tuple[str, nn.Module]:
    """Rebuild a trained generator from a training checkpoint or an exported safetensors file.

    Args:
        path: `.ckpt` written by a `train/` system, or `.safetensors` from `export_generator`.
        kind: expected kind ("dcgan" or "pix2pix"); None accepts either.
        device: where the weights go.

    Returns:
        (kind, generator in eval mode).

    Raises:
        WeightsError: the file is unreadable, lacks the pilot entries, is of another kind, or its
            tensors do not fit the stored config.
    """
    ckpt = read_checkpoint(path, device=device)
    found, config = ckpt.metadata.get("pilot_kind"), ckpt.metadata.get("pilot_config")
    if found is None or config is None:
        raise WeightsError(
            f"{path}: no pilot_kind/pilot_config entries; not a Diffusion Pilot GAN checkpoint"
        )
    if kind is not None and found != kind:
        raise WeightsError(f"{path}: holds a {found} generator, expected {kind}")
    config_cls, model_cls = _classes(found)
    try:
        cfg = config_from_dict(config_cls, json.loads(config), source=str(path))
    except (ValueError, TypeError) as e:
        raise WeightsError(f"{path}: bad pilot_config: {e}") from e
    tensors = _strip_prefix(ckpt.tensors, path)
    # Built on the CPU, not on the meta device: these models are small, and meta-device
    # initialisation pulls in torch's decomposition tables (seconds of imports).
    model = load_into(model_cls(cfg), tensors, path=path, device=device)
    return found, model.eval()


def _strip_prefix(tensors: dict[str, Tensor], path: str | os.PathLike) -> dict[str, Tensor]:
    out = {
        k[len(GENERATOR_PREFIX) :]: v for k, v in tensors.items() if k.startswith(GENERATOR_PREFIX)
    }
    if not out:
        raise WeightsError(f"{path}: no tensors under the prefix {GENERATOR_PREFIX!r}")
    return out


def export_generator(kind: str, generator: nn.Module, path: str | os.PathLike) -> None:
    """Write a generator and its config as a small safetensors file `load_generator` reads."""
    _classes(kind)  # ValueError on an unknown kind
    state = {GENERATOR_PREFIX + k: v for k, v in generator.state_dict().items()}
    meta = {"pilot_kind": kind, "pilot_config": json.dumps(asdict(generator.cfg))}
    save_state_dict(state, path, metadata=meta)
