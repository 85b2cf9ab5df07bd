"""`pilot generate` speed flags: accepted, --cuda-graphs refused off CUDA before any work,
--channels-last gives the default image (float rounding), --vae-upcast recorded."""

import json

import pytest
import torch

from pilot.cli import build_parser, main
from pilot.commands.generate import VAE_UPCASTS, speed_settings
from pilot.imageio import read_image, read_png_text, write_png
from tests.commands.test_generate import FAST, controlnet_folder, run  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def parse(*argv):
    return build_parser().parse_args(["generate", "--model", "m", "--prompt", "p", *argv])


def test_speed_flags_parse_to_settings():
    cpu = torch.device("cpu")
    assert speed_settings(parse(), cpu).describe() == "eager"
    s = speed_settings(parse("--channels-last", "--compile"), cpu)
    assert s.channels_last and s.compile and s.compile_mode == "default"
    s = speed_settings(parse("--compile", "max-autotune-no-cudagraphs"), cpu)
    assert s.compile_mode == "max-autotune-no-cudagraphs" and not s.channels_last
    assert speed_settings(parse("--cuda-graphs"), torch.device("cuda")).cuda_graphs
    assert speed_settings(parse("--prepack"), cpu).describe() == "prepack"
    assert parse().vae_upcast == "auto" and parse().vae_batch is None
    assert parse("--vae-batch", "2").vae_batch == 2


def test_vae_upcast_choices_are_the_pipelines():
    from pilot.diffusion.pipeline import VAE_UPCASTS as PIPELINE

    assert VAE_UPCASTS == PIPELINE


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cuda-graphs", "--device", "cpu"], "--cuda-graphs needs a CUDA device, but the models "
         "would run on cpu"),
        (["--compile", "fast"], "unknown compile mode 'fast'; valid: default, "
         "max-autotune-no-cudagraphs"),
        (["--vae-batch", "0"], "--vae-batch must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_bad_speed_flags_fail_before_any_work(capsys, tmp_path, argv, message):
    out = tmp_path / "out"
    code = main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x", *argv,
                 "--init", str(tmp_path / "missing.png"), "--out", str(out)])  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err  # not the missing model or init image
    assert not out.exists()


def test_channels_last_and_prepack_give_the_default_image(
    capsys,
    tiny_sd_folder,
    controlnet_folder,  # noqa: F811 (the fixture imported above)
    tmp_path,
):
    depth = torch.linspace(0, 1, 32).expand(1, 24, 32)
    write_png(tmp_path / "depth.png", depth)
    base = ["--model", str(tiny_sd_folder), "--prompt", "fog", *FAST, "--out", str(tmp_path),
            "--control", f"depth:{tmp_path / 'depth.png'}:1.0", "--controlnet",
            str(controlnet_folder)]  # fmt: skip
    plain = run(capsys, *base)
    fast = run(capsys, *base, "--channels-last", "--prepack", "--vae-upcast", "always")
    assert fast["speed"] == "channels_last+prepack" and plain["speed"] == "eager"
    a, b = (read_image(s["images"][0]) for s in (plain, fast))
    assert (a - b).abs().max() <= 1 / 255 + 1e-6  # 8-bit PNGs of float-equal images
    params = json.loads(read_png_text(fast["images"][0])["pilot"])
    assert params["vae_upcast"] == "always"
    assert "vae_upcast" not in json.loads(read_png_text(plain["images"][0])["pilot"])


def test_channels_last_floats_within_1e_5():
    """The same generation through `optimize(channels_last)`: float images within 1e-5."""
    from pilot.diffusion.pipeline import Request, SamplingSettings, generate
    from pilot.diffusion.speed import SpeedSettings, optimize
    from tests.conftest import make_tiny_sd

    request = Request(["a wall", "fog"], seeds=[1, 2], width=32, height=24)
    settings = SamplingSettings(sampler="euler", steps=2)
    plain = generate(make_tiny_sd(), request, settings)
    fast = generate(optimize(make_tiny_sd(), SpeedSettings(channels_last=True)), request, settings)
    assert (plain - fast).abs().max() < 1e-5


def test_vae_batch_decodes_by_slices_and_keeps_the_images(
    capsys, tiny_sd_folder, tmp_path, monkeypatch
):
    from pilot.models.vae import AutoencoderKL

    base = ["--model", str(tiny_sd_folder), "--prompt", "fog", *FAST, "--batch", "3"]
    plain = run(capsys, *base, "--out", str(tmp_path / "a"))
    calls = []  # images per VAE decode call
    decode = AutoencoderKL.decode
    monkeypatch.setattr(
        AutoencoderKL, "decode", lambda vae, z: calls.append(len(z)) or decode(vae, z)
    )
    sliced = run(capsys, *base, "--vae-batch", "2", "--out", str(tmp_path / "b"))
    assert calls == [2, 1]
    for a, b in zip(plain["images"], sliced["images"], strict=True):
        assert (read_image(a) - read_image(b)).abs().max() <= 1 / 255 + 1e-6
