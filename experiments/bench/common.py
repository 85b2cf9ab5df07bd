"""Helpers shared by the benchmarks: timing (CUDA events on GPU, perf_counter on CPU), peak
memory, the speed-up options, tables."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pilot.diffusion.speed import COMPILE_MODES, SpeedSettings
from pilot.models.controlnet import CONTROLNET_PRESETS, ControlNetConfig
from pilot.models.vae import VAE_PRESETS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def time_ms(fn: Callable[[], object], device: torch.device, *, warmup: int, iters: int) -> float:
    """Median wall time of `fn()` in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_pair_ms(
    fn_a: Callable[[], object],
    fn_b: Callable[[], object],
    device: torch.device,
    *,
    warmup: int,
    iters: int,
    rounds: int = 3,
) -> tuple[float, float]:
    """Median times of two functions, interleaved in rounds so drift hits both alike."""
    a, b = time_many_ms([fn_a, fn_b], device, warmup=warmup, iters=iters, rounds=rounds)
    return a, b


def time_many_ms(
    fns: Sequence[Callable[[], object]],
    device: torch.device,
    *,
    warmup: int,
    iters: int,
    rounds: int = 3,
) -> list[float]:
    """Median times of several functions, interleaved in rounds so drift hits all alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, t in zip(fns, times, strict=True):
            t.append(time_ms(fn, device, warmup=warmup, iters=iters))
        warmup = max(1, warmup // 2)
    return [statistics.median(t) for t in times]


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak tensor memory of one `fn()` call above what was allocated before it, in MiB.

    CUDA: `torch.cuda.max_memory_allocated` (weights already resident are not counted).
    Elsewhere: `TensorMemory`, the storages the call's operators create, counted while alive;
    the same quantity, device-independent and exact, where a process's resident set would mix
    in allocator caching.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with TensorMemory() as memory:
        fn()
    return memory.peak / 2**20


class TensorMemory(TorchDispatchMode):
    """Bytes of the tensor storages that operators create under it: `live` now, `peak` at most.

    Every operator output that does not alias an input (per the operator's schema: views and
    in-place results are not new memory) is a new storage; it counts from its creation until
    Python frees it. Work buffers inside one kernel (a convolution's im2col, oneDNN's
    re-laid-out weights) are not seen, nor is anything made outside the block. Eager PyTorch
    only: compiled code runs without dispatching its operators here.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # data_ptr -> bytes of the live storages counted

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        results = out if isinstance(out, tuple) else (out,)
        for spec, result in zip(func._schema.returns, results, strict=False):
            if spec.alias_info is None:
                for t in tree_leaves(result):
                    if isinstance(t, torch.Tensor):
                        self._count(t.untyped_storage())
        return out

    def _count(self, storage: torch.UntypedStorage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._sizes:
            return
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key)


def first_call(
    fn: Callable[[], object], device: torch.device, consume: Callable[[object], float]
) -> tuple[float, float, float]:
    """The first call of `fn` (where compilation and graph capture happen).

    Returns:
        `(consume(fn()), seconds, retained MiB)`: the MiB the call left held once its output
        is consumed (static buffers, compiled kernels' workspaces, and CUDA graph pools whole:
        see `held_bytes`), to add to `peak_memory_mib` of the later calls; 0 on CPU.
    """
    cuda = device.type == "cuda"
    if cuda:  # release what dead models left (graph pools of earlier variants): not this call's
        gc.collect()
        torch.cuda.empty_cache()
    before = held_bytes(device) if cuda else 0
    start = time.perf_counter()
    value = consume(fn())
    seconds = time.perf_counter() - start
    retained = (held_bytes(device) - before) / 2**20 if cuda else 0.0
    return value, seconds, retained


def call_memory_mib(run: Callable[[], object], device: torch.device) -> float:
    """`run`'s peak memory as the tables give it: the first call's held MiB (`first_call`) plus
    a later call's peak (`peak_memory_mib`)."""
    _, _, retained = first_call(run, device, lambda out: 0.0)
    return peak_memory_mib(run, device) + retained


OWN_PROCESS_FLAG = "--memory-of"  # a benchmark's child mode: one row's memory as JSON


def add_own_process_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """`--own-process-memory` (a column per `what`, a row or a stack: `own_process_mib`) and
    the child mode's hidden `--memory-of NAME`."""
    parser.add_argument(
        "--own-process-memory",
        action="store_true",
        help=f"a column: each {what}'s memory again, in a fresh process that runs only it",
    )
    parser.add_argument(OWN_PROCESS_FLAG, default=None, help=argparse.SUPPRESS)


