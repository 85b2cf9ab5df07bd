"""VAE decode time, pilot vs diffusers, same weights and latents, in one process.

    python -m experiments.bench.vae                          # SD 1.5 shapes, 256x256, CPU
    python -m experiments.bench.vae --size 512 --dtypes fp32,fp16,bf16 --channels-last  # GPU

Rows per dtype: diffusers eager (`AutoencoderKL.decode`), pilot eager
(`pilot.models.vae.AutoencoderKL.decode`), pilot channels_last when asked, and the default
`pilot.models.preview.PreviewDecoder` (random weights: its time only; the distilled one's
quality is measured by `experiments/tiny_sd/evaluate_preview.py`). Columns: ms per
decode (median of interleaved rounds), ratio to diffusers (< 1 is faster), achieved TFLOP/s
against the FLOPs counted from the config, peak memory above the resident weights, and the max
relative error against diffusers' float32 decode. Both decode unscaled latents of one image in
the model's dtype: `pilot.diffusion.pipeline.decode_latents` adds the scaling, float32 rule and
tiling around it. Weights are random: speed does not depend on their values. `--profile`
prints, per variant, the operators (CUDA kernels on a GPU) that take the most time.
`--bands 4194304,16777216,off` adds a pilot eager row per band size of the decoder's banded
resnets and upsamplings (`pilot.nn.resnet.BAND_ELEMENTS`; off: no bands, whole tensors) to
tune it. `--images 4 --sliced` decodes a batch of 4 images and adds a row each for VAE slicing,
one image per decoder call: diffusers' `enable_slicing()` and pilot's
`pilot.diffusion.tiling.sliced` (what `decode_latents(..., batch=1)` does). `--split-norms
1,131072` adds pilot rows (eager, and channels_last when asked) per threshold with the
GroupNorms whose groups hold that many elements or more taking their statistics by passes of
general reductions (`pilot.nn.norms.SPLIT_MIN_ELEMENTS`; 131072: at 512 px, every stage above
the latents' 64 px).
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch
from diffusers import AutoencoderKL

from experiments.bench.common import (
    DTYPES,
    check_size,
    count,
    device_name,
    format_mib,
    format_table,
    max_rel_error,
    memory_label,
    parse_dtypes,
    parse_sizes,
    peak_memory_mib,
    piece_size,
    set_constants,
    time_many_ms,
    with_piece_size,
    within,
)
from experiments.bench.flops import vae_decode_flops
from pilot.diffusion.tiling import sliced
from pilot.models.preview import PreviewConfig, PreviewDecoder
from pilot.models.vae import VAE_PRESETS
from pilot.models.vae import AutoencoderKL as PilotVAE
from pilot.nn import norms, resnet

# Options `python -m experiments.bench` passes on to this benchmark.
SHARED_OPTIONS = ("preset", "size", "dtype", "device", "threads", "channels_last")


def build_pair(preset: str, seed: int) -> tuple[PilotVAE, AutoencoderKL]:
    """A diffusers VAE with random weights and pilot's VAE holding the same weights."""
    cfg = VAE_PRESETS[preset]
    torch.manual_seed(seed)
    ref = AutoencoderKL(**cfg.to_diffusers()).eval()
    ours = PilotVAE(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def variants(ours, ref, dtype, device, args, z: torch.Tensor) -> dict:
    """Name -> decode of `z` for one dtype: the references, pilot, and the rows the options ask
    for (models copied as needed)."""

    def cast(model):  # float32 models are used as they are
        return (
            model.to(device) if dtype == torch.float32 else copy.deepcopy(model).to(device, dtype)
        )

    ref_model, ours_model = cast(ref), cast(ours)
    calls = {"diffusers eager": lambda: ref_model.decode(z).sample}
    if args.sliced:
        ref_sliced = copy.copy(ref_model)  # the same weights, its own `use_slicing`
        ref_sliced.enable_slicing()
        calls["diffusers sliced"] = lambda: ref_sliced.decode(z).sample
    calls["pilot eager"] = lambda: ours_model.decode(z)
    if args.sliced:
        calls["pilot sliced"] = lambda: sliced(ours_model.decode, z, 1)
    layouts = {"eager": ours_model}
    if args.channels_last:
        layouts["channels_last"] = copy.deepcopy(ours_model).to(memory_format=torch.channels_last)
        calls["pilot channels_last"] = lambda: layouts["channels_last"].decode(z)
    for elements in args.bands:
        banded = with_piece_size(lambda: ours_model.decode(z), resnet, "BAND", elements)
        calls[f"pilot eager, bands {elements or 'off'}"] = banded
    for elements in args.split_norms:
        split = lambda e=elements: set_constants(norms, SPLIT_MIN_ELEMENTS=e)  # noqa: E731
        for layout, model in layouts.items():
            name = f"pilot {layout}, split norms >= {elements}"
            calls[name] = within(lambda m=model: m.decode(z), split)
    return calls


def bench_dtype(ours, ref, dtype, device, args, flops: int, expected) -> list[list[str]]:
    """Table rows of one dtype: time every variant, compare outputs with the fp32 reference."""
    z = latents(ours.cfg, args).to(device, dtype)
    calls = variants(ours, ref, dtype, device, args, z)
    shape = PreviewConfig(
        latent_channels=ours.cfg.latent_channels,
        upsamples=ours.cfg.downsample_factor.bit_length() - 1,
    )
    preview = PreviewDecoder(shape).eval().to(device, dtype)
    with torch.inference_mode():
        # The VAE decodes have an error against the reference; the preview decoder (random
        # weights, speed only: not distilled from these) has none, nor a FLOP count.
        errors = {name: max_rel_error(call(), expected) for name, call in calls.items()}
        calls["pilot preview decoder"] = lambda: preview.decode(z)
        timing = dict(warmup=args.warmup, iters=args.iters)
        ms = dict(zip(calls, time_many_ms(list(calls.values()), device, **timing), strict=True))
        memory = {name: peak_memory_mib(call, device) for name, call in calls.items()}
        if args.profile:
            for name, call in calls.items():
                print_profile(f"{name}, {dtype}", call, device)
    name_of = {v: k for k, v in DTYPES.items()}[dtype]
    return [
        [
            name,
            name_of,
            f"{ms[name]:.1f}",
            f"{ms[name] / ms['diffusers eager']:.2f}x",
            f"{flops / ms[name] / 1e9:.2f}" if name in errors else "-",
            format_mib(memory[name]),
            f"{errors[name]:.1e}" if name in errors else "-",
        ]
        for name in calls
    ]


def band_size(elements: int | None) -> contextlib.AbstractContextManager:
    """Set `pilot.nn.resnet`'s band size within (None: large inputs too run whole)."""
    return piece_size(resnet, "BAND", elements)


def print_profile(title: str, call, device: torch.device, rows: int = 12) -> None:
    """The operators (kernels, on CUDA) that take the most time in one `call()`."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"== profile: {title}")
    print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70))


def latents(cfg, args) -> torch.Tensor:
    """The benchmark's unscaled latents (the same draw for every dtype), float32 on the CPU."""
    g = torch.Generator().manual_seed(args.seed)
    h = args.size // cfg.downsample_factor
    return torch.randn(args.images, cfg.latent_channels, h, h, generator=g) / cfg.scaling_factor


def main(argv=None) -> None:
    """Parse arguments, run every requested dtype, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sd15", choices=sorted(VAE_PRESETS))
    parser.add_argument("--size", type=int, default=256, help="image size in pixels")
    parser.add_argument("--dtypes", "--dtype", default=None, help="comma list of fp32,fp16,bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=count, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights (pilot)")
    parser.add_argument("--profile", action="store_true", help="print each decode's top kernels")
    parser.add_argument("--bands", default="", help="comma list: band sizes or off (extra rows)")
    parser.add_argument(
        "--split-norms", default="", help="comma list: group sizes from which GroupNorms split"
    )
    parser.add_argument("--images", type=count, default=1, help="images decoded per call")
    parser.add_argument("--sliced", action="store_true", help="add VAE slicing rows")
    args = parser.parse_args(argv)
    args.bands = parse_sizes(parser, "--bands", args.bands)
    args.split_norms = parse_sizes(parser, "--split-norms", args.split_norms)
    if None in args.split_norms:
        parser.error("--split-norms takes element counts (off is the plain pilot eager row)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = parse_dtypes(parser, args.dtypes, device)
    check_size(parser, args.preset, args.size)

    ours, ref = build_pair(args.preset, args.seed)
    flops = vae_decode_flops(args.preset, args.size) * args.images
    with torch.inference_mode():
        expected = ref.to(device).decode(latents(ours.cfg, args).to(device)).sample
    rows = []
    for d in dtypes:
        rows += bench_dtype(ours, ref, DTYPES[d], device, args, flops, expected)
    print(
        f"VAE decode, preset {args.preset}, {args.size}x{args.size} px, "
        f"{args.images} image{'s' if args.images > 1 else ''}, "
        f"{flops / 1e9:.1f} GFLOP, {device_name(device)}, torch {torch.__version__}"
    )
    header = ["variant", "dtype", "ms", "/ diffusers eager", "TFLOP/s"]
    header += [memory_label(device), "max rel err vs fp32"]
    print(format_table(header, rows))


if __name__ == "__main__":
    main()
