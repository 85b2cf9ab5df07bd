"""`--lora FILE[:SCALE]` of `pilot generate` and `pilot animate` (`pilot.weights.lora`).

The files are read before the model loads (a missing or unreadable file fails at once) and
merged after it loads, before the speed settings copy or compile any weight.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `pilot --help` imports no torch
    from pilot.weights.loaders import StableDiffusion
    from pilot.weights.lora import LoRA


def add_lora_argument(p: argparse.ArgumentParser) -> None:
    """Add the repeatable `--lora FILE[:SCALE]` to a command's parser."""
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="LoRA to merge into the model (kohya / A1111 or diffusers .safetensors); "
                   "SCALE default 1; repeatable")  # fmt: skip


def parse_lora(entry: str) -> tuple[str, float]:
    """`FILE[:SCALE]` -> (file, scale); a tail that is not a number belongs to the file name.

    Raises:
        ValueError: a scale that is not finite.
    """
    path, _, tail = entry.rpartition(":")
    try:
        scale = float(tail)
    except ValueError:
        return entry, 1.0
    if not path:
        return entry, 1.0
    if not math.isfinite(scale):
        raise ValueError(f"--lora {entry}: scale {tail} must be a finite number")
    return path, scale


def lora_settings(entries: list[str]) -> list[str]:
    """The entries as recorded in outputs and run settings: `FILE:SCALE`, the scale a float
    (`a.safetensors` and `a.safetensors:1` record alike)."""
    return [f"{path}:{scale!r}" for path, scale in map(parse_lora, entries)]


def read_loras(entries: list[str]) -> list[tuple[LoRA, float]]:
    """Read every `--lora` file with its scale (before the model loads).

    Raises:
        ValueError: naming the flag and the file: missing, unreadable, not a LoRA (SDXL, LoHa).
    """
    from pilot.weights.lora import read_lora

    loras = []
    for path, scale in map(parse_lora, entries):
        try:
            loras.append((read_lora(path), scale))
        except ValueError as e:
            raise ValueError(f"--lora {e}") from e
    return loras


def apply_loras(sd: StableDiffusion, loras: list[tuple[LoRA, float]]) -> None:
    """Merge the LoRAs into `sd`'s weights, in order.

    Raises:
        ValueError: naming the flag and the file: a LoRA that does not fit the model.
    """
    from pilot.weights.lora import apply_lora

    for lora, scale in loras:
        try:
            apply_lora(sd, lora, scale)
        except ValueError as e:
            raise ValueError(f"--lora {e}") from e
