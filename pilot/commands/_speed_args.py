"""The speed and memory flags of `pilot generate` and `pilot animate` (`add_speed_arguments`) and
the `SpeedSettings` they give (`speed_settings`), checked against the device before any work.

Kept apart from `pilot.commands.generate`, which re-exports these names, since both commands
take the same flags; they change float rounding, not what is computed (`pilot.diffusion.speed`).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `pilot --help` imports no torch
    import torch

    from pilot.diffusion.speed import SpeedSettings

VAE_UPCASTS = ("auto", "always", "never")  # pilot.diffusion.pipeline.VAE_UPCASTS (no torch here)


def add_speed_arguments(p: argparse.ArgumentParser) -> None:
    """--channels-last, --compile [MODE], --cuda-graphs, --prepack, --vae-upcast, --vae-batch
    (`pilot.diffusion.speed`, `decode_latents`)."""
    g = p.add_argument_group("speed and memory (the same pixels up to float rounding)")
    g.add_argument("--channels-last", action="store_true",
                   help="NHWC where it pays: UNet, ControlNets off the CPU, VAE on it")  # fmt: skip
    g.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile the UNet and ControlNets (static shapes); MODE default "
                   "or max-autotune-no-cudagraphs")  # fmt: skip
    g.add_argument("--cuda-graphs", action="store_true",
                   help="replay UNet / ControlNet calls as CUDA graphs (CUDA only)")  # fmt: skip
    g.add_argument("--prepack", action="store_true",
                   help="CPU: keep the UNet's and ControlNets' conv weights in oneDNN's layout "
                   "(faster; a second copy of those weights in memory)")  # fmt: skip
    g.add_argument("--vae-upcast", choices=VAE_UPCASTS, default="auto",
                   help="float32 rule of a half-precision VAE decode: auto (again in float32 "
                   "if it overflows), always, never (default auto)")  # fmt: skip
    g.add_argument("--vae-batch", type=int, default=None, metavar="N",
                   help="images per VAE call (VAE slicing: the VAE's memory of N images; "
                   "default all at once)")  # fmt: skip


def speed_settings(args: argparse.Namespace, device: torch.device) -> SpeedSettings:
    """`SpeedSettings` of the speed arguments, checked against the device before any work.

    Raises:
        ValueError: --cuda-graphs off CUDA, an unknown --compile mode, or --vae-batch < 1.
    """
    from pilot.diffusion.speed import SpeedSettings

    if args.vae_batch is not None and args.vae_batch < 1:
        raise ValueError(f"--vae-batch must be >= 1, got {args.vae_batch}")
    if args.cuda_graphs and device.type != "cuda":
        raise ValueError(
            f"--cuda-graphs needs a CUDA device, but the models would run on {device} "
            "(pass --device cuda on a machine with an NVIDIA GPU, or leave --cuda-graphs out)"
        )
    return SpeedSettings(
        channels_last=args.channels_last,
        compile=args.compile is not None,
        compile_mode=args.compile or "default",
        cuda_graphs=args.cuda_graphs,
        prepack=args.prepack,
    )
