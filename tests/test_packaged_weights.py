"""The tiny SD shipped inside the package (`pilot/assets/tiny_sd`, what `pilot demo` runs):
complete, small, float16 on disk, and it loads and generates under depth control."""

import json

import pytest
import torch
from safetensors import safe_open

import pilot
from pilot.demo import OUTPUTS, packaged_weights, weight_folders
from pilot.diffusion.control import Control
from pilot.diffusion.pipeline import Request, SamplingSettings, generate

pytestmark = pytest.mark.usefixtures("one_thread")


def test_packaged_weights_are_complete_small_and_half():
    root = packaged_weights()
    weight_folders()  # pipeline/ and controlnet_depth/, or a clear error
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 40 * 2**20  # the budget
    assert (root / "MODEL_CARD.md").is_file()
    tensors = [p for p in files if p.suffix == ".safetensors"]
    assert len(tensors) == 4  # unet, vae, text_encoder, controlnet
    for path in tensors:
        with safe_open(path, "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}, path


def test_packaged_weights_generate_under_depth_control():
    pipeline, controlnet = weight_folders()
    sd = pilot.load_pipeline(pipeline, dtype=torch.float32)
    net = pilot.load_controlnet(controlnet, dtype=torch.float32)
    depth = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64)
    request = Request(
        prompts=["red brick corridor, soft white fog"], seeds=[0], width=64, height=64
    )
    image = generate(
        sd, request, SamplingSettings(steps=2, cfg=3.0), controls=[Control(net, depth)]
    )
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    assert len(sd.tokenizer.encode("red brick corridor, soft white fog")) == 7  # caption words


def test_pilot_demo_runs_on_the_packaged_weights(tmp_path, capsys):
    """The README's first command (`pilot demo`, no weights given) at 8 frames, 4 steps."""
    from pilot.cli import main

    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--frames", "8", "--steps", "4", "--rows", "4"]
    assert main([*args, "--no-progress"]) in (0, None)
    assert all((out / name).is_file() for name in OUTPUTS)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["warp_error"]["feedback"] < metrics["warp_error"]["independent"]
    assert str(out) in capsys.readouterr().out  # says where the results are


def test_packaged_names_load_anywhere_a_model_path_goes(tmp_path, monkeypatch):
    from pilot.weights.hub import resolve
    from pilot.weights.io import WeightsError

    pipeline, controlnet = weight_folders()
    monkeypatch.chdir(tmp_path)
    assert resolve("tiny_sd") == pipeline and resolve("tiny_sd_depth") == controlnet
    net = pilot.load_controlnet("tiny_sd_depth", dtype=torch.float32)
    assert net.cfg == pilot.load_controlnet(controlnet, dtype=torch.float32).cfg
    (tmp_path / "tiny_sd").mkdir()  # a folder of that name where the user works wins
    assert resolve("tiny_sd").resolve() == tmp_path / "tiny_sd"
    with pytest.raises(WeightsError, match=r"tiny_sdx: .*packaged models: tiny_sd, tiny_sd_depth"):
        resolve("tiny_sdx")


def test_pilot_generate_with_the_packaged_name(tmp_path, monkeypatch):
    from pilot.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["generate", "--model", "tiny_sd", "--prompt", "red brick corridor, thick blue fog"]
    assert main([*args, "--steps", "2", "--width", "64", "--height", "64", "--cfg", "3"]) == 0
    assert len(list((tmp_path / "outputs").glob("*.png"))) == 1
