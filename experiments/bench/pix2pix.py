"""Pix2Pix training speed: full training steps (D + G update) per second at 256x256.

    python -m experiments.bench.pix2pix --threads 2             # CPU, batch 1 and 8
    python -m experiments.bench.pix2pix --device cuda --amp --channels-last   # on a GPU
    python -m experiments.bench.pix2pix --preset walls128 --base-channels 16 --batches 4 \
        --upsample transpose,resize --threads 1     # the walls YAML's model, both upsamplings

One iteration is `train.pix2pix.pix2pix_step` (PatchGAN update, then generator update with the
GAN and L1 losses) of the paper's 256 px model (`PIX2PIX_PRESETS["pix2pix256"]`: ngf = ndf = 64,
8 levels, batch norm, 3 -> 3 channels) on random data: speed does not depend on the values.
AMP is bf16 autocast (no loss scaler needed); channels_last applies to models and inputs.
`--upsample` adds a row per decoder upsampling (`Pix2PixConfig.upsample`) with its time
against the first one's, each batch's rows interleaved in rounds.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import replace

import torch

from experiments.bench.common import count, device_name, format_table, time_many_ms
from pilot.models.pix2pix import (
    PIX2PIX_PRESETS,
    UPSAMPLES,
    PatchDiscriminator,
    PatchGANConfig,
    UNetGenerator,
)
from train.pix2pix import pix2pix_step

# Options `python -m experiments.bench` passes on to this benchmark.
SHARED_OPTIONS = ("device", "threads", "channels_last")


def training_step(cfg, batch: int, device: torch.device, args: argparse.Namespace):
    """A function running one training iteration of a generator of config `cfg`."""
    torch.manual_seed(0)
    g = UNetGenerator(cfg).to(device)
    d = PatchDiscriminator(PatchGANConfig(in_channels=cfg.in_channels + cfg.out_channels))
    d = d.to(device)
    side = cfg.image_size
    a = torch.randn(batch, cfg.in_channels, side, side, device=device)
    b = torch.randn(batch, cfg.out_channels, side, side, device=device)
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

    return step


def bench_batch(batch: int, device: torch.device, args: argparse.Namespace) -> list[list[str]]:
    """Table rows of one batch size: iterations per second, one row per upsampling."""
    cfg = PIX2PIX_PRESETS[args.preset]
    if args.base_channels:
        cfg = replace(cfg, base_channels=args.base_channels)
    steps = [training_step(replace(cfg, upsample=u), batch, device, args) for u in args.upsample]
    times = time_many_ms(steps, device, warmup=args.warmup, iters=args.iters)
    return [
        [
            str(batch),
            up,
            f"{ms:.0f}",
            f"{ms / times[0]:.2f}x",
            f"{1000 / ms:.2f}",
            f"{batch * 1000 / ms:.2f}",
        ]  # fmt: skip
        for up, ms in zip(args.upsample, times, strict=True)
    ]


def main(argv=None) -> None:
    """Parse arguments, time each batch size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--preset", default="pix2pix256", choices=sorted(PIX2PIX_PRESETS))
    parser.add_argument("--base-channels", type=int, help="override the preset's width")
    parser.add_argument("--upsample", default="transpose", help="comma list: transpose,resize")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=count, default=3)
    args = parser.parse_args(argv)
    args.upsample = args.upsample.split(",")
    if bad := sorted(set(args.upsample) - set(UPSAMPLES)):
        parser.error(f"--upsample: unknown {bad}; valid: {', '.join(UPSAMPLES)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [row for b in args.batches.split(",") for row in bench_batch(int(b), device, args)]
    flags = f"amp={'bf16' if args.amp else 'off'}, channels_last={args.channels_last}"
    side = PIX2PIX_PRESETS[args.preset].image_size
    print(f"Pix2Pix {args.preset} ({side}x{side}) training on {device_name(device)}, {flags}")
    header = ["batch", "upsample", "ms / it", f"/ {args.upsample[0]}", "it / s", "images / s"]
    print(format_table(header, rows))


if __name__ == "__main__":
    main()
