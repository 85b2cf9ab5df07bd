"""FLOPs of a model call, counted from its config (torch's FlopCounterMode on the meta device).

    python -m experiments.bench.flops                 # SD UNet / ControlNet / VAE per call

The model is built on the meta device from its config and called on meta inputs, so nothing is
allocated or computed: the count is every matmul, convolution and attention the call dispatches
(2 FLOPs per multiply-add), not a hard-coded figure. Achieved TFLOP/s = FLOPs / measured time.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments.bench.common import check_size, controlnet_config, format_table, vae_factor
from pilot.models.controlnet import ControlNet
from pilot.models.unet import UNET_PRESETS, UNet, UNetConfig
from pilot.models.vae import VAE_PRESETS, AutoencoderKL
from pilot.nn.resnet import Upsample2D

# Options `python -m experiments.bench` passes on to this benchmark.
SHARED_OPTIONS = ("preset", "size")


def count_flops(build: Callable[[], torch.nn.Module], *args, **kwargs) -> int:
    """FLOPs of `build()(*args, **kwargs)`, model and inputs on the meta device.

    Autograd stays on (free on meta tensors) so the models take their plain paths, not the
    inference-only ones that reorganise the same work (`ResnetBlock2D`'s bands).
    """
    with torch.device("meta"):
        model = build()
        args = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    with FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return counter.get_total_flops()


def unet_inputs(cfg: UNetConfig, size: int, batch: int, factor: int) -> tuple:
    """Meta inputs of one UNet call at `size` pixels (latents `size // factor`, the VAE's
    factor): latents, timesteps, 77-token context."""
    with torch.device("meta"):
        x = torch.empty(batch, cfg.in_channels, size // factor, size // factor)
        context = torch.empty(batch, 77, cfg.cross_attention_dim)
        return x, torch.empty(batch), context


def unet_flops(preset: str, size: int, batch: int = 2) -> int:
    """FLOPs of one UNet call (batch 2 = one CFG step of one image)."""
    cfg = UNET_PRESETS[preset]
    return count_flops(lambda: UNet(cfg), *unet_inputs(cfg, size, batch, vae_factor(preset)))


def controlnet_flops(preset: str, size: int, batch: int = 2) -> int:
    """FLOPs of one ControlNet call (hint encoder included, as coarse as the VAE)."""
    cfg = controlnet_config(preset)
    x, t, context = unet_inputs(cfg.unet, size, batch, vae_factor(preset))
    hint = torch.empty(batch, cfg.conditioning_channels, size, size, device="meta")
    return count_flops(lambda: ControlNet(cfg), x, t, context, hint)


def vae_decode_flops(preset: str, size: int, batch: int = 1) -> int:
    """FLOPs of one VAE decode to `size` pixels, as the architecture defines them.

    Nominal: each upsampling is counted as nearest 2x upsampling then a 3x3 conv (as diffusers
    computes it); pilot's decoder computes those convs by phases with 16/36 of their
    multiply-adds (`pilot.nn.resnet.Upsample2D`), so its TFLOP/s is an effective rate.
    """
    cfg = VAE_PRESETS[preset]
    f = cfg.downsample_factor
    z = torch.empty(batch, cfg.latent_channels, size // f, size // f, device="meta")

    def nominal() -> Callable[[torch.Tensor], torch.Tensor]:
        vae = AutoencoderKL(cfg)
        for module in vae.modules():
            if isinstance(module, Upsample2D):
                module.phases = False
        return vae.decode

    return count_flops(nominal, z)


def format_gflop(flops: int) -> str:
    """FLOPs in GFLOP, 3 significant digits at least (a tiny model's call is a few MFLOP)."""
    gflop = flops / 1e9
    return f"{gflop:.1f}" if gflop >= 100 else f"{gflop:.3g}"


def main(argv=None) -> None:
    """Print the FLOPs of the SD components at the given sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", "--preset", default="sd15,sd21", help="comma list")
    parser.add_argument("--sizes", "--size", default="256,512", help="comma list, pixels")
    args = parser.parse_args(argv)
    presets, sizes = args.presets.split(","), [int(size) for size in args.sizes.split(",")]
    if unknown := sorted(set(presets) - set(UNET_PRESETS)):
        parser.error(f"unknown presets {unknown}; valid: {', '.join(UNET_PRESETS)}")
    for preset in presets:
        for size in sizes:
            check_size(parser, preset, size, "--sizes")
    rows = []
    for preset in presets:
        for size in sizes:
            rows.append(
                [
                    preset,
                    f"{size}x{size}",
                    f"{size // vae_factor(preset)}x{size // vae_factor(preset)}",
                    format_gflop(unet_flops(preset, size)),
                    format_gflop(controlnet_flops(preset, size)),
                    format_gflop(vae_decode_flops(preset, size)),
                ]
            )
    header = [
        "preset",
        "size",
        "latents",
        "UNet CFG step GFLOP",
        "ControlNet CFG step GFLOP",
        "VAE decode GFLOP",
    ]
    print(format_table(header, rows))


if __name__ == "__main__":
    main()
