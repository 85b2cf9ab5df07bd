"""Timing helpers shared by the benchmarks: CUDA events on GPU, perf_counter on CPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


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
    a, b = [], []
    for _ in range(rounds):
        a.append(time_ms(fn_a, device, warmup=warmup, iters=iters))
        b.append(time_ms(fn_b, device, warmup=warmup, iters=iters))
        warmup = max(1, warmup // 2)
    return statistics.median(a), statistics.median(b)


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
