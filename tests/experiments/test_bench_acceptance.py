"""`experiments.bench.acceptance`: issue 9's points read from benchmark logs."""

from pathlib import Path

import pytest

from experiments.bench import acceptance
from experiments.bench.common import format_table

RESULTS = Path(__file__).resolve().parents[2] / "experiments/bench/results"
UNET_HEADER = [
    "variant", "dtype", "ms", "/ diffusers eager", "/ diffusers compile", "TFLOP/s",
    "first call s", "peak MiB (CUDA allocated, graph pools incl.)",
    "held after 1st call MiB (graph pool)", "max rel err vs fp32", "peak MiB, own process",
]  # fmt: skip


def unet_log(rows: list[tuple[str, float, int, int, float]]) -> str:
    """A gpu.sh log with one UNet table: (variant, ms, peak MiB, own-process MiB, error)."""
    body = [
        [name, "fp16", f"{ms}", "-", "-", "1", "0.1", f"{mib}", "-", f"{err:.1e}", f"{own}"]
        for name, ms, mib, own, err in rows
    ]
    return "\n".join(
        [
            "== 07:05:28 unet --size 512 --compile --own-process-memory",
            "UNet forward, preset sd15, 512x512 px",
            format_table(UNET_HEADER, body),
            "",
            "== 07:09:00 flow --size 512",
            "| variant | ms |",
            "|---|---|",
            "| pilot | 1.0 |",
        ]
    )


def verdicts(tmp_path, text: str) -> dict[str, list[str]]:
    path = tmp_path / "acceptance.log"
    path.write_text(text)
    return {
        row[0]: row for table in acceptance.read_tables(path) for row in acceptance.points(table)
    }


def test_points_of_a_unet_table(tmp_path):
    rows = verdicts(
        tmp_path,
        unet_log(
            [
                ("diffusers eager", 25.0, 130, 163, 2e-3),
                ("diffusers compile", 7.4, 165, 180, 1e-3),
                ("pilot eager", 19.0, 94, 127, 2e-3),
                ("pilot channels_last+compile+cuda_graphs", 6.7, 193, 170, 3e-2),
            ]
        ),
    )
    fast = "pilot channels_last+compile+cuda_graphs"
    assert rows[f"UNet step vs eager, {fast}"][3:6] == ["0.27x", "<= 0.8x eager", "yes"]
    # against eager, the leanest row within 0.8x is pilot eager (0.76x), own-process MiB
    assert rows["peak memory, UNet step vs eager, pilot eager"][1:6] == [
        "127 MiB", "163 MiB eager", "0.78x", "<= 1.0x eager", "yes"
    ]  # fmt: skip
    assert rows[f"UNet step vs compiled, {fast}"][3] == "0.91x"
    assert rows[f"peak memory, UNet step vs compiled, {fast}"][1:4] == [
        "170 MiB", "180 MiB compiled", "0.94x"
    ]  # fmt: skip
    assert rows[f"largest error vs fp32, UNet step, {fast}"][1] == "3.0e-02"
    assert all(row[5] == "yes" for row in rows.values())
    assert all(row[6] == "acceptance.log:3 fp16" for row in rows.values())  # header line, dtype


def test_logs_of_the_runner_and_of_one_benchmark(tmp_path):
    """Tables are found by their titles too: `python -m experiments.bench` (`## unet ...`) and
    `python -m experiments.bench.unet` (no header) logs give gpu.sh's points; a VAE table (the
    same `| variant` columns) after a UNet table is not read as one."""
    gpu = unet_log(
        [
            ("diffusers eager", 25.0, 130, 163, 2e-3),
            ("pilot eager", 19.0, 94, 127, 2e-3),
        ]
    )
    expected = verdicts(tmp_path, gpu)
    header = gpu.splitlines()[0]
    assert len(expected) == 3
    assert verdicts(tmp_path, gpu.replace(header, "## unet --size 512")) == expected
    alone = gpu.split("\n\n")[0].replace(header + "\n", "")
    vae = ["VAE decode, preset sd15, 512x512 px", "| variant | dtype | ms |", "|-|-|-|"]
    vae += ["| diffusers eager | fp16 | 5.0 |", "| pilot eager | fp16 | 9.0 |"]
    assert verdicts(tmp_path, "\n".join([alone, "", *vae])) == {
        point: [*row[:6], row[6].replace(":3", ":2")] for point, row in expected.items()
    }


def test_a_point_that_does_not_hold(tmp_path, capsys):
    text = unet_log(
        [
            ("diffusers eager", 25.0, 130, 163, 2e-3),
            ("diffusers compile", 7.4, 165, 165, 1e-3),
            ("pilot eager", 22.0, 94, 127, 6e-2),
            ("pilot compile", 8.0, 150, 150, 2e-3),
        ]
    )
    rows = verdicts(tmp_path, text)
    assert rows["UNet step vs compiled, pilot compile"][3:6] == [
        "1.08x",
        "<= 1.0x compiled",
        "**no**",
    ]
    assert rows["largest error vs fp32, UNet step, pilot eager"][5] == "**no**"
    # nothing meets the compiled target: the memory point is the fastest row's
    assert rows["peak memory, UNet step vs compiled, pilot compile"][3] == "0.91x"
    assert acceptance.main([str(tmp_path / "acceptance.log")]) == 1
    out = capsys.readouterr().out
    assert "3 of 5 points hold; not: UNet step vs compiled, pilot compile, largest" in out


