"""UNet forward time, pilot vs diffusers, same weights and inputs, in one process.

    python -m experiments.bench.unet                      # SD 1.5 shapes, 256x256, CFG batch 2
    python -m experiments.bench.unet --size 512 --dtypes fp32,fp16,bf16   # on a GPU

Prints one row per dtype: pilot ms, diffusers ms, ratio (pilot / diffusers; < 1 is faster) and
the max relative error of pilot's output against diffusers'. Weights are random: speed does not
depend on their values.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import UNet2DConditionModel

from experiments.bench.common import device_name, format_table, max_rel_error, time_pair_ms
from experiments.bench.flops import unet_flops
from pilot.models.unet import UNET_PRESETS, UNet

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CONTEXT_DIMS = {"sd15": 768, "sd21": 1024}


def build_pair(preset: str, seed: int) -> tuple[UNet, UNet2DConditionModel]:
    """A diffusers UNet with random weights and pilot's UNet holding the same weights."""
    cfg = UNET_PRESETS[preset]
    torch.manual_seed(seed)
    ref = UNet2DConditionModel(**cfg.to_diffusers()).eval()
    ours = UNet(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def bench_dtype(ours, ref, dtype, device, args, flops: int) -> list[str]:
    """One table row: time both models at one dtype and compare their outputs."""
    cfg = ours.cfg
    ours, ref = ours.to(device, dtype), ref.to(device, dtype)
    g = torch.Generator().manual_seed(args.seed)
    h = args.size // 8
    x = torch.randn(args.batch, cfg.in_channels, h, h, generator=g).to(device, dtype)
    context = torch.randn(args.batch, 77, cfg.cross_attention_dim, generator=g).to(device, dtype)
    t = torch.tensor(500, device=device)
    with torch.inference_mode():
        run_ours = lambda: ours(x, t, context)  # noqa: E731
        run_ref = lambda: ref(x, t, encoder_hidden_states=context).sample  # noqa: E731
        err = max_rel_error(run_ours(), run_ref())
        ms_ours, ms_ref = time_pair_ms(
            run_ours, run_ref, device, warmup=args.warmup, iters=args.iters
        )
    name = [k for k, v in DTYPES.items() if v == dtype][0]
    tflops = [f"{flops / ms / 1e9:.2f}" for ms in (ms_ours, ms_ref)]  # FLOP / ms -> TFLOP/s
    return [
        name,
        f"{ms_ours:.1f}",
        f"{ms_ref:.1f}",
        f"{ms_ours / ms_ref:.2f}x",
        *tflops,
        f"{err:.1e}",
    ]


def main(argv=None) -> None:
    """Parse arguments, run every requested dtype, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sd15", choices=sorted(UNET_PRESETS))
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (latent /8)")
    parser.add_argument("--batch", type=int, default=2, help="2 = one CFG step of one image")
    parser.add_argument("--dtypes", default=None, help="comma list of fp32,fp16,bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = args.dtypes or ("fp32,fp16,bf16" if device.type == "cuda" else "fp32")

    ours, ref = build_pair(args.preset, args.seed)
    flops = unet_flops(args.preset, args.size, args.batch)
    rows = [bench_dtype(ours, ref, DTYPES[d], device, args, flops) for d in dtypes.split(",")]
    print(
        f"UNet forward, preset {args.preset}, {args.size}x{args.size} px, batch {args.batch}, "
        f"{flops / 1e12:.3f} TFLOP per call, {device_name(device)}, torch {torch.__version__}"
    )
    header = ["dtype", "pilot ms", "diffusers ms", "pilot/diffusers", "pilot TFLOP/s"]
    header += ["diffusers TFLOP/s", "max rel err"]
    print(format_table(header, rows))


if __name__ == "__main__":
    main()
