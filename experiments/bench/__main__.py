"""Run the benchmarks in one command: `python -m experiments.bench --all` or by name.

    python -m experiments.bench --all                 # every benchmark with its defaults
    python -m experiments.bench unet pipeline         # some of them

Each benchmark prints its own table (pilot vs the reference, measured in one process) with its
default settings (CUDA when present, else CPU); this runner only runs them one after the other,
so a figure is never taken while another runs. Run a benchmark module itself for other settings.
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = ("flops", "unet", "controlnet", "pipeline", "animate", "render", "pix2pix")


def main(argv=None) -> None:
    """Parse names and shared options; run each benchmark's `main`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(BENCHMARKS)}")
    parser.add_argument("--all", action="store_true", help="run every benchmark")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if args.all else args.names
    unknown = sorted(set(names) - set(BENCHMARKS))
    if not names or unknown:
        parser.error(f"name benchmarks from {', '.join(BENCHMARKS)} or pass --all")
    for name in names:
        try:
            module = importlib.import_module(f"experiments.bench.{name}")
        except ModuleNotFoundError as e:
            print(f"## {name}: not available ({e})\n")
            continue
        print(f"## {name}", flush=True)
        module.main([])
        print(flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
