"""Run the benchmarks in one command: `python -m experiments.bench --all` or by name.

    python -m experiments.bench --all                 # every benchmark with its defaults
    python -m experiments.bench unet pipeline         # some of them
    python -m experiments.bench --all --size 512 --dtype fp16              # GPU: eager
    python -m experiments.bench --all --size 512 --dtype fp16 --channels-last --cuda-graphs
    python -m experiments.bench --all --size 512 --dtype fp16 --compile --cuda-graphs
    python -m experiments.bench --all --preset tiny   # a quick smoke run of the harness

Each benchmark prints its own table (pilot vs the reference, measured in one process) with its
default settings (CUDA when present, else CPU); this runner only runs them one after the other,
so a figure is never taken while another runs. The shared options below go to the benchmarks
that take them (each module's `SHARED_OPTIONS`); the header line of a benchmark names the ones
it ignores (flops takes only --preset and --size, pix2pix no --preset, --size or --dtype, ...);
run a benchmark module itself for its other options. `half_check` and `peak_trace` (CUDA) run
by name only, not with --all; `python -m experiments.bench.acceptance LOG` reads logs.
A benchmark that fails is reported and the next one runs; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from experiments.bench.common import COMPILE_MODES, DTYPES

BENCHMARKS = (
    "flops", "unet", "controlnet", "vae", "pipeline", "animate", "flow", "frame_store", "render",
    "pix2pix",
)  # fmt: skip
BY_NAME_ONLY = ("half_check", "peak_trace")  # diagnostics, not in --all
SPEED_FLAGS = ("channels_last", "compile", "compile_mode", "cuda_graphs", "prepack")


def forwarded(args: argparse.Namespace, options: tuple[str, ...]) -> list[str]:
    """The command-line arguments of `args` that a benchmark with `SHARED_OPTIONS` takes."""
    argv = []
    for name in options:
        if name == "speed":
            on = [flag for flag in SPEED_FLAGS if flag != "compile_mode" and getattr(args, flag)]
            argv += [f"--{flag.replace('_', '-')}" for flag in on]
            if args.compile_mode != "default":
                argv += ["--compile-mode", args.compile_mode]
        elif name == "channels_last":  # a benchmark with no other speed-up flag
            argv += ["--channels-last"] if args.channels_last else []
        elif getattr(args, name) is not None:
            argv += [f"--{name}", str(getattr(args, name))]
    return argv


def ignored(args: argparse.Namespace, options: tuple[str, ...]) -> list[str]:
    """The shared options given in `args` that a benchmark with `SHARED_OPTIONS` does not take."""
    taken = set(options) | (set(SPEED_FLAGS) if "speed" in options else set())
    given = [name for name in ("preset", "size", "dtype", "device", "threads")
             if getattr(args, name) is not None]  # fmt: skip
    given += [name for name in SPEED_FLAGS if getattr(args, name) not in (False, "default")]
    return [f"--{name.replace('_', '-')}" for name in given if name not in taken]


def main(argv=None) -> None:
    """Parse names and shared options; run each benchmark's `main`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run: {', '.join(BENCHMARKS + BY_NAME_ONLY)}"
    )
    parser.add_argument("--all", action="store_true", help="run every benchmark")
    shared = parser.add_argument_group("shared options (each benchmark's default if not given)")
    shared.add_argument("--preset", choices=("tiny", "sd15", "sd21"))
    shared.add_argument("--size", type=int, help="image side in pixels")
    shared.add_argument("--dtype", choices=tuple(DTYPES))
    shared.add_argument("--device")
    shared.add_argument("--threads", type=int)
    shared.add_argument("--channels-last", action="store_true")
    shared.add_argument("--compile", action="store_true")
    shared.add_argument("--compile-mode", default="default", choices=COMPILE_MODES)
    shared.add_argument("--cuda-graphs", action="store_true")
    shared.add_argument("--prepack", action="store_true")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if args.all else args.names
    unknown = sorted(set(names) - set(BENCHMARKS + BY_NAME_ONLY))
    if not names or unknown:
        what = f"unknown benchmarks {', '.join(unknown)}: " if unknown else ""
        parser.error(
            f"{what}name benchmarks from {', '.join(BENCHMARKS + BY_NAME_ONLY)} or pass --all "
            "(acceptance reads logs: python -m experiments.bench.acceptance LOG)"
        )
    if args.cuda_graphs and not _cuda_device(args.device):
        parser.error("--cuda-graphs needs a CUDA device")
    failed = []
    for name in names:
        try:
            module = importlib.import_module(f"experiments.bench.{name}")
        except ModuleNotFoundError as e:
            print(f"## {name}: not available ({e})\n")
            continue
        options = getattr(module, "SHARED_OPTIONS", ())
        bench_argv = forwarded(args, options)
        skip = ignored(args, options)
        skipped = f"(ignores {' '.join(skip)})" if skip else ""
        print(f"## {name} {' '.join(bench_argv)} {skipped}".rstrip(), flush=True)
        try:
            module.main(bench_argv)
        except Exception:  # report and go on: one failure should not lose the other figures
            traceback.print_exc()
            failed.append(name)
        print(flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
        sys.exit(1)


def _cuda_device(device: str | None) -> bool:
    import torch

    return device.startswith("cuda") if device else torch.cuda.is_available()


if __name__ == "__main__":
    main(sys.argv[1:])
