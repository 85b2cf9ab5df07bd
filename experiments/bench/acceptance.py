"""Issue 9's acceptance points, read from the tables of benchmark logs.

    python -m experiments.bench.acceptance $OUT/acceptance.log
    python -m experiments.bench.acceptance experiments/bench/results/h100_memory_3.log \\
        experiments/bench/results/h100_compile.log

A log is the output of `gpu.sh`, of `python -m experiments.bench` or of one benchmark. For every
UNet table (`experiments.bench.unet`) and txt2img table (`experiments.bench.pipeline`) in them,
and every dtype in it, the points are, each ratio taken within one table (one process):

- the fastest pilot row (with or without torch.compile) against diffusers eager: <= 0.8x;
- a pilot row with torch.compile against diffusers compiled: <= 1.0x;
- the whole image, the fastest pilot row against diffusers eager: <= 0.8x;
- peak memory of each of those rows against diffusers' in the same mode (eager, compiled):
  <= 1.0x, taken from the "own process" column where the table has one (each row paying its
  own one-time costs, `--own-process-memory`);
- every pilot row's max relative error against float32: <= 5e-2.

It prints one Markdown row per point with its source (log:line) and whether it holds, and exits
with 1 when one does not (2 when the logs hold no such table).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from experiments.bench.common import format_table

TIME_TARGET, COMPILED_TARGET, MEMORY_TARGET, ERROR_TARGET = 0.8, 1.0, 1.0, 5e-2


@dataclass(frozen=True)
class Table:
    """One benchmark table of a log, or its rows of one dtype: its kind ("unet" / "pipeline"),
    where it starts (and the dtype), its rows (column name -> cell) by variant."""

    kind: str
    source: str
    rows: dict[str, dict[str, str]]


# The first words of the line each benchmark prints above its table -> the benchmark.
TITLES = {"UNet forward,": "unet", "txt2img,": "pipeline", "VAE decode,": "vae"}


def read_tables(path: Path) -> list[Table]:
    """The UNet and txt2img tables of one log, in order: a table's kind comes from the title
    line its benchmark prints above it, or from the header of the command that ran it (gpu.sh's
    `== [HH:MM:SS] name options`, `python -m experiments.bench`'s `## name options`), so logs
    of gpu.sh, of the runner and of one benchmark are all read."""
    lines = path.read_text().splitlines()
    tables, kind = [], None
    for i, line in enumerate(lines):
        title = next((k for prefix, k in TITLES.items() if line.startswith(prefix)), None)
        if title:
            kind = title
        elif line.startswith(("== ", "## ")) and len(line.split()) > 1:
            words = line.split()[1:]
            kind = words[1] if re.fullmatch(r"\d\d:\d\d:\d\d", words[0]) else words[0]
        elif line.startswith("| variant") and kind in ("unet", "pipeline"):
            header = cells(line)
            body = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                body.append(dict(zip(header, cells(row), strict=True)))
            for dtype in dict.fromkeys(row.get("dtype", "") for row in body):  # one per dtype
                rows = {r["variant"]: r for r in body if r.get("dtype", "") == dtype}
                tables.append(Table(kind, f"{path.name}:{i + 1} {dtype}".strip(), rows))
    return tables


def cells(line: str) -> list[str]:
    """The stripped cells of one Markdown table line."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def number(cell: str) -> float | None:
    """The leading number of a cell ("0.42x", "135 (102)", "2.0e-03"), None for "-"."""
    match = re.match(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", cell.strip("*"))
    return float(match.group()) if match else None


def column(row: dict[str, str], prefix: str) -> float | None:
    """The number in the first column whose name starts with `prefix`."""
    return next((number(v) for k, v in row.items() if k.startswith(prefix)), None)


def peak_mib(row: dict[str, str]) -> float | None:
    """A row's peak memory: its own-process figure when measured, else the in-process one."""
    own = next((number(v) for k, v in row.items() if "own process" in k), None)
    return own if own is not None else column(row, "peak MiB")


def points(table: Table) -> list[list[str]]:
    """The acceptance rows of one table: [point, pilot, diffusers, ratio, target, holds, source]."""
    unit = "ms" if table.kind == "unet" else "s / image"
    what = "UNet step" if table.kind == "unet" else "whole image"
    pilots = {n: r for n, r in table.rows.items() if n.startswith("pilot") and column(r, unit)}
    references = {"eager": (table.rows.get("diffusers eager"), TIME_TARGET)}
    if table.kind == "unet":  # the issue sets a compiled target for the UNet step only
        references["compiled"] = (table.rows.get("diffusers compile"), COMPILED_TARGET)
    out = []
    for mode, (ref, target) in references.items():
        if ref is None or not pilots:
            continue
        ratios = {n: time_ratio(r, ref, unit, mode) for n, r in pilots.items()}
        fastest = min(ratios, key=ratios.get)
        point = f"{what} vs {mode}, {fastest}"
        out.append(verdict(point, pilots[fastest], ref, unit, target, mode, table, ratios[fastest]))
        # Memory of the leanest pilot row that meets the time target (the fastest if none does).
        meeting = [n for n in pilots if ratios[n] <= target] or [fastest]
        leanest = min(meeting, key=lambda n: _or_inf(peak_mib(pilots[n])))
        point = f"peak memory, {what} vs {mode}, {leanest}"
        out.append(verdict(point, pilots[leanest], ref, "MiB", MEMORY_TARGET, mode, table))
    errors = {n: e for n, r in pilots.items() if (e := error(r)) is not None}
    if errors:
        worst = max(errors, key=errors.get)
        holds = "yes" if errors[worst] <= ERROR_TARGET else "**no**"
        point = f"largest error vs fp32, {what}, {worst}"
        target = f"<= {ERROR_TARGET:g}"
        out.append([point, f"{errors[worst]:.1e}", "", "", target, holds, table.source])
    return out


def _or_inf(value: float | None) -> float:
    """`value`, with a missing figure last in a `min`."""
    return float("inf") if value is None else value


def error(row: dict[str, str]) -> float | None:
    """A row's max relative error against the float32 reference."""
    return column(row, "max rel err") if "max rel err vs fp32" in row else column(row, "image max")


def time_ratio(row: dict[str, str], ref: dict[str, str], unit: str, mode: str) -> float:
    """pilot's time over diffusers': the table's own ratio column (from unrounded times) where
    it has one, else the quotient of the printed times."""
    ratio = column(row, "/ diffusers eager" if mode == "eager" else "/ diffusers compile")
    return ratio if ratio is not None else column(row, unit) / column(ref, unit)


def verdict(point, row, ref, unit, target, mode, table, ratio=None) -> list[str]:
    """One output row comparing `row` with diffusers' `ref` in `unit` (ms, s / image or MiB,
    peak memory), with their `ratio` if given; a missing figure does not hold."""
    ours, theirs = (peak_mib(r) if unit == "MiB" else column(r, unit) for r in (row, ref))
    goal = f"<= {target}x {mode}"
    if ours is None or theirs is None:
        return [point, "-", "-", "-", goal, "**no** (not measured)", table.source]
    if min(ours, theirs) < 0:  # older logs' memory, which subtracted what a call left held
        return [point, f"{ours:g}", f"{theirs:g}", "-", goal, "**no** (not a peak)", table.source]
    if ratio is None:  # 0 / 0: both too small to show (tiny models on a CPU)
        ratio = ours / theirs if theirs else (1.0 if ours == 0 else float("inf"))
    holds = "yes" if ratio <= target else "**no**"
    pilot, diffusers = f"{ours:g} {unit}", f"{theirs:g} {unit} {mode}"
    return [point, pilot, diffusers, f"{ratio:.2f}x", goal, holds, table.source]


def main(argv: list[str] | None = None) -> int:
    """Print the acceptance table of the logs; exit 1 if a point does not hold."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "logs", nargs="+", type=Path, help="benchmark logs (gpu.sh writes $OUT/<phase>.log)"
    )
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.logs if not p.is_file()]
    if missing:
        parser.error(f"no such log: {', '.join(missing)}")
    rows = [row for path in args.logs for table in read_tables(path) for row in points(table)]
    if not rows:
        print(f"no UNet or txt2img table in {', '.join(map(str, args.logs))}", file=sys.stderr)
        return 2
    header = ["point", "pilot", "diffusers", "ratio", "target", "holds", "from"]
    print(format_table(header, rows))
    failed = [row[0] for row in rows if row[5] != "yes"]
    print(
        f"\n{len(rows) - len(failed)} of {len(rows)} points hold"
        + (f"; not: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
