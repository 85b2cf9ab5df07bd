"""`pilot generate --from IMAGE.png`: pilot's PNGs made again pixel for pixel, options given win,
A1111 PNGs in pilot's terms, what cannot be taken is a note or a one-line error; `pilot inspect`
of a PNG."""

import json

import numpy as np
import pytest
import torch

from pilot.cli import build_parser, main
from pilot.commands._from_png import apply_png_settings
from pilot.imageio import read_image, read_png_text, write_png
from tests.commands.test_generate import controlnet_folder  # noqa: F401 (a fixture)
from tests.weights.lora_files import random_lora

pytestmark = pytest.mark.usefixtures("one_thread")
BLACK = np.zeros((8, 8, 3), np.uint8)
A1111 = (
    "a castle, (fog:1.2) <lora:ink:0.8>\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 123, Size: 512x768, Model hash: "
    '6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, ENSD: 31337, TI hashes: "EasyNeg: '
    'c74b4e810b03", VAE: vae-ft-mse.safetensors, Hires upscale: 2, Hires steps: 10, '
    "Denoising strength: 0.7, ADetailer model: face_yolov8n.pt, ADetailer confidence: 0.3, Eta: "
    "0.6, Version: v1.6.0"
)


def generate(capsys, *argv) -> tuple[str, dict, list[str]]:
    """Run `pilot generate ARGV --json`; the image written, its pilot JSON and the notes."""
    assert main(["generate", *argv, "--json"]) == 0
    out, err = capsys.readouterr()
    image = json.loads(out)["images"][0]
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    return image, json.loads(read_png_text(image)["pilot"]), notes


def parsed(*argv: str):
    """`pilot generate ARGV` parsed as `pilot.cli.main` parses it, --from applied."""
    argv = ["generate", *argv]
    args = build_parser().parse_args(argv)
    args.argv = argv
    apply_png_settings(args)
    return args


def a1111_png(path, text=A1111):
    write_png(path, BLACK, {"parameters": text})
    return path


def test_a_pilot_png_is_made_again_exactly(
    capsys,
    tiny_sd,
    tiny_sd_folder,
    controlnet_folder,  # noqa: F811 (the fixture imported above)
    tmp_path,
):
    """Every setting that changes pixels away from its default, from the PNG alone; then one
    option given (--seed) changes that one setting only."""
    lora = tmp_path / "style.safetensors"
    from safetensors.torch import save_file

    save_file(random_lora(tiny_sd, "kohya", rank=2, alpha=1.0), lora)
    write_png(tmp_path / "depth.png", torch.linspace(0, 1, 32).expand(1, 24, 32))
    argv = ["--model", str(tiny_sd_folder), "--prompt", "a (red:1.2) wall",
            "--negative-prompt", "fog", "--sampler", "euler_ancestral", "--schedule",
            "exponential", "--steps", "3", "--cfg", "5.5", "--eta", "0.7", "--rescale", "0.3",
            "--clip-skip", "1", "--seed", "5", "--width", "32", "--height", "24",
            "--lora", f"{lora}:0.7", "--control", f"depth:{tmp_path / 'depth.png'}:0.8:0:0.5",
            "--controlnet", str(controlnet_folder)]  # fmt: skip
    a, params, _ = generate(capsys, *argv, "--out", str(tmp_path / "a"))
    b, again, notes = generate(capsys, "--from", a, "--out", str(tmp_path / "b"))
    assert torch.equal(read_image(a), read_image(b))
    assert again == params and read_png_text(b) == read_png_text(a)
    assert notes == []  # nothing left out
    c, other, _ = generate(capsys, "--from", a, "--seed", "6", "--out", str(tmp_path / "c"))
    assert other == {**params, "seed": 6} and c.endswith("-6.png")
    assert not torch.equal(read_image(c), read_image(a))


def test_img2img_needs_the_init_image(capsys, tiny_sd_folder, tmp_path):
    write_png(tmp_path / "init.png", torch.rand(3, 24, 32))
    argv = ["--model", str(tiny_sd_folder), "--prompt", "fog", "--steps", "4", "--sampler",
            "euler", "--init", str(tmp_path / "init.png"), "--strength", "0.5"]  # fmt: skip
    a, params, _ = generate(capsys, *argv, "--out", str(tmp_path / "a"))
    assert main(["generate", "--from", a]) == 2
    assert capsys.readouterr().err == (
        f"pilot generate: error: {a} was made by img2img (from {tmp_path / 'init.png'}, denoising "
        "strength 0.5) and the init image is not in the PNG: pass --init IMAGE\n"
    )
    b, again, _ = generate(capsys, "--from", a, "--init", str(tmp_path / "init.png"), "--out",
                        str(tmp_path / "b"))  # fmt: skip
    assert again == params and torch.equal(read_image(a), read_image(b))


