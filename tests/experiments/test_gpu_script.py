"""`experiments/bench/gpu.sh`, the script a session lent a GPU runs with minutes to spare:
every benchmark line parses with today's options, every test it selects exists, and its
acceptance phase runs end to end on the CPU with tiny models."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.cli_parse import unparsable

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments/bench/gpu.sh"
PHASES = ("acceptance", "eager", "memory", "compile")


def phase_lines(text: str) -> dict[str, list[str]]:
    """The body lines of each `case` branch: phase -> lines."""
    branches = re.findall(r"^\s+(\w+)\)(.*?);;", text, flags=re.S | re.M)
    return {name: body.strip().splitlines() for name, body in branches}


def bench_commands(text: str) -> dict[str, list[list[str]]]:
    """Phase -> the argv (`python -m experiments.bench.NAME ...`) of each `bench` line."""
    fast = re.search(r"^\s*fast=\((.*)\)", text, flags=re.M).group(1)
    out = {}
    for phase, lines in phase_lines(text).items():
        out[phase] = []
        for line in lines:
            words = shlex.split(line.replace('"${fast[@]}"', fast), comments=True)
            while words and re.match(r"^[A-Z_]+=", words[0]):  # LIMIT=420 bench ...
                words.pop(0)
            if words[:1] == ["bench"]:
                out[phase].append(["python", "-m", f"experiments.bench.{words[1]}", *words[2:]])
    return out


def test_every_phase_runs_benchmarks():
    commands = bench_commands(SCRIPT.read_text())
    assert set(commands) == set(PHASES)
    assert all(commands[phase] for phase in PHASES)
    assert ["python", "-m", "experiments.bench.unet", "--size", "512"] == commands["compile"][0][:5]
    assert "--own-process-memory" in commands["acceptance"][0]  # the LIMIT=... line is read


def test_every_benchmark_line_parses(monkeypatch):
    argvs = [argv for argvs in bench_commands(SCRIPT.read_text()).values() for argv in argvs]
    bad = unparsable(argvs, monkeypatch)
    assert not bad, "gpu.sh lines that would fail on the GPU:\n" + "\n".join(bad)


def test_the_gpu_tests_it_selects_exist():
    text = SCRIPT.read_text()
    files = re.search(r"-k \"\$1\" (.*?) 2>&1", text, flags=re.S).group(1).replace("\\\n", " ")
    files = files.split()
    assert all((ROOT / f).is_file() for f in files), files
    selections = re.findall(r'gpu_tests "([^"]+)"', text)
    assert len(selections) == len(PHASES) - 1  # all but the acceptance phase
    for expr in set(selections):
        argv = ["-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", "-m", "gpu"]
        done = subprocess.run(
            [sys.executable, *argv, "-k", expr, *files], cwd=ROOT, capture_output=True, text=True
        )
        collected = re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", done.stdout)
        assert done.returncode == 0 and collected and int(collected.group(1)) > 0, (
            expr,
            done.stdout[-2000:],
        )


def test_a_dry_run_on_the_cpu(tmp_path):
    """The acceptance phase end to end with tiny models on the CPU (float32, no torch.compile):
    every benchmark runs, and the log ends with the acceptance points read from it."""
    text = SCRIPT.read_text()
    fast = "fast=(--size 512 --channels-last --cuda-graphs)"
    assert fast in text
    dry = text.replace(fast, "fast=(--preset tiny --size 32 --threads 1 --channels-last)")
    dry = dry.replace(" --compile ", " ").replace("fp16", "fp32")
    (tmp_path / "gpu.sh").write_text(dry)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    subprocess.run(
        ["bash", str(tmp_path / "gpu.sh"), "acceptance"], cwd=ROOT, env=env, capture_output=True,
        timeout=900, check=False,
    )  # fmt: skip
    log = (tmp_path / "out/acceptance.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("| variant") == 3  # UNet, image, UNet with own-process memory
    assert re.search(r"\n\d+ of \d+ points hold", log), log[-3000:]