def own_process_choice(choices: dict, name: str, what: str):
    """The child mode's `choices[name]`; a usage error naming the valid `what`s if none."""
    if name not in choices:
        raise SystemExit(f"{OWN_PROCESS_FLAG} {name!r}: no such {what} ({', '.join(choices)})")
    return choices[name]


def own_process_mib(module: str, argv: Sequence[str], row: str, dtype: str) -> float:
    """One table row's peak memory measured again in a fresh process that runs only that row.

    In the table's process, one-time costs are paid by whichever row comes first: the first
    call that multiplies matrices on a stream makes cuBLAS's workspace for it (33 MiB on the
    H100 here), and later rows on that stream find it made. A row that captures CUDA graphs works
    on a side stream and pays for a second one. Here every row pays for what it needs, as in
    a process that runs only that model: `python -m module *argv --dtype dtype --memory-of
    row` prints `{"mib": ...}` (`call_memory_mib`) as its last line.

    Raises:
        RuntimeError: the child failed; its command and the end of its stderr.
    """
    cmd = [sys.executable, "-m", module, *argv, "--dtype", dtype, OWN_PROCESS_FLAG, row]
    root = str(Path(__file__).resolve().parents[2])  # the repo root: `experiments` importable
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{' '.join(cmd)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return float(json.loads(lines[-1])["mib"])


def held_bytes(device: torch.device) -> int:
    """Bytes of CUDA memory that other work cannot use: allocated tensors, plus every segment
    of the private pools (CUDA graphs, inductor's CUDA graph trees) in full.

    A graph's activations are freed into its private pool during capture, so
    `memory_allocated` misses them, yet that memory stays reserved for the graph's replays.
    """
    reserved, allocated = private_pools(device)
    return torch.cuda.memory_allocated(cuda_index(device)) + reserved - allocated


def private_pools(device: torch.device) -> tuple[int, int]:
    """(reserved, allocated) bytes of the private memory pools on a CUDA device: the CUDA graph
    pools (their segments in full; allocated = the graphs' static outputs)."""
    default_pool = (0, 0)
    index = cuda_index(device)
    reserved = allocated = 0
    for segment in torch.cuda.memory_snapshot():
        private = tuple(segment.get("segment_pool_id", default_pool)) != default_pool
        if private and segment.get("device") == index:
            reserved += segment["total_size"]
            allocated += segment["allocated_size"]
    return reserved, allocated


def graph_pool_bytes(device: torch.device) -> int:
    """Bytes reserved by live CUDA graph pools (dead ones released first); 0 off CUDA."""
    if device.type != "cuda":
        return 0
    gc.collect()
    torch.cuda.empty_cache()
    return private_pools(device)[0]


def held_label(retained: float, pool: float | None) -> str:
    """What a first call left held (static buffers, a capture stream's cuBLAS workspace, graph
    pools in full), and how much of it is graph pool: the parts of a CUDA graph's memory."""
    if not pool and not retained:
        return "-"
    return f"{retained:.0f}" + (f" ({pool:.0f})" if pool else "")


def cuda_index(device: torch.device) -> int:
    """The index of a CUDA device (the current device where `device` names none)."""
    return torch.cuda.current_device() if device.index is None else device.index


def memory_label(device: torch.device) -> str:
    """Column header of the peak memory figures (`first_call` + `peak_memory_mib`)."""
    if device.type == "cuda":
        return "peak MiB (CUDA allocated, graph pools incl.)"
    return "peak MiB (tensors)"


def format_mib(mib: float, retained: float = 0.0) -> str:
    """A peak memory figure, plus what earlier calls left allocated."""
    return f"{mib + retained:.0f}"


def count(text: str) -> int:
    """argparse type of a count that must be >= 1 (`--iters`, `--rounds`): a usage error
    before any model is built, not an empty median after they ran."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def vae_factor(preset: str) -> int:
    """Pixels per latent of a preset's VAE (8 for SD, 2 for tiny): every benchmark draws
    `size // vae_factor(preset)` latents for a `size` px image, as the pipeline does."""
    return VAE_PRESETS[preset].downsample_factor


def check_size(parser: argparse.ArgumentParser, preset: str, size: int, option="--size") -> None:
    """A usage error unless `size` px is a positive multiple of the preset's VAE factor."""
    factor = vae_factor(preset)
    if size < 1 or size % factor:
        parser.error(
            f"{option} {size}: must be a positive multiple of the {preset} VAE's factor {factor}"
        )


def controlnet_config(preset: str) -> ControlNetConfig:
    """A preset's ControlNet with a hint encoder as coarse as the preset's VAE (the tiny
    preset's encoder downsamples 8x, its VAE 2x; SD's are 8x both)."""
    cfg = CONTROLNET_PRESETS[preset]
    return replace(cfg, hint_channels=cfg.hint_channels[: vae_factor(preset).bit_length()])


def parse_dtypes(parser: argparse.ArgumentParser, value: str | None, device: torch.device) -> list:
    """The `--dtypes` comma list (default: all three on CUDA, fp32 elsewhere); a usage error
    names unknown ones."""
    dtypes = (value or ("fp32,fp16,bf16" if device.type == "cuda" else "fp32")).split(",")
    if unknown := sorted(set(dtypes) - set(DTYPES)):
        parser.error(f"unknown dtypes {unknown}; valid: {', '.join(DTYPES)}")
    return dtypes


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """The pilot speed-up options (`pilot.diffusion.speed.SpeedSettings`) as flags."""
    group = parser.add_argument_group("pilot speed-ups (diffusers gets --compile too)")
    group.add_argument("--channels-last", action="store_true", help="NHWC weights")
    group.add_argument("--compile", action="store_true", help="torch.compile, static shapes")
    group.add_argument("--compile-mode", default="default", choices=COMPILE_MODES)
    group.add_argument("--cuda-graphs", action="store_true", help="replay model calls (CUDA)")
    group.add_argument("--prepack", action="store_true", help="oneDNN-layout conv weights (CPU)")


def speed_settings(args: argparse.Namespace) -> SpeedSettings:
    """`SpeedSettings` of the flags added by `add_speed_arguments`."""
    return SpeedSettings(
        channels_last=args.channels_last,
        compile=args.compile,
        compile_mode=args.compile_mode,
        cuda_graphs=args.cuda_graphs,
        prepack=args.prepack,
    )


def check_speed_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace, device: torch.device
) -> None:
    """Exit with a usage error for flags the device cannot honour (CUDA graphs off CUDA)."""
    if args.cuda_graphs and device.type != "cuda":
        parser.error(f"--cuda-graphs needs a CUDA device, got --device {device}")