def test_logs_without_tables_and_missing_logs(tmp_path, capsys):
    empty = tmp_path / "flow.log"
    empty.write_text("== flow --size 512\n| variant | ms |\n|---|---|\n| pilot | 1 |\n")
    assert acceptance.main([str(empty)]) == 2
    assert "no UNet or txt2img table" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        acceptance.main([str(tmp_path / "missing.log")])
    assert "missing.log" in capsys.readouterr().err


def test_the_recorded_h100_logs():
    """The README's acceptance table comes from these logs (third session, H100)."""
    logs = [RESULTS / "h100_memory_3.log", RESULTS / "h100_compile.log"]
    rows = {}
    for path in logs:
        for table in acceptance.read_tables(path):
            rows.update({(path.name, row[0]): row for row in acceptance.points(table)})
    unet = rows[("h100_memory_3.log", "UNet step vs eager, pilot channels_last+cuda_graphs")]
    assert unet[1:4] == ["10.1 ms", "24 ms eager", "0.42x"]
    image = rows[("h100_memory_3.log", "whole image vs eager, pilot channels_last+cuda_graphs")]
    assert image[3] == "0.30x"
    memory = rows[
        ("h100_memory_3.log", "peak memory, whole image vs eager, pilot channels_last+cuda_graphs")
    ]
    assert memory[1:4] == ["370 MiB", "610 MiB eager", "0.61x"]
    fast = "pilot channels_last+compile+cuda_graphs"
    assert rows[("h100_compile.log", f"UNet step vs eager, {fast}")][3] == "0.26x"
    assert rows[("h100_compile.log", f"UNet step vs compiled, {fast}")][1:6] == [
        "6.7 ms", "7.4 ms compiled", "0.91x", "<= 1.0x compiled", "yes"
    ]  # fmt: skip
    # before the memory changes: what `gpu.sh acceptance` measures again
    assert rows[("h100_compile.log", f"peak memory, UNet step vs compiled, {fast}")][3:6] == [
        "1.17x", "<= 1.0x compiled", "**no**"
    ]  # fmt: skip


def test_the_recorded_h200_acceptance_logs():
    """The README's acceptance table comes from these logs (nineteenth session, an H200): the
    gpu.sh acceptance run and its third benchmark run again on its own; every point holds."""
    logs = [RESULTS / "h200_acceptance.log", RESULTS / "h200_acceptance_unet_eager.log"]
    rows = {}
    for path in logs:
        for table in acceptance.read_tables(path):
            rows.update({(path.name, row[0]): row for row in acceptance.points(table)})
    assert len(rows) == 11 and all(row[5] == "yes" for row in rows.values())
    fast = "pilot channels_last+compile+cuda_graphs"
    compiled = rows[("h200_acceptance.log", f"UNet step vs compiled, {fast}")]
    assert compiled[1:4] == ["6.5 ms", "7.2 ms compiled", "0.89x"]
    memory = rows[("h200_acceptance.log", f"peak memory, UNet step vs compiled, {fast}")]
    assert memory[1:4] == ["134 MiB", "288 MiB compiled", "0.47x"]  # own process, both
    graphs = "pilot channels_last+cuda_graphs"
    eager = rows[("h200_acceptance_unet_eager.log", f"UNet step vs eager, {graphs}")]
    assert eager[1:4] == ["9.7 ms", "30.3 ms eager", "0.32x"]
    image = rows[("h200_acceptance.log", f"peak memory, whole image vs eager, {graphs}")]
    assert image[1:4] == ["487 MiB", "610 MiB eager", "0.80x"]


def test_zero_memory_on_both_sides(tmp_path):
    """Tiny models on a CPU (a dry run of gpu.sh) round to 0 MiB: equal, not a crash."""
    rows = verdicts(
        tmp_path,
        unet_log(
            [
                ("diffusers eager", 8.7, 0, 0, 0.0),
                ("pilot eager", 6.0, 0, 0, 6e-7),
                ("pilot channels_last", 5.0, 1, 1, 6e-7),
            ]
        ),
    )
    # both pilot rows meet the time target: the memory point is the leaner, at 0 MiB
    assert rows["peak memory, UNet step vs eager, pilot eager"][3:6] == [
        "1.00x",
        "<= 1.0x eager",
        "yes",
    ]


def test_one_table_per_dtype():
    """A table with float16 and bfloat16 rows gives the points of each dtype on its own."""
    tables = [t for t in acceptance.read_tables(RESULTS / "h100_eager.log") if t.kind == "unet"]
    assert [t.source for t in tables] == ["h100_eager.log:18 fp16", "h100_eager.log:18 bf16"]
    ratios = [acceptance.points(t)[0][3] for t in tables]
    assert ratios == ["0.31x", "0.38x"]  # channels_last + CUDA graphs against diffusers eager


def test_a_negative_memory_figure_is_not_a_peak():
    """Logs from before `first_call` counted retained memory printed negative peaks."""
    table = [t for t in acceptance.read_tables(RESULTS / "h200_compile.log") if t.kind == "unet"]
    rows = {row[0]: row for row in acceptance.points(table[0])}
    fast = "pilot channels_last+compile+cuda_graphs"
    assert rows[f"peak memory, UNet step vs compiled, {fast}"][2:6] == [
        "-33", "-", "<= 1.0x compiled", "**no** (not a peak)"
    ]  # fmt: skip
