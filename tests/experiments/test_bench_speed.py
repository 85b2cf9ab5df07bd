"""The benchmark harness: shared options, timing, peak memory, tiny runs of the speed flags."""

import argparse
import importlib

import pytest
import torch

from experiments.bench import __main__ as runner
from experiments.bench import animate, controlnet, pipeline, unet, vae
from experiments.bench.common import (
    TensorMemory,
    compile_reference,
    peak_memory_mib,
    time_many_ms,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--preset", "tiny", "--size", "32", "--threads", "1"]


def test_runner_forwards_the_options_a_benchmark_takes():
    args = argparse.Namespace(
        preset="tiny", size=64, dtype="bf16", device=None, threads=1, channels_last=True,
        compile=False, compile_mode="max-autotune-no-cudagraphs", cuda_graphs=False,
        prepack=True,
    )  # fmt: skip
    assert runner.forwarded(args, unet.SHARED_OPTIONS) == [
        "--preset", "tiny", "--size", "64", "--dtype", "bf16", "--threads", "1",
        "--channels-last", "--prepack", "--compile-mode", "max-autotune-no-cudagraphs",
    ]  # fmt: skip
    assert runner.forwarded(args, ("preset", "size")) == ["--preset", "tiny", "--size", "64"]
    assert runner.forwarded(args, ()) == []
    assert runner.forwarded(args, vae.SHARED_OPTIONS)[-1] == "--channels-last"


def test_runner_reaches_render_and_pix2pix_and_names_what_a_benchmark_ignores():
    from experiments.bench import pix2pix, render

    args = argparse.Namespace(
        preset="tiny", size=64, dtype="bf16", device="cpu", threads=1, channels_last=True,
        compile=False, compile_mode="default", cuda_graphs=False, prepack=True,
    )  # fmt: skip
    assert runner.forwarded(args, pix2pix.SHARED_OPTIONS) == [
        "--device", "cpu", "--threads", "1", "--channels-last",
    ]  # fmt: skip
    assert runner.forwarded(args, render.SHARED_OPTIONS) == [
        "--size", "64", "--device", "cpu", "--threads", "1",
    ]  # fmt: skip
    assert runner.ignored(args, pix2pix.SHARED_OPTIONS) == [
        "--preset", "--size", "--dtype", "--prepack",
    ]  # fmt: skip
    assert runner.ignored(args, unet.SHARED_OPTIONS) == []
    assert runner.ignored(args, ("preset", "size")) == [
        "--dtype", "--device", "--threads", "--channels-last", "--prepack",
    ]  # fmt: skip


def test_runner_names_an_unknown_benchmark(capsys):
    with pytest.raises(SystemExit):
        runner.main(["unet", "nosuch"])
    err = capsys.readouterr().err
    assert "unknown benchmarks nosuch" in err and "half_check" in err and "acceptance" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_graphs_refused_without_cuda(capsys):
    for main in (runner.main, unet.main, pipeline.main, controlnet.main, animate.main):
        with pytest.raises(SystemExit):
            main(["unet", "--cuda-graphs"] if main is runner.main else ["--cuda-graphs"])
        assert "--cuda-graphs needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("bench", "option"),
    [("unet", "--iters"), ("vae", "--iters"), ("controlnet", "--iters"), ("pipeline", "--rounds"),
     ("pix2pix", "--iters"), ("render", "--rounds"), ("unet", "--batch"), ("vae", "--images")],
)  # fmt: skip
def test_counts_below_one_are_usage_errors(capsys, bench, option):
    """`--iters 0` and the like: refused while parsing, before a model is built or timed."""
    main = importlib.import_module(f"experiments.bench.{bench}").main
    with pytest.raises(SystemExit):
        main([*TINY[:2], option, "0"])
    assert f"argument {option}: must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bench", ["unet", "controlnet", "vae", "pipeline", "animate", "half_check"]
)
def test_sizes_off_the_vae_factor_are_usage_errors(capsys, bench):
    """Every benchmark checks `--size` against the preset's VAE factor (tiny: 2), before it
    builds a model."""
    main = importlib.import_module(f"experiments.bench.{bench}").main
    for size in ("33", "0"):
        with pytest.raises(SystemExit):
            main(["--preset", "tiny", "--size", size])
        err = capsys.readouterr().err
        assert f"--size {size}: must be a positive multiple of the tiny VAE's factor 2" in err


