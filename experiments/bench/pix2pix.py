"""Pix2Pix training speed: full training steps (D + G update) per second at 256x256.

    python -m experiments.bench.pix2pix --threads 2             # CPU, batch 1 and 8
    python -m experiments.bench.pix2pix --device cuda --amp --channels-last   # on a GPU

One iteration is `train.pix2pix.pix2pix_step` (PatchGAN update, then generator update with the
GAN and L1 losses) of the paper's 256 px model (`PIX2PIX_PRESETS["pix2pix256"]`: ngf = ndf = 64,
8 levels, batch norm, 3 -> 3 channels) on random data: speed does not depend on the values.
AMP is bf16 autocast (no loss scaler needed); channels_last applies to models and inputs.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from experiments.bench.common import device_name, format_table, time_ms
from pilot.models.pix2pix import PIX2PIX_PRESETS, PatchDiscriminator, PatchGANConfig, UNetGenerator
from train.pix2pix import pix2pix_step


def bench_batch(batch: int, device: torch.device, args: argparse.Namespace) -> list[str]:
    """One table row: iterations per second of training at one batch size."""
    torch.manual_seed(0)
    cfg = PIX2PIX_PRESETS["pix2pix256"]
    g = UNetGenerator(cfg).to(device)
    d = PatchDiscriminator(PatchGANConfig(in_channels=6)).to(device)
    a = torch.randn(batch, 3, 256, 256, device=device)
    b = torch.randn(batch, 3, 256, 256, device=device)
    if args.channels_last:
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
        a, b = (
            a.contiguous(memory_format=torch.channels_last),
            b.contiguous(memory_format=torch.channels_last),
        )
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()
    )

    def step() -> None:
        with amp:
            pix2pix_step(g, d, opt_g, opt_d, a, b, loss="vanilla", l1_weight=100.0)

    ms = time_ms(step, device, warmup=args.warmup, iters=args.iters)
    return [str(batch), f"{ms:.0f}", f"{1000 / ms:.2f}", f"{batch * 1000 / ms:.2f}"]


def main(argv=None) -> None:
    """Parse arguments, time each batch size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [bench_batch(int(b), device, args) for b in args.batches.split(",")]
    flags = f"amp={'bf16' if args.amp else 'off'}, channels_last={args.channels_last}"
    print(f"Pix2Pix 256x256 training on {device_name(device)}, {flags}")
    print(format_table(["batch", "ms / it", "it / s", "images / s"], rows))


if __name__ == "__main__":
    main()