def compile_reference(model: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    """diffusers' model compiled as its documentation advises: channels_last when pilot gets
    it, `mode="reduce-overhead"` (inductor's CUDA graphs) when pilot gets CUDA graphs.

    `torch.compile` wraps the model without modifying it; channels_last converts it in place,
    so pass a copy. Call `mark_step(args)` before each call outside a diffusers pipeline.
    """
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    mode = "reduce-overhead" if args.cuda_graphs else args.compile_mode
    return torch.compile(model, dynamic=False, mode=mode)


def mark_step(args: argparse.Namespace) -> None:
    """Tell inductor's CUDA graphs ("reduce-overhead") that a new step begins: the outputs of
    the last replay are dead (what diffusers' pipelines do by consuming them)."""
    if args.compile and args.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()


def max_rel_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref|, computed in float32."""
    a, ref = a.float(), ref.float()
    return ((a - ref).abs().max() / ref.abs().max()).item()


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, columns padded for the terminal."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *map(line, rows)])


def device_name(device: torch.device) -> str:
    """Human-readable name of the device the figures were measured on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def parse_sizes(parser: argparse.ArgumentParser, option: str, text: str) -> list[int | None]:
    """A comma list of element counts or "off" (None), such as `--bands`; a usage error names
    the option and the item at fault."""
    sizes: list[int | None] = []
    for item in filter(None, text.split(",")):
        if item == "off":
            sizes.append(None)
        elif item.isdigit() and int(item) >= 1:
            sizes.append(int(item))
        else:
            parser.error(f"{option} {text}: {item!r} is neither an element count >= 1 nor off")
    return sizes


@contextlib.contextmanager
def set_constants(module: ModuleType, **values: int) -> Iterator[None]:
    """Set a module's constants (`resnet.BAND_ELEMENTS`, ...) within; restored after."""
    saved = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def piece_size(module: ModuleType, prefix: str, elements: int | None):
    """Set the size of the pieces a layer works in (`resnet.BAND_ELEMENTS`,
    `attention.CHUNK_ELEMENTS`: `{prefix}_ELEMENTS`) within; None puts `{prefix}_MIN_ELEMENTS`
    out of reach, so large inputs too run whole."""
    if elements is None:
        return set_constants(module, **{f"{prefix}_MIN_ELEMENTS": 1 << 62})
    return set_constants(module, **{f"{prefix}_ELEMENTS": elements})


def with_piece_size(fn: Callable, module: ModuleType, prefix: str, elements: int | None):
    """`fn` with `piece_size(module, prefix, elements)` set around each call (a table row per
    size, for `--bands` / `--ff-chunks`)."""
    return within(fn, lambda: piece_size(module, prefix, elements))


def within(fn: Callable, context: Callable[[], contextlib.AbstractContextManager]) -> Callable:
    """`fn` run inside a fresh `context()` at each call (a table row per library setting)."""

    def call(*args, **kwargs):
        with context():
            return fn(*args, **kwargs)

    return call