def test_latents_are_the_size_over_the_vae_factor():
    """unet and controlnet draw the latents the pipeline samples: 64 px tiny -> 32x32."""
    args = argparse.Namespace(seed=0, size=64, batch=2, preset="tiny")
    ours, _ = unet.build_pair("tiny", 0)
    x, _, _ = unet.draw_inputs(ours.cfg, args, torch.device("cpu"), torch.float32)
    net = controlnet.build_models("tiny", 0, "cpu", torch.float32)[1]
    inputs = controlnet.draw_inputs(net.cfg, args, torch.device("cpu"), torch.float32)
    assert x.shape[-2:] == inputs["x"].shape[-2:] == (32, 32)


def test_time_many_and_peak_memory_on_cpu():
    times = time_many_ms([lambda: None, lambda: torch.ones(100).sum()], torch.device("cpu"),
                         warmup=0, iters=2, rounds=2)  # fmt: skip
    assert len(times) == 2 and min(times) >= 0


def test_peak_memory_counts_the_tensors_a_call_creates():
    weights = torch.randn(256, 256)  # made before the call: not counted

    def call():
        a = torch.ones(4, 2**20)  # 16 MiB
        a.add_(1).view(-1)[:5].mul_(2)  # in place and views: nothing new
        del a
        b = torch.ones(2, 2**20)  # 8 MiB, after the 16 are freed
        return b.sum() + (weights @ weights).sum()

    assert peak_memory_mib(call, torch.device("cpu")) == pytest.approx(16, abs=0.01)
    with TensorMemory() as memory:
        kept = torch.zeros(2**18)  # 1 MiB, alive after the block
        assert memory.live == 2**20
    del kept
    assert memory.live == 0 and memory.peak == 2**20


def test_unet_bench_rows_with_speed_flags(capsys):
    """A row per setting that changes the model: on the CPU `--channels-last` does not (the
    library leaves a CPU UNet NCHW), so the row is pilot prepack, not channels_last+prepack."""
    argv = ["--dtype", "fp32,bf16", "--channels-last", "--prepack", "--iters", "1", "--warmup", "0"]
    unet.main([*TINY, *argv])
    out = capsys.readouterr().out
    assert "peak MiB (tensors)" in out
    for row in ("diffusers eager | fp32", "pilot eager     | bf16", "pilot prepack   | bf16"):
        assert row in out
    assert "channels_last" not in out