def test_options_given_win_even_at_their_defaults(tmp_path):
    png = tmp_path / "a.png"
    params = {"model": "tiny_sd", "prompt": "fog", "negative_prompt": "rain", "sampler": "euler",
              "schedule": "exponential", "steps": 30, "cfg": 4.0, "seed": 9, "width": 32,
              "height": 24, "clip_skip": 1, "eta": None, "rescale": 0.0}  # fmt: skip
    write_png(png, BLACK, {"pilot": json.dumps(params)})
    args = parsed("--from", str(png), "--steps", "20", "--sampler", "dpmpp_2m", "--prompt", "sun")
    assert (args.steps, args.sampler, args.prompt) == (20, "dpmpp_2m", "sun")  # the defaults
    assert (args.schedule, args.cfg, args.seed, args.width, args.clip_skip) == (
        "exponential", 4.0, 9, 32, 1)  # fmt: skip
    assert args.model == "tiny_sd" and args.negative_prompt == "rain"


def test_an_a1111_png_in_pilots_terms(capsys, tmp_path):
    png = a1111_png(tmp_path / "a1111.png")
    assert main(["generate", "--from", str(png)]) == 2  # no --model: A1111 names no file
    assert capsys.readouterr().err == (
        f"pilot generate: error: --model is required: {png} names its model v1-5-pruned-emaonly "
        "(hash 6ce0161689), not its file\n"
    )
    model = tmp_path / "other.safetensors"
    model.write_bytes(b"another checkpoint")
    with pytest.raises(ValueError, match=r"its prompt uses <lora:ink:0.8>, and a PNG names LoRAs"):
        parsed("--from", str(png), "--model", str(model))
    args = parsed("--from", str(png), "--model", str(model), "--lora", "loras/ink.safetensors",
                  "--steps", "20")  # fmt: skip
    assert args.prompt == "a castle, (fog:1.2)" and args.negative_prompt == "blurry, lowres"
    assert args.lora == ["loras/ink.safetensors:0.8"]  # the tag's scale
    assert (args.sampler, args.schedule, args.cfg, args.seed) == ("dpmpp_2m", "karras", 7.0, 123)
    assert (args.width, args.height, args.clip_skip, args.steps) == (512, 768, 1, 20)
    assert args.eta is None  # dpmpp_2m takes none
    assert args.init is None and args.strength is None  # Denoising strength: Hires fix's
    notes = capsys.readouterr().err.splitlines()
    assert notes == [
        f"note: {png}: ignored, pilot cannot honour them: ENSD, Hires fix, ADetailer, Eta 0.6 "
        "(sampler dpmpp_2m takes none)",
        f"note: {png} was made with the model v1-5-pruned-emaonly (hash 6ce0161689); --model "
        f"{model} has hash {__import__('hashlib').sha256(b'another checkpoint').hexdigest()[:10]}: "
        "the settings are used on another model",
        f"note: {png} uses the textual inversion embeddings EasyNeg (TI hashes): pass --embedding "
        "FILE for each, or their words are read as plain text",
        f"note: {png} was made with the VAE vae-ft-mse.safetensors: pass --vae FILE to use it (the "
        "model's own VAE is used)",
    ]
    old_hash = a1111_png(
        tmp_path / "old.png", "x\nSteps: 2, Seed: 1, Model hash: 925997e9, Model: other"
    )
    parsed("--from", str(old_hash), "--model", str(model))  # A1111 < 1.0's hash: by name
    assert "note" not in capsys.readouterr().err
    args = parsed("--from", str(png), "--model", str(model), "--lora", "a/ink.pt:0.3",
                  "--lora", "b.safetensors", "--sampler", "euler_ancestral")  # fmt: skip
    assert args.lora == ["a/ink.pt:0.3", "b.safetensors"] and args.eta == 0.6
    img2img = a1111_png(tmp_path / "i.png", "x\nSteps: 2, Seed: 1, Denoising strength: 0.4")
    with pytest.raises(ValueError, match=r"made by img2img \(denoising strength 0.4\) and the"):
        parsed("--from", str(img2img), "--model", "m")
    assert parsed("--from", str(img2img), "--model", "m", "--init", "i.png").strength == 0.4


