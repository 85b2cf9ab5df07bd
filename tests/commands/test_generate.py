"""`pilot generate`: one tiny run of each mode, PNG parameters, JSON summary, bad input."""

import json
import re
from pathlib import Path

import pytest
import torch

from pilot.cli import main
from pilot.commands._a1111 import a1111_parameters
from pilot.imageio import read_image, read_png_text, write_png
from tests.conftest import plant_temps

FAST = ["--steps", "2", "--width", "32", "--height", "24", "--sampler", "euler"]


def run(capsys, *argv) -> dict:
    assert main(["generate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_txt2img_writes_pngs_with_parameters(capsys, tiny_sd_folder, tmp_path):
    out = tmp_path / "out"
    stale = plant_temps(out / "00004-1.png")  # a kill -9 cut a write
    writing = plant_temps(out / "00005-2.png", age=0)  # another run is writing this one now
    args = ["--model", str(tiny_sd_folder), "--prompt", "a (red:1.2) wall", *FAST]
    summary = run(capsys, *args, "--negative-prompt", "fog", "--seed", "7", "--batch", "2",
                  "--out", str(out))  # fmt: skip
    paths = summary["images"]
    assert [p.rsplit("/", 1)[1] for p in paths] == ["00000-7.png", "00001-8.png"]
    assert not stale[0].exists() and writing[0].exists()
    assert read_image(paths[0]).shape == (3, 24, 32)
    text = read_png_text(paths[1])
    assert text["parameters"].startswith("a (red:1.2) wall\nNegative prompt: fog\nSteps: 2,")
    assert "Seed: 8" in text["parameters"] and "Size: 32x24" in text["parameters"]
    params = json.loads(text["pilot"])
    assert params["seed"] == 8 and params["sampler"] == "euler" and params["cfg"] == 7.5
    assert not {"prediction_type", "vae_tile", "dtype"} & set(params)  # defaults left out
    # Running again numbers after the existing files; seed 7 alone makes the same image (up to
    # a rounding step: batch size changes float rounding in the convolutions).
    again = run(capsys, *args, "--negative-prompt", "fog", "--seed", "7", "--out", str(out))
    assert again["images"][0].endswith("00002-7.png")
    diff = read_image(again["images"][0]) - read_image(paths[0])
    assert diff.abs().max() <= 1 / 255 + 1e-6


def test_seed_minus_one_draws_a_seed_it_records(capsys, tiny_sd_folder, tmp_path):
    out = tmp_path / "out"
    args = ["--model", str(tiny_sd_folder), "--prompt", "fog", *FAST, "--out", str(out)]
    assert main(["generate", *args, "--seed", "-1", "--batch", "2", "--json"]) == 0
    captured = capsys.readouterr()
    seed = int(re.search(r"--seed -1: drew seed (\d+)", captured.err).group(1))
    paths = json.loads(captured.out)["images"]
    assert [p.rsplit("/", 1)[1] for p in paths] == [f"00000-{seed}.png", f"00001-{seed + 1}.png"]
    assert json.loads(read_png_text(paths[0])["pilot"])["seed"] == seed
    again = run(capsys, *args, "--seed", str(seed))  # the recorded seed makes the same image
    assert (read_image(again["images"][0]) - read_image(paths[0])).abs().max() <= 1 / 255 + 1e-6


def test_img2img_and_inpainting(capsys, tiny_sd_folder, tmp_path):
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    write_png(init, torch.rand(3, 24, 32))
    m = torch.zeros(1, 24, 32)
    m[:, 8:16, 8:24] = 1
    write_png(mask, m)
    base = ["--model", str(tiny_sd_folder), "--prompt", "fog", "--steps", "4", "--out",
            str(tmp_path / "out")]  # fmt: skip
    summary = run(capsys, *base, "--init", str(init), "--strength", "0.5")
    assert summary["parameters"]["strength"] == 0.5 and summary["parameters"]["width"] == 32
    summary = run(capsys, *base, "--init", str(init), "--mask", str(mask), "--width", "16",
                  "--height", "16")  # fmt: skip
    assert read_image(summary["images"][0]).shape == (3, 16, 16)


def test_png_records_the_options_that_change_pixels(capsys, tiny_sd_folder, tmp_path):
    argv = ["--model", str(tiny_sd_folder), "--prompt", "fog", *FAST, "--out", str(tmp_path)]
    # --vae-tile 30: a multiple of the tiny VAE's factor 2, not of SD's 8
    options = ["--prediction-type", "v_prediction", "--vae-tile", "30", "--dtype", "float32"]
    summary = run(capsys, *argv, *options)
    params = json.loads(read_png_text(summary["images"][0])["pilot"])
    assert params["prediction_type"] == "v_prediction"
    assert params["vae_tile"] == 30 and params["dtype"] == "float32"


def test_sizes_follow_the_models_vae_factor_not_sds(capsys, tiny_sd, tiny_sd_folder, tmp_path):
    # The tiny VAE downsamples 2x: 30x26 is valid for it, though not a multiple of SD's 8.
    argv = ["--model", str(tiny_sd_folder), "--prompt", "fog", *FAST, "--out", str(tmp_path)]
    summary = run(capsys, *argv, "--width", "30", "--height", "26")
    assert read_image(summary["images"][0]).shape == (3, 26, 30)
    write_png(tmp_path / "odd.png", torch.rand(3, 24, 31))  # an init's own size is checked too
    init = ["--model", str(tiny_sd_folder), "--prompt", "fog", "--init", str(tmp_path / "odd.png")]
    assert main(["generate", *init]) == 2
    err = capsys.readouterr().err
    assert (
        f"--init {tmp_path / 'odd.png'} width 31 is not a multiple of 2, the VAE factor of" in err
    )
    assert "pass --width/--height to resize it" in err
    # without a size: the model's own, the UNet's sample_size (32 latents) x the VAE factor
    # (not 512: 256x256 latents through the tiny UNet's attention take minutes on a CPU)
    from pilot.commands.generate import native_size

    assert native_size(tiny_sd) == 64
    summary = run(capsys, "--model", str(tiny_sd_folder), "--prompt", "fog", "--steps", "1",
                  "--out", str(tmp_path))  # fmt: skip
    assert read_image(summary["images"][0]).shape == (3, 64, 64)
    assert "Size: 64x64" in read_png_text(summary["images"][0])["parameters"]
    # the packaged tiny SD's VAE downsamples 8x: the error names its factor and the model
    assert main(["generate", "--model", "tiny_sd", "--prompt", "fog", "--width", "60"]) == 2
    err = capsys.readouterr().err
    assert "--width 60 is not a multiple of 8, the VAE factor of tiny_sd" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sampler", "eulr"], "unknown sampler 'eulr'; valid: ddim, euler"),
        (["--schedule", "cos"], "unknown schedule 'cos'; valid:"),
        (["--width", "31"], "--width 31 is not a multiple of 2, the VAE factor of "),
        (["--height", "25"], "--height 25 is not a multiple of 2, the VAE factor of "),
        (["--mask", "m.png"], "--mask needs --init"),
        (["--init", "missing.png"], "missing.png: no such image file"),
        (["--batch", "0"], "--batch must be >= 1"),
        (["--rescale", "2"], "rescale must be in [0, 1], got 2.0"),
        (["--clip-skip", "-1"], "clip_skip must be >= 0 (0: the last layer), got -1"),
        (["--clip-skip", "3"], "--clip-skip 3: the text encoder of "),
        (["--width", "0"], "--width must be a positive number of pixels, got 0"),
        (["--height", "0"], "--height must be a positive number of pixels, got 0"),
        (["--height", "-8"], "--height must be a positive number of pixels, got -8"),
        (
            ["--vae-tile", "7"],
            "--vae-tile: VAE tile 7: must be a positive multiple of the VAE factor 2",
        ),
        (["--vae-tile", "-8"], "--vae-tile: VAE tile -8: must be positive"),
        (["--strength", "0.5"], "--strength 0.5 needs --init (img2img); txt2img"),
        (["--init", "missing.png", "--strength", "7"], "--strength must be in [0, 1], got 7.0"),
        (["--eta", "0.5"], "sampler 'euler' takes no eta (got eta=0.5); samplers with eta: ddim"),
    ],
)
def test_bad_input_is_a_clear_error(capsys, tiny_sd_folder, argv, message):
    code = main(["generate", "--model", str(tiny_sd_folder), "--prompt", "x", *FAST, *argv])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "device, message",
    [
        ("foo", "--device 'foo' is not a torch device (cpu, cuda, cuda:N, ...)"),
        ("cuda", "--device cuda: torch sees no CUDA device here"),
        ("cuda:1", "--device cuda:1: torch sees no CUDA device here"),
    ],
)
def test_a_device_this_machine_lacks_fails_before_loading(capsys, monkeypatch, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--model", "no-such-model", "--prompt", "x", *FAST, "--device", device]
    assert main(["generate", *argv]) == 2
    assert f"pilot generate: error: {message}" in capsys.readouterr().err


def test_empty_model_folder_is_a_clear_error(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["generate", "--model", str(tmp_path / "empty"), "--prompt", "x"]) == 2
    assert "empty" in capsys.readouterr().err


@pytest.fixture(scope="module")
def controlnet_folder(tiny_sd, tmp_path_factory):
    """A tiny ControlNet for the tiny model (hint encoder /2 like its VAE), zero convs perturbed."""
    from pilot.models.controlnet import ControlNet
    from pilot.weights.save import save_controlnet

    net = ControlNet.from_unet(tiny_sd.unet, hint_channels=(16, 32))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "zero" in name or "controlnet_" in name or "conv_out" in name:
                p.copy_(torch.randn_like(p) * 0.2)
    return save_controlnet(net, tmp_path_factory.mktemp("cn") / "tiny-depth")


def test_controlnet_steers_the_image(capsys, tiny_sd_folder, controlnet_folder, tmp_path):
    depth = torch.linspace(0, 1, 32).expand(1, 24, 32)
    write_png(tmp_path / "depth.png", depth)
    base = ["--model", str(tiny_sd_folder), "--prompt", "fog", *FAST, "--out", str(tmp_path)]
    plain = run(capsys, *base)
    control = ["--control", f"depth:{tmp_path / 'depth.png'}:1.0", "--controlnet",
               str(controlnet_folder)]  # fmt: skip
    steered = run(capsys, *base, *control)
    off = run(capsys, *base, "--control", f"depth:{tmp_path / 'depth.png'}:0.0",
              "--controlnet", f"depth={controlnet_folder}")  # fmt: skip
    image = {
        k: read_image(v["images"][0]) for k, v in dict(plain=plain, on=steered, off=off).items()
    }
    assert torch.equal(image["off"], image["plain"])
    assert (image["on"] - image["plain"]).abs().mean() > 1e-3
    assert steered["parameters"]["control"] == [f"depth:{tmp_path / 'depth.png'}:1.0"]
    assert read_png_text(steered["images"][0])["parameters"].endswith(
        ', ControlNet 0: "Module: depth, Model: tiny-depth, Weight: 1, Resize Mode: Just Resize, '
        'Guidance Start: 0, Guidance End: 1"'
    )


def test_a1111_parameters_name_each_controlnet():
    """As A1111's ControlNet extension writes them, one quoted entry per control."""
    params = {"prompt": "p", "negative_prompt": "", "steps": 2, "sampler": "euler",
              "schedule": "karras", "cfg": 7.5, "width": 64, "height": 64, "model": "m",
              "clip_skip": 0, "control": ["depth+invert:a.png:0.8:0:0.6", "canny:b.png"],
              "controlnet": ["canny=cn/control_v11p_sd15_canny.safetensors",
                             "depth=lllyasviel/control_v11f1p_sd15_depth"],
              "guess_mode": True}  # fmt: skip
    line = a1111_parameters(params, seed=3).splitlines()[-1]
    assert line.endswith(
        'Model: m, ControlNet 0: "Module: depth+invert, Model: control_v11f1p_sd15_depth, '
        "Weight: 0.8, Resize Mode: Just Resize, Guidance Start: 0, Guidance End: 0.6, Guess "
        'Mode: True", ControlNet 1: "Module: canny, Model: control_v11p_sd15_canny, Weight: 1, '
        'Resize Mode: Just Resize, Guidance Start: 0, Guidance End: 1, Guess Mode: True"'
    )
    assert "ControlNet" not in a1111_parameters({**params, "control": []}, seed=3)


def test_blenders_zip_depth_pass_steers_the_image(
    capsys, tiny_sd_folder, controlnet_folder, tmp_path
):
    """`--control depth:z.exr`: a ZIP-compressed multilayer render's Z pass (metres, sky 1e10)
    steers as its near-white control image does."""
    exr = Path(__file__).parents[1] / "scenes" / "data" / "blender_zip.exr"
    base = ["--model", str(tiny_sd_folder), "--prompt", "fog", *FAST, "--out", str(tmp_path)]
    cn = ["--controlnet", str(controlnet_folder)]
    plain = run(capsys, *base)
    steered = run(capsys, *base, "--control", f"depth:{exr}", *cn)
    assert main(["control", f"depth:{exr}", "--out", str(tmp_path / "c.png"), "--width", "32",
                 "--height", "24"]) == 0  # fmt: skip
    capsys.readouterr()
    from_png = run(capsys, *base, "--control", f"depth:{tmp_path / 'c.png'}", *cn)
    image = {k: read_image(v["images"][0]) for k, v in dict(p=plain, e=steered, c=from_png).items()}
    assert (image["e"] - image["p"]).abs().mean() > 1e-3
    assert (image["e"] - image["c"]).abs().mean() < 0.1 * (image["e"] - image["p"]).abs().mean()


def test_a_controlnet_of_another_family_is_named(capsys, tiny_sd, tmp_path, tiny_sd_folder):
    from dataclasses import replace

    from pilot.models.controlnet import ControlNet
    from pilot.models.unet import UNet
    from pilot.weights.save import save_controlnet

    unet = UNet(replace(tiny_sd.unet.cfg, cross_attention_dim=64))
    folder = save_controlnet(ControlNet.from_unet(unet, hint_channels=(16, 32)), tmp_path / "cn")
    write_png(tmp_path / "depth.png", torch.rand(1, 24, 32))
    argv = ["--model", str(tiny_sd_folder), "--prompt", "x", *FAST, "--out", str(tmp_path / "o")]
    control = ["--control", f"depth:{tmp_path / 'depth.png'}", "--controlnet", str(folder)]
    assert main(["generate", *argv, *control]) == 2
    err = capsys.readouterr().err
    assert f"ControlNet {folder} does not fit the model: cross_attention_dim: Control" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--controlnet", "x"], "--controlnet needs at least one --control"),
        (["--control", "depth:d.png", "--controlnet", "canny=x"], "kinds ['depth'] have no"),
        (["--control", "dept:d.png", "--controlnet", "x"], "unknown control kind 'dept'"),
        (
            [
                "--control",
                "depth:d.png",
                "--control",
                "canny:d.png",
                "--controlnet",
                "a",
                "--controlnet",
                "b",
                "--controlnet",
                "c",
            ],
            "2 --control but 3 --controlnet",
        ),  # fmt: skip
    ],
)
def test_bad_control_arguments(capsys, tiny_sd_folder, argv, message):
    code = main(["generate", "--model", str(tiny_sd_folder), "--prompt", "x", *FAST, *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_near_black_depth_with_invert_steers_as_the_near_white_one(
    capsys, tiny_sd_folder, controlnet_folder, tmp_path
):
    """`depth+invert:` reads Blender's near-black depth; a picture of another aspect is
    stretched with a one-line note naming it and both sizes."""
    near_white = torch.linspace(1, 0, 32).expand(1, 24, 32)
    write_png(tmp_path / "white.png", near_white)
    write_png(tmp_path / "black.png", 1 - near_white)
    base = ["--model", str(tiny_sd_folder), "--prompt", "fog", *FAST, "--out", str(tmp_path)]
    cn = ["--controlnet", str(controlnet_folder)]
    white = run(capsys, *base, "--control", f"depth:{tmp_path / 'white.png'}", *cn)
    black = run(capsys, *base, "--control", f"depth+invert:{tmp_path / 'black.png'}", *cn)
    plain = run(capsys, *base, "--control", f"depth:{tmp_path / 'black.png'}", *cn)
    image = {k: read_image(v["images"][0]) for k, v in dict(w=white, b=black, p=plain).items()}
    assert (image["b"] - image["w"]).abs().max() <= 1 / 255 + 1e-6
    assert (image["p"] - image["w"]).abs().mean() > 1e-3
    assert black["parameters"]["control"] == [f"depth+invert:{tmp_path / 'black.png'}"]
    control = ["--control", f"depth:{tmp_path / 'white.png'}", *cn]
    assert main(["generate", *base, "--width", "32", "--height", "32", *control]) == 0
    note = f"note: --control depth:{tmp_path / 'white.png'}: {tmp_path / 'white.png'} is 32x24"
    assert note in capsys.readouterr().err


def test_a_one_channel_controlnet_gets_the_grey_picture(capsys, tiny_sd, tiny_sd_folder, tmp_path):
    """conditioning_channels=1 (diffusers allows any): the picture's luma, not a shape error."""
    from pilot.models.controlnet import ControlNet
    from pilot.weights.save import save_controlnet

    net = ControlNet.from_unet(tiny_sd.unet, hint_channels=(16, 32), conditioning_channels=1)
    folder = save_controlnet(net, tmp_path / "cn1")
    write_png(tmp_path / "depth.png", torch.rand(3, 24, 32))
    argv = ["--model", str(tiny_sd_folder), "--prompt", "x", *FAST, "--out", str(tmp_path / "o")]
    summary = run(capsys, *argv, "--control", f"depth:{tmp_path / 'depth.png'}", "--controlnet",
                  str(folder))  # fmt: skip
    assert len(summary["images"]) == 1


def save_preview(folder, upsamples: int, latent_channels: int = 4, teacher_vae=None):
    """A random `PreviewDecoder` folder for a VAE of factor 2 ** upsamples."""
    from pilot.models.preview import PreviewConfig, PreviewDecoder
    from pilot.weights.save import save_preview_decoder

    torch.manual_seed(0)
    cfg = PreviewConfig(latent_channels=latent_channels, channels=8, upsamples=upsamples, blocks=1)
    decoder = PreviewDecoder(cfg).eval()
    decoder.teacher_vae = teacher_vae
    return save_preview_decoder(decoder, folder)


def test_a_preview_decoder_of_another_vae_warns(capsys, tiny_sd_folder, tmp_path):
    """Same shape, other weights: a warning naming the folder and both VAEs, and the run goes on
    (a fine-tuned VAE may still be close)."""
    preview = save_preview(tmp_path / "preview", upsamples=1, teacher_vae="0123456789abcdef")
    argv = ["--model", str(tiny_sd_folder), "--prompt", "fog", *FAST, "--out", str(tmp_path)]
    match = r"preview: preview decoder distilled from the VAE with fingerprint 0123456789abcdef"
    with pytest.warns(UserWarning, match=match):
        summary = run(capsys, *argv, "--preview-decoder", str(preview))
    assert len(summary["images"]) == 1


def test_preview_decoder_decodes_the_images(capsys, tiny_sd_folder, tmp_path, monkeypatch):
    """--preview-decoder: the images are the preview decoder's (the VAE's decoder never runs),
    and the PNG records the folder."""
    from pilot.diffusion.pipeline import Request, SamplingSettings, generate_latents
    from pilot.models.preview import PreviewDecoder, load_preview_decoder
    from pilot.models.vae import AutoencoderKL

    preview = save_preview(tmp_path / "preview", upsamples=1)  # the tiny VAE's factor 2
    monkeypatch.setattr(AutoencoderKL, "decode", lambda *a: pytest.fail("the VAE decoded"))
    calls = []
    decode = PreviewDecoder.decode
    monkeypatch.setattr(PreviewDecoder, "decode", lambda m, z: calls.append(len(z)) or decode(m, z))
    argv = ["--model", str(tiny_sd_folder), "--prompt", "fog", *FAST, "--seed", "4"]
    summary = run(capsys, *argv, "--preview-decoder", str(preview), "--out", str(tmp_path))
    assert calls == [1]
    params = json.loads(read_png_text(summary["images"][0])["pilot"])
    assert params["preview_decoder"] == str(preview)
    import pilot

    sd = pilot.load_pipeline(tiny_sd_folder)
    request = Request(["fog"], seeds=[4], width=32, height=24)
    latents = generate_latents(sd, request, SamplingSettings(sampler="euler", steps=2))
    images = load_preview_decoder(preview).decode(latents / sd.scaling_factor) / 2 + 0.5
    image = read_image(summary["images"][0])
    assert (image - images[0].clamp(0, 1)).abs().max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize(
    "upsamples, channels, message",
    [
        (1, 3, "preview decoder latent_channels 3, but the model's VAE has 4"),
        (2, 4, "preview decoder downsample_factor 4, but the model's VAE has 2"),
    ],
)
def test_preview_decoder_of_another_vae_is_named(
    capsys, tiny_sd_folder, tmp_path, upsamples, channels, message
):
    preview = save_preview(tmp_path / "preview", upsamples, channels)
    argv = ["--model", str(tiny_sd_folder), "--prompt", "x", *FAST, "--out", str(tmp_path / "o")]
    assert main(["generate", *argv, "--preview-decoder", str(preview)]) == 2
    assert f"{preview}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_preview_decoder_fails_before_the_model_loads(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    argv = ["--model", str(tmp_path / "no-model"), "--prompt", "x", "--preview-decoder"]
    assert main(["generate", *argv, str(missing)]) == 2
    assert f"{missing / 'config.json'}: no such file" in capsys.readouterr().err


def test_a_lora_is_merged_and_recorded(capsys, tiny_sd, tiny_sd_folder, tmp_path):
    from pilot.weights.io import save_state_dict
    from tests.weights.lora_files import random_lora

    lora = tmp_path / "style.safetensors"
    save_state_dict(random_lora(tiny_sd, "kohya", rank=4, alpha=8.0), lora)
    argv = ["--model", str(tiny_sd_folder), "--prompt", "fog", *FAST, "--out", str(tmp_path)]
    plain = run(capsys, *argv)["images"][0]
    off = run(capsys, *argv, "--lora", f"{lora}:0")["images"][0]
    styled = run(capsys, *argv, "--lora", str(lora), "--lora", f"{lora}:-0.5")["images"][0]
    assert torch.equal(read_image(off), read_image(plain))  # scale 0 changes no weight
    assert (read_image(styled) - read_image(plain)).abs().max() > 0.05
    assert "lora" not in json.loads(read_png_text(plain)["pilot"])
    assert json.loads(read_png_text(styled)["pilot"])["lora"] == [f"{lora}:1.0", f"{lora}:-0.5"]


def test_a_lora_that_does_not_fit_is_one_line(capsys, tiny_sd_folder, tmp_path):
    from pilot.weights.io import save_state_dict

    lora = tmp_path / "sd15.safetensors"
    name = "lora_unet_down_blocks_3_resnets_0_conv1"  # SD 1.5 has four blocks, tiny two
    save_state_dict({f"{name}.lora_down.weight": torch.zeros(2, 8),
                     f"{name}.lora_up.weight": torch.zeros(8, 2)}, lora)  # fmt: skip
    argv = ["generate", "--model", str(tiny_sd_folder), "--prompt", "x", *FAST]
    assert main([*argv, "--lora", f"{lora}:0.8"]) == 2
    assert capsys.readouterr().err == (
        f"pilot generate: error: --lora {lora}: 1 of its 1 LoRA modules are not in this "
        f"pipeline: {name}\n"
    )
    assert main([*argv, "--lora", "missing.safetensors:0.5"]) == 2
    assert "error: --lora missing.safetensors: does not exist" in capsys.readouterr().err


def test_lora_entries_parse_file_and_scale():
    from pilot.commands._lora import lora_settings, parse_lora

    assert parse_lora("a.safetensors:0.5") == ("a.safetensors", 0.5)
    assert parse_lora("a.safetensors") == ("a.safetensors", 1.0)
    assert parse_lora(r"C:\loras\a.safetensors") == (r"C:\loras\a.safetensors", 1.0)
    assert parse_lora("C:/a.safetensors:-1") == ("C:/a.safetensors", -1.0)
    assert lora_settings(["a.safetensors", "b.pt:2"]) == ["a.safetensors:1.0", "b.pt:2.0"]
    with pytest.raises(ValueError, match="--lora a.safetensors:nan: scale nan must be a finite"):
        parse_lora("a.safetensors:nan")