def test_controlnet_and_pipeline_bench_rows(capsys):
    """On the CPU channels_last leaves the ControlNet stack as it is (no row) and converts the
    pipeline's VAE (a row)."""
    controlnet.main([*TINY, "--channels-last", "--iters", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    assert "| pilot eager " in out and "channels_last" not in out
    pipeline.main([*TINY, "--steps", "1", "--rounds", "1", "--channels-last"])
    out = capsys.readouterr().out
    assert out.count("| pilot channels_last |") == 1 and "image max rel err vs fp32" in out


def test_controlnet_bench_interleaves_every_stack(capsys, monkeypatch):
    """Every stack's steps, with and without control, are timed in the same rounds (one
    `time_many_ms` call), as unet and vae time their rows."""
    calls = []

    def record(fns, device, **timing):
        calls.append(len(fns))
        return [1.0 + i for i in range(len(fns))]

    monkeypatch.setattr(controlnet, "time_many_ms", record)
    controlnet.main([*TINY, "--prepack", "--iters", "1", "--warmup", "0"])
    assert calls == [6]  # diffusers eager, pilot eager, pilot prepack: off and on each
    out = capsys.readouterr().out
    assert "| pilot prepack   | 5.0           | 6.0             | 1.20x    | 3.00x " in out


def test_half_check_compares_like_with_like(capsys):
    """Both sides' images are clamped [0, 1] images, decoded in the VAE's dtype and in float32."""
    from experiments.bench import half_check

    half_check.main(["--preset", "tiny", "--size", "16", "--steps", "1", "--device", "cpu",
                     "--dtype", "bf16"])  # fmt: skip
    out = capsys.readouterr().out
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()]
    rows = {(row[0], row[1]): row for row in cells if len(row) == 5 and row[0] != "side"}
    for side in ("diffusers", "pilot"):
        for stage in ("image (VAE dtype)", "image (float32 VAE)"):
            assert float(rows[side, stage][4]) <= 1  # max |value|: the clamped image


def test_compile_reference_wraps_without_compiling_yet():
    """diffusers' compiled row: channels_last applied, compilation deferred to the first call."""
    model = torch.nn.Conv2d(4, 4, 3)
    args = argparse.Namespace(channels_last=True, cuda_graphs=False, compile_mode="default")
    compiled = compile_reference(model, args)
    assert compiled._orig_mod is model
    assert model.weight.is_contiguous(memory_format=torch.channels_last)


def test_vae_bench_rows(capsys):
    vae.main([*TINY, "--dtype", "fp32,bf16", "--channels-last", "--iters", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    assert "VAE decode, preset tiny, 32x32 px" in out
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()]
    rows = {tuple(row[:2]) for row in cells if len(row) > 2}
    assert {("pilot channels_last", "bf16"), ("pilot preview decoder", "fp32")} <= rows
    assert "max rel err vs fp32" in out


def test_vae_bench_sliced_rows(capsys):
    """`--images 2 --sliced`: the slicing rows, as close to the float32 reference as the rest."""
    vae.main([*TINY, "--images", "2", "--sliced", "--iters", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    assert "32x32 px, 2 images" in out
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()]
    errors = {row[0]: float(row[-1]) for row in cells if len(row) > 2 and row[-1][:1].isdigit()}
    assert errors.keys() == {"diffusers eager", "diffusers sliced", "pilot eager", "pilot sliced"}
    assert max(errors.values()) < 1e-4
    with pytest.raises(SystemExit):
        vae.main([*TINY, "--images", "0"])


@pytest.mark.parametrize(
    ("bench", "option", "module", "names", "row"),
    [
        (vae, "--bands", "resnet", ("BAND_MIN_ELEMENTS", "BAND_ELEMENTS"), "bands"),
        (unet, "--ff-chunks", "attention", ("CHUNK_MIN_ELEMENTS", "CHUNK_ELEMENTS"), "ff chunks"),
    ],
)
def test_size_sweep_rows_restore_the_constants(capsys, bench, option, module, names, row):
    """`--bands` / `--ff-chunks`: a pilot eager row per size, the library's constants unchanged
    after, a usage error for a size that is not one."""
    module = importlib.import_module(f"pilot.nn.{module}")
    saved = [getattr(module, name) for name in names]
    bench.main([*TINY, option, "256,off", "--iters", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    assert f"pilot eager, {row} 256" in out and f"pilot eager, {row} off" in out
    assert [getattr(module, name) for name in names] == saved
    for bad in ("256,many", "0"):
        with pytest.raises(SystemExit):
            bench.main([*TINY, option, bad])
    assert f"{option} 0: '0' is neither" in capsys.readouterr().err


def test_band_size_off_disables_bands():
    from pilot.nn import resnet

    with vae.band_size(None):
        assert resnet.BAND_MIN_ELEMENTS > 1 << 60


def test_vae_bench_split_norm_rows(capsys):
    """`--split-norms`: a pilot row per threshold (and per layout), close to the reference,
    the library's setting unchanged after; "off" is refused (it is the plain row)."""
    from pilot.nn import norms

    vae.main([*TINY, "--split-norms", "1,4096", "--channels-last", "--iters", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()]
    errors = {row[0]: float(row[-1]) for row in cells if len(row) > 2 and row[-1][:1].isdigit()}
    for layout in ("eager", "channels_last"):
        for elements in (1, 4096):
            assert errors[f"pilot {layout}, split norms >= {elements}"] < 1e-4
    assert norms.SPLIT_MIN_ELEMENTS is None
    with pytest.raises(SystemExit):
        vae.main([*TINY, "--split-norms", "off"])
    assert "--split-norms takes element counts" in capsys.readouterr().err


def test_vae_bench_profile_names_the_operators(capsys):
    vae.main([*TINY, "--iters", "1", "--warmup", "0", "--profile"])
    out = capsys.readouterr().out
    assert "== profile: pilot eager, torch.float32" in out
    assert "convolution" in out  # the operator table


@pytest.mark.gpu
def test_first_call_counts_a_cuda_graph_pool_it_leaves_held():
    """A captured graph's activations are freed into its private pool: `memory_allocated` misses
    them, `held_bytes` (through `first_call`) does not."""
    from experiments.bench.common import first_call, held_bytes

    device = torch.device("cuda")  # no index: the current device
    x = torch.zeros(1 << 20, device=device)  # 4 MiB
    graph = torch.cuda.CUDAGraph()

    def capture():
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            y = x * 2  # a 4 MiB intermediate, freed inside the capture
            y = y.view(2, -1).sum(0)
            del y
        return 0.0

    before_allocated = torch.cuda.memory_allocated()
    _, _, retained = first_call(capture, device, lambda v: v)
    assert torch.cuda.memory_allocated() - before_allocated < 2**20
    assert retained >= 4.0  # the pool stays reserved for the replays
    assert held_bytes(device) >= torch.cuda.memory_allocated()


def test_frame_store_bench_rows(capsys):
    from experiments.bench import frame_store

    frame_store.main(["--size", "16", "--frames", "3", "--gap", "0"])
    out = capsys.readouterr().out
    assert all(name in out for name in frame_store.VARIANTS) and "1.00x" in out


def test_flow_bench_rows(capsys):
    from experiments.bench import flow

    flow.main(["--size", "24", "--frames", "3", "--threads", "1"])
    out = capsys.readouterr().out
    for name in ("GeometryFlow", "VectorFlow", "EstimatedFlow", f"{flow.REFERENCE} | "):
        assert name in out
    assert "1.00x" in out
    with pytest.raises(SystemExit):
        flow.main(["--frames", "2"])


def test_peak_trace_asks_for_a_cuda_device(capsys):
    """The allocator trace is CUDA's: on the CPU a usage error says so."""
    from experiments.bench import peak_trace

    with pytest.raises(SystemExit):
        peak_trace.main(["--device", "cpu"])
    assert "pass a CUDA --device" in capsys.readouterr().err


def test_peak_trace_names_the_model_code_that_allocated():
    """A live block is attributed to the innermost frame in pilot's or diffusers' code."""
    from experiments.bench.peak_trace import origin

    frames = [
        {"filename": "/usr/lib/site-packages/torch/nn/functional.py", "line": 9, "name": "f"},
        {"filename": "/any/checkout/pilot/nn/resnet.py", "line": 27, "name": "forward"},
        {"filename": "/x/site-packages/diffusers/models/resnet.py", "line": 5, "name": "forward"},
    ]
    assert origin({"frames": frames}) == "pilot/nn/resnet.py:27 forward"
    assert origin({"frames": frames[:1]}).startswith("/usr/lib/site-packages/torch/")


def test_private_pools_and_held_bytes_read_the_snapshot(monkeypatch):
    """Graph pools count in full (their free space is the graphs'), other free cache does not."""
    from experiments.bench.common import held_bytes, private_pools
    from experiments.bench.unet import held_label

    snapshot = [
        {"device": 0, "segment_pool_id": (0, 0), "total_size": 100, "allocated_size": 40},
        {"device": 0, "segment_pool_id": (1, 2), "total_size": 64, "allocated_size": 8},
        {"device": 0, "segment_pool_id": (1, 2), "total_size": 32, "allocated_size": 0},
        {"device": 1, "segment_pool_id": (1, 3), "total_size": 999, "allocated_size": 0},
    ]
    monkeypatch.setattr(torch.cuda, "memory_snapshot", lambda: snapshot)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index: 48)  # 40 + 8
    device = torch.device("cuda", 0)
    assert private_pools(device) == (96, 8)
    assert held_bytes(device) == 48 + 96 - 8  # allocated, plus the pool's free segments
    assert held_label(0.0, None) == "-" and held_label(92.4, 58.6) == "92 (59)"
    assert held_label(3.0, 0.0) == "3"


def test_pix2pix_bench_rows_per_upsampling(capsys):
    from experiments.bench import pix2pix

    argv = ["--preset", "tiny", "--batches", "1", "--upsample", "transpose,resize"]
    pix2pix.main([*argv, "--iters", "1", "--warmup", "0", "--threads", "1"])
    out = capsys.readouterr().out
    assert "| 1     | transpose | " in out and "| 1     | resize    | " in out
    assert "1.00x" in out
    with pytest.raises(SystemExit):
        pix2pix.main(["--upsample", "bilinear"])


def test_own_process_memory_is_the_rows_memory_on_the_cpu():
    """A row measured in a process of its own (the benchmark's child mode) needs, on the CPU
    where nothing is paid once per process, exactly what it needs in the table's process; an
    unknown row fails with the child's message."""
    from experiments.bench.common import call_memory_mib, own_process_mib

    argv = [*TINY, "--size", "64"]
    mib = own_process_mib("experiments.bench.unet", argv, "pilot eager", "fp32")
    ours, _ = unet.build_pair("tiny", 0)
    args = argparse.Namespace(seed=0, size=64, batch=2, preset="tiny")
    x, t, context = unet.draw_inputs(ours.cfg, args, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        expected = call_memory_mib(lambda: ours(x, t, context), torch.device("cpu"))
    assert mib > 0.1 and mib == pytest.approx(expected, rel=1e-9)
    with pytest.raises(RuntimeError, match="'pilot nonsense': no such row"):
        own_process_mib("experiments.bench.unet", argv, "pilot nonsense", "fp32")


def test_controlnet_bench_child_mode_prints_one_stacks_memory(capsys):
    """`--memory-of STACK` (what `--own-process-memory` runs in a fresh process): the
    controlled step's memory as JSON, no table; an unknown stack is a usage error."""
    import json

    controlnet.main([*TINY, "--size", "64", "--memory-of", "pilot eager"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and json.loads(out[0])["mib"] > 0.1
    with pytest.raises(SystemExit, match="'pilot fast': no such stack"):
        controlnet.main([*TINY, "--memory-of", "pilot fast"])


def test_animate_bench_times_every_part(capsys):
    animate.main([*TINY, "--frames", "2", "--steps", "2"])
    out = capsys.readouterr().out
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()]
    parts = {row[0]: float(row[1]) for row in cells if len(row) == 3 and row[1][:1].isdigit()}
    assert set(parts) == {*animate.PARTS, "other", "frame, parts timed", "frame, no timers"}
    assert parts["UNet"] > 0 and parts["ControlNet"] > 0 and parts["hint"] > 0
    named = sum(parts[name] for name in (*animate.PARTS, "other"))
    assert named == pytest.approx(parts["frame, parts timed"], abs=0.01)  # 3 decimals each