def test_an_a1111_png_makes_an_image(capsys, tiny_sd_folder, tmp_path):
    text = "fog\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 32x24, Model: tiny_sd"
    png = a1111_png(tmp_path / "a.png", text)
    image, params, notes = generate(capsys, "--from", str(png), "--model", str(tiny_sd_folder),
                                    "--out", str(tmp_path / "out"))  # fmt: skip
    assert read_image(image).shape == (3, 24, 32)
    assert (params["sampler"], params["schedule"], params["seed"]) == (
        "euler_ancestral", "linspace", 3)  # fmt: skip
    assert notes == [  # the folder's name is not the PNG's model's
        f"note: {png} was made with the model tiny_sd; --model {tiny_sd_folder} has no A1111 "
        "hash (a folder): the settings are used on another model"
    ]


def test_a_pilot_png_whose_files_are_gone(tmp_path):
    png = tmp_path / "a.png"
    write_png(png, BLACK, {"pilot": json.dumps({"model": str(tmp_path / "gone"), "prompt": "x"})})
    with pytest.raises(ValueError, match=f"{png} records --model {tmp_path / 'gone'}, which is"):
        parsed("--from", str(png))
    write_png(png, BLACK, {"pilot": json.dumps({"model": "tiny_sd", "lora": ["gone.pt:0.5"]})})
    with pytest.raises(ValueError, match=f"{png} records --lora gone.pt:0.5, which is not here"):
        parsed("--from", str(png))


def test_given_loras_take_the_recorded_scales_and_an_inpainting_needs_its_mask(capsys, tmp_path):
    png = tmp_path / "a.png"
    params = {"model": "tiny_sd", "prompt": "x", "lora": ["x/style.safetensors:0.7", "x/d.pt:0.2"],
              "init": "photo.png", "strength": 0.6, "mask": "mask.png"}  # fmt: skip
    write_png(png, BLACK, {"pilot": json.dumps(params)})
    args = parsed("--from", str(png), "--lora", "y/style.safetensors", "--init", "i.png",
                  "--mask", "m.png")  # fmt: skip
    assert args.lora == ["y/style.safetensors:0.7"] and args.strength == 0.6
    assert capsys.readouterr().err == (
        f"note: {png}: its LoRA d (scale 0.2) is left out: no --lora d.* given\n"
    )
    with pytest.raises(ValueError, match=r"was inpainted \(mask mask.png\) and the mask is not"):
        parsed("--from", str(png), "--lora", "y/style.safetensors", "--init", "i.png")


def test_without_from_model_and_prompt_are_required(capsys):
    assert main(["generate", "--prompt", "x"]) == 2
    assert "error: --model is required (or --from IMAGE.png" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny_sd"]) == 2
    assert "error: --prompt is required (or --from IMAGE.png" in capsys.readouterr().err
    assert main(["generate", "--from", "missing.png"]) == 2
    assert "error: missing.png: no such file" in capsys.readouterr().err


def test_inspect_prints_a_pngs_parameters(capsys, tmp_path):
    png = a1111_png(tmp_path / "a.png")
    assert main(["inspect", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parameters"] == A1111 and (out["width"], out["height"]) == (8, 8)
    assert out["generate_from"]["sampler"] == "dpmpp_2m" and out["generate_from"]["seed"] == 123
    assert out["named_only"]["lora"] == ["ink:0.8"] and "ENSD" in out["ignored"]
    assert out["use_with"] == f"pilot generate --from {png} --model MODEL --lora FILE"
    pilot = tmp_path / "p.png"
    write_png(pilot, BLACK, {"parameters": "x\nSteps: 2, Seed: 1, Size: 8x8",
                             "pilot": json.dumps({"prompt": "x", "seed": 1})})  # fmt: skip
    assert main(["inspect", str(pilot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pilot"] == {"prompt": "x", "seed": 1} and out["use_with"].endswith(f"{pilot}")
    (tmp_path / "plain.png").write_bytes(b"")
    assert main(["inspect", str(tmp_path / "plain.png")]) == 2
    assert "plain.png: not a readable PNG" in capsys.readouterr().err
