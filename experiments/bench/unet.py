"""UNet forward time, pilot vs diffusers, same weights and inputs, in one process.

    python -m experiments.bench.unet                      # SD 1.5 shapes, 256x256, CFG batch 2
    python -m experiments.bench.unet --size 512 --dtypes fp32,fp16,bf16   # on a GPU
    python -m experiments.bench.unet --size 512 --dtype fp16 --channels-last --compile --cuda-graphs

Rows per dtype: diffusers eager, diffusers compiled (with `--compile`: torch.compile as its
docs advise, channels_last and "reduce-overhead" when pilot gets them), pilot eager, and pilot
with the speed-up flags that change the model on the device (`pilot.diffusion.speed`; on the
CPU `--channels-last` does not, `--prepack` does) when any is given. Columns: ms per call
(median of interleaved rounds), ratios to diffusers eager / compiled (< 1 is faster), achieved
TFLOP/s against the FLOPs counted from the config, the first call's seconds (compilation,
graph capture), the call's peak memory above the resident weights, and the max relative error
against diffusers' float32 output. Weights are random: speed does not depend on their values.
`--ff-chunks 4194304,off` adds a pilot eager row per chunk size of the transformer blocks'
feed-forward (`pilot.nn.attention.CHUNK_ELEMENTS` hidden elements; off: whole) to tune it.
`--own-process-memory` adds a column: each row's peak memory measured again in a fresh process
that runs only that row (`common.own_process_mib`: every row pays its one-time costs, such as
the cuBLAS workspace of the stream it runs on).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch
from diffusers import UNet2DConditionModel

from experiments.bench.common import (
    DTYPES,
    add_own_process_arguments,
    add_speed_arguments,
    call_memory_mib,
    check_size,
    check_speed_arguments,
    compile_reference,
    count,
    device_name,
    first_call,
    format_mib,
    format_table,
    graph_pool_bytes,
    held_label,
    mark_step,
    max_rel_error,
    memory_label,
    own_process_choice,
    own_process_mib,
    parse_dtypes,
    parse_sizes,
    peak_memory_mib,
    speed_settings,
    time_many_ms,
    vae_factor,
    with_piece_size,
)
from experiments.bench.flops import format_gflop, unet_flops
from pilot.diffusion.speed import optimize_model
from pilot.models.unet import UNET_PRESETS, UNet
from pilot.nn import attention

# Options `python -m experiments.bench` passes on to this benchmark.
SHARED_OPTIONS = ("preset", "size", "dtype", "device", "threads", "speed")


def build_pair(preset: str, seed: int) -> tuple[UNet, UNet2DConditionModel]:
    """A diffusers UNet with random weights and pilot's UNet holding the same weights."""
    cfg = UNET_PRESETS[preset]
    torch.manual_seed(seed)
    ref = UNet2DConditionModel(**cfg.to_diffusers()).eval()
    ours = UNet(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def variants(ours, ref, dtype, device, args) -> dict:
    """Name -> model call `(x, t, context) -> output` for one dtype (models copied as needed)."""
    settings = speed_settings(args).for_model(device)  # what changes the model on this device
    fast = settings.describe() != "eager"

    def cast(model: torch.nn.Module) -> torch.nn.Module:  # float32 models are used as they are
        return (
            model.to(device, dtype)
            if dtype == torch.float32
            else copy.deepcopy(model).to(device, dtype)
        )

    ref_eager, ours_eager = cast(ref), cast(ours)
    calls = {"diffusers eager": lambda x, t, c: ref_eager(x, t, encoder_hidden_states=c).sample}
    if args.compile:
        ref_compiled = compile_reference(copy.deepcopy(ref_eager), args)

        def compiled_call(x, t, c):
            mark_step(args)
            return ref_compiled(x, t, encoder_hidden_states=c).sample

        calls["diffusers compile"] = compiled_call
    calls["pilot eager"] = ours_eager
    for elements in args.ff_chunks:
        chunked = with_piece_size(ours_eager, attention, "CHUNK", elements)
        calls[f"pilot eager, ff chunks {elements or 'off'}"] = chunked
    if fast:
        calls[f"pilot {settings.describe()}"] = optimize_model(copy.deepcopy(ours_eager), settings)
    return calls


def bench_dtype(ours, ref, dtype, device, args, flops: int, expected) -> list[list[str]]:
    """Table rows of one dtype: time every variant, compare outputs with the fp32 reference."""
    x, t, context = draw_inputs(ours.cfg, args, device, dtype)
    calls = variants(ours, ref, dtype, device, args)
    runs = {name: (lambda call=call: call(x, t, context)) for name, call in calls.items()}
    first, errors, memory, retained, pools = {}, {}, {}, {}, {}
    with torch.inference_mode():
        for name, run in runs.items():  # first calls: compile / capture
            consume = lambda out: max_rel_error(out, expected)  # noqa: E731
            pool_before = graph_pool_bytes(device)
            errors[name], first[name], retained[name] = first_call(run, device, consume)
            pools[name] = (graph_pool_bytes(device) - pool_before) / 2**20
        timing = dict(warmup=args.warmup, iters=args.iters)
        ms = dict(zip(runs, time_many_ms(list(runs.values()), device, **timing), strict=True))
        for name, run in runs.items():
            memory[name] = peak_memory_mib(run, device)
    name_of = {v: k for k, v in DTYPES.items()}[dtype]
    rows = []
    for name in runs:
        compiled = ms.get("diffusers compile")
        rows.append(
            [
                name,
                name_of,
                f"{ms[name]:.1f}",
                f"{ms[name] / ms['diffusers eager']:.2f}x",
                f"{ms[name] / compiled:.2f}x" if compiled else "-",
                f"{flops / ms[name] / 1e9:.2f}",  # FLOP / ms -> TFLOP/s
                f"{first[name]:.1f}",
                format_mib(memory[name], retained[name]),
                held_label(retained[name], pools.get(name)),
                f"{errors[name]:.1e}",
            ]
        )
    return rows


def main(argv=None) -> None:
    """Parse arguments, run every requested dtype, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sd15", choices=sorted(UNET_PRESETS))
    parser.add_argument(
        "--size", type=int, default=256, help="pixels, a multiple of the VAE's factor"
    )
    parser.add_argument("--batch", type=count, default=2, help="2 = one CFG step of one image")
    parser.add_argument("--dtypes", "--dtype", default=None, help="comma list of fp32,fp16,bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=count, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--ff-chunks", default="", help="comma list: sizes or off (extra rows)")
    add_own_process_arguments(parser, "row")
    add_speed_arguments(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    check_size(parser, args.preset, args.size)
    args.ff_chunks = parse_sizes(parser, "--ff-chunks", args.ff_chunks)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = parse_dtypes(parser, args.dtypes, device)
    check_speed_arguments(parser, args, device)

    ours, ref = build_pair(args.preset, args.seed)
    if args.memory_of is not None:  # no float32 reference: it would run cuBLAS first
        print(json.dumps({"mib": row_memory(ours, ref, DTYPES[dtypes[-1]], device, args)}))
        return
    flops = unet_flops(args.preset, args.size, args.batch)
    expected = reference_output(ours, ref, args, device)
    rows = []
    for d in dtypes:
        rows += bench_dtype(ours, ref, DTYPES[d], device, args, flops, expected)
    if args.own_process_memory:
        for row in rows:
            row.append(f"{own_process_mib('experiments.bench.unet', argv, row[0], row[1]):.0f}")
    print(
        f"UNet forward, preset {args.preset}, {args.size}x{args.size} px, batch {args.batch}, "
        f"{format_gflop(flops)} GFLOP per call, {device_name(device)}, torch {torch.__version__}"
    )
    header = ["variant", "dtype", "ms", "/ diffusers eager", "/ diffusers compile", "TFLOP/s"]
    header += ["first call s", memory_label(device), "held after 1st call MiB (graph pool)"]
    header += ["max rel err vs fp32"]
    header += ["peak MiB, own process"] if args.own_process_memory else []
    print(format_table(header, rows))


def row_memory(ours, ref, dtype, device, args) -> float:
    """Peak memory of the row named `args.memory_of`, the only one this process runs."""
    call = own_process_choice(variants(ours, ref, dtype, device, args), args.memory_of, "row")
    x, t, context = draw_inputs(ours.cfg, args, device, dtype)
    with torch.inference_mode():
        return call_memory_mib(lambda: call(x, t, context), device)


def draw_inputs(cfg, args, device: torch.device, dtype: torch.dtype) -> tuple:
    """The benchmark's `(x, t, context)`: the same draws for every dtype."""
    g = torch.Generator().manual_seed(args.seed)
    h = args.size // vae_factor(args.preset)
    x = torch.randn(args.batch, cfg.in_channels, h, h, generator=g).to(device, dtype)
    context = torch.randn(args.batch, 77, cfg.cross_attention_dim, generator=g).to(device, dtype)
    return x, torch.tensor(500, device=device), context


def reference_output(ours: UNet, ref: UNet2DConditionModel, args, device) -> torch.Tensor:
    """diffusers' float32 output on the benchmark's inputs."""
    x, t, context = draw_inputs(ours.cfg, args, device, torch.float32)
    with torch.inference_mode():
        return ref.to(device)(x, t, encoder_hidden_states=context).sample


if __name__ == "__main__":
    main()
