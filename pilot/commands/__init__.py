"""Subcommand groups of the `pilot` command, one module each.

Every module here defines `register(sub)`, which adds its parsers to the subparsers action `sub`
of `pilot.cli.build_parser` and sets `func` on each. Modules are found by name, so a new command
is a new file. Keep imports of torch and models inside the command functions: `pilot --help`
imports every module in this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `pilot --help` imports no torch
    import torch


def resolve_device(name: str | None) -> torch.device:
    """The `torch.device` of a `--device` argument, checked before anything loads.

    Args:
        name: A torch device string ("cuda", "cuda:1", "cpu", ...); None: cuda if present,
            else cpu.

    Raises:
        ValueError: `name` is not a torch device, or names one this machine lacks.
    """
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:N, ...)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: torch sees no CUDA device here (no NVIDIA GPU or driver, or a "
            "CPU-only torch); leave --device out to run on the CPU"
        )
    try:
        torch.empty(0, device=device)
    except (RuntimeError, NotImplementedError, AssertionError) as e:  # e.g. cuda:7, mps
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"--device {name}: not usable here: {first}") from e
    return device


def default_dtype(device: torch.device) -> str:
    """The dtype used without --dtype: float16 on CUDA, float32 elsewhere."""
    return "float16" if device.type == "cuda" else "float32"
