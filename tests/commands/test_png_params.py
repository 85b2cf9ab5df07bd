"""Reading generation parameters back: A1111's `parameters` text as A1111 writes it (written
here by hand from its format), its sampler names in pilot's terms, pilot's JSON, bad files."""

import json

import numpy as np
import pytest
from PIL import Image

from pilot.commands._png_params import (
    a1111_sampler,
    parse_a1111,
    read_png_settings,
    settings_from_a1111,
    settings_from_pilot,
)
from pilot.imageio import write_png

BLACK = np.zeros((8, 8, 3), np.uint8)

# A1111 1.6: old sampler name with its schedule, LoRA tag in the prompt, multi-line negative
# prompt, quoted hash lists.
A1111_16 = """masterpiece, best quality, 1girl, (red hair:1.2), <lora:add_detail:0.6>, looking at viewer
Negative prompt: (worst quality, low quality:1.4), EasyNegative,
bad hands
Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, ENSD: 31337, Lora hashes: "add_detail: 7c6bad76eb54", TI hashes: "EasyNegative: c74b4e810b03", Version: v1.6.0"""  # noqa: E501

# A1111 1.9: schedule type on its own, Hires fix (its Denoising strength is the upscale's),
# ADetailer, a VAE, a ControlNet unit whose quoted value holds commas and colons.
A1111_19 = """a photo of a cat on a windowsill, golden hour
Negative prompt: blurry
Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 42, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.7, ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1, Resize Mode: Crop and Resize, Low Vram: False, Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced", Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, ADetailer model: face_yolov8n.pt, ADetailer confidence: 0.3, ADetailer version: 24.1.2, Version: v1.9.4"""  # noqa: E501

# A1111 img2img (inpainting): Denoising strength without Hires; no negative prompt.
A1111_IMG2IMG = """portrait of an old sailor, oil painting
Steps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 7, Size: 768x512, Model hash: 0123456789, Model: dreamshaper_8, Denoising strength: 0.55, Mask blur: 4, Version: v1.4.0"""  # noqa: E501


def test_a1111_text_splits_as_a1111_splits_it():
    text = parse_a1111(A1111_16)
    assert text.prompt.startswith("masterpiece, best quality") and "<lora:" in text.prompt
    assert text.negative_prompt == "(worst quality, low quality:1.4), EasyNegative,\nbad hands"
    assert text.fields["Sampler"] == "DPM++ 2M Karras"
    assert text.fields["Size"] == "512x768"
    assert text.fields["Lora hashes"] == "add_detail: 7c6bad76eb54"  # unquoted
    assert list(text.fields)[-1] == "Version"
    cn = parse_a1111(A1111_19).fields["ControlNet 0"]
    assert cn.startswith("Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1")
    assert parse_a1111(A1111_19).fields["Hires upscaler"] == "Latent"
    # A last line of fewer than three fields is prompt; a JSON object value stays whole.
    assert parse_a1111("a: b\nc: d, e: f").prompt == "a: b\nc: d, e: f"
    hashes = parse_a1111('x\nSteps: 2, Hashes: {"model": "abc", "vae": "d,e"}, Seed: 3')
    assert hashes.fields == {"Steps": "2", "Hashes": '{"model": "abc", "vae": "d,e"}', "Seed": "3"}
    assert parse_a1111("Steps: 2, Seed: 3, Size: 8x8").prompt == ""  # settings only


def test_a1111_16_in_pilots_terms():
    settings = settings_from_a1111(parse_a1111(A1111_16))
    assert settings.values == {
        "prompt": "masterpiece, best quality, 1girl, (red hair:1.2), , looking at viewer",
        "negative_prompt": "(worst quality, low quality:1.4), EasyNegative,\nbad hands",
        "steps": 28,
        "cfg": 7.0,
        "seed": 1234567890,
        "width": 512,
        "height": 768,
        "clip_skip": 1,  # A1111's 2: the last layer skipped
        "sampler": "dpmpp_2m",
        "schedule": "karras",
    }
    assert settings.loras == [("add_detail", 0.6)]
    assert settings.embeddings == ["EasyNegative"]
    assert (settings.model, settings.model_hash) == ("v1-5-pruned-emaonly", "6ce0161689")
    assert not settings.img2img
    assert settings.ignored == ["ENSD"]


def test_a1111_19_lists_what_pilot_cannot_honour():
    settings = settings_from_a1111(parse_a1111(A1111_19))
    assert (settings.values["sampler"], settings.values["schedule"]) == ("dpmpp_2m", "karras")
    assert settings.values["cfg"] == 6.5
    assert not settings.img2img  # Denoising strength: Hires fix's
    assert settings.vae == "vae-ft-mse-840000-ema-pruned.safetensors"
    assert settings.ignored[0].startswith("ControlNet 0 (its control image is not in the PNG")
    assert settings.ignored[1:] == ["Hires upscale", "Hires steps", "Hires upscaler",
                                    "ADetailer model", "ADetailer confidence",
                                    "ADetailer version"]  # fmt: skip


def test_a1111_img2img():
    settings = settings_from_a1111(parse_a1111(A1111_IMG2IMG))
    assert settings.img2img and settings.strength == 0.55
    assert settings.values["sampler"] == "euler_ancestral"
    assert settings.values["schedule"] == "linspace"  # A1111 < 1.9: the model's timesteps
    assert settings.values["negative_prompt"] == ""
    assert settings.ignored == ["Mask blur"]


@pytest.mark.parametrize(
    "sampler, schedule, expected",
    [
        ("Euler a", None, ("euler_ancestral", "linspace")),
        ("Euler", "Automatic", ("euler", "linspace")),
        ("DPM++ 2M Karras", None, ("dpmpp_2m", "karras")),
        ("DPM++ 2M", None, ("dpmpp_2m", "linspace")),  # before 1.9: the model's timesteps
        ("DPM++ 2M", "Automatic", ("dpmpp_2m", "karras")),  # 1.9: its default
        ("DPM++ 2M", "Uniform", ("dpmpp_2m", "linspace")),
        ("DPM++ 2M SDE", None, ("dpmpp_2m_sde", "linspace")),
        ("DPM++ 2M SDE", "Automatic", ("dpmpp_2m_sde", "exponential")),
        ("DPM++ 2M SDE Karras", None, ("dpmpp_2m_sde", "karras")),
        ("DPM++ 2M SDE Exponential", None, ("dpmpp_2m_sde", "exponential")),
        ("DPM++ SDE", "Karras", ("dpmpp_sde", "karras")),
        ("DPM++ SDE Karras", None, ("dpmpp_sde", "karras")),
        ("DDIM", None, ("ddim", "leading")),
        ("DDIM", "Karras", ("ddim", "leading")),  # A1111's DDIM keeps its timesteps
        ("LCM", "Automatic", ("lcm", "linspace")),
        ("Heun", "Exponential", ("heun", "exponential")),
        ("UniPC", None, (None, None)),
        ("DPM++ 2S a Karras", None, (None, "karras")),
        ("Euler", "Align Your Steps", ("euler", None)),
        ("dpmpp_2m", "karras", ("dpmpp_2m", "karras")),  # pilot's own text
        ("ddim", "trailing", ("ddim", "trailing")),  # pilot's ddim, not A1111's DDIM
    ],
)
def test_a1111_sampler_names_in_pilots_terms(sampler, schedule, expected):
    assert a1111_sampler(sampler, schedule) == expected


def test_unknown_samplers_and_schedules_are_ignored_with_the_reason():
    text = parse_a1111("x\nSteps: 4, Sampler: UniPC, Schedule type: SGM Uniform, Seed: 1")
    settings = settings_from_a1111(text)
    assert "sampler" not in settings.values and "schedule" not in settings.values
    assert settings.ignored == [
        "Sampler: UniPC (pilot has no such sampler)",
        "Schedule type: SGM Uniform (pilot has no such schedule)",
    ]
    text = parse_a1111("x\nSteps: 4, Sampler: Euler, Schedule type: Align Your Steps, Seed: 1")
    settings = settings_from_a1111(text)
    assert settings.values["sampler"] == "euler" and "schedule" not in settings.values


def test_lora_tags_leave_the_prompt():
    text = parse_a1111(
        "fog <lora:ink:0.8> <lora:de tail> <lora:split:0.5:0.2> <hypernet:old:1>\n"
        "Steps: 2, Seed: 3, Size: 8x8"
    )
    settings = settings_from_a1111(text)
    assert settings.values["prompt"] == "fog"
    assert settings.loras == [("ink", 0.8), ("de tail", 1.0), ("split", 0.5)]
    assert settings.ignored == [
        "<lora:split:0.5:0.2> (its scales after the first)",
        "<hypernet:old:1> (pilot merges LoRAs with one scale: --lora)",
    ]


def test_pilots_own_a1111_text_reads_back():
    """The A1111 text pilot writes (as an image site keeps it, pilot's JSON dropped)."""
    from pilot.commands._a1111 import ExtraNetworks, a1111_parameters

    params = {"prompt": "fog", "negative_prompt": "rain", "steps": 3, "sampler": "euler_ancestral",
              "schedule": "exponential", "cfg": 5.5, "width": 32, "height": 24, "model": "tiny_sd",
              "clip_skip": 1, "strength": 0.5}  # fmt: skip
    networks = ExtraNetworks(loras=(("style", 0.7, "aaaaaaaaaaaa"),))
    settings = settings_from_a1111(parse_a1111(a1111_parameters(params, 9, networks)))
    assert settings.values == {"prompt": "fog", "negative_prompt": "rain", "steps": 3, "cfg": 5.5,
                               "seed": 9, "width": 32, "height": 24, "clip_skip": 1,
                               "sampler": "euler_ancestral", "schedule": "exponential"}  # fmt: skip
    assert settings.loras == [("style", 0.7)] and settings.strength == 0.5
    assert settings.model == "tiny_sd" and settings.ignored == []


@pytest.mark.parametrize(
    "line, message",
    [
        ("Steps: many, Seed: 1, Size: 8x8", "Steps: 'many' is not a whole number"),
        ("Steps: 2, Seed: 1, Size: 8 by 8", "Size: '8 by 8' is not WIDTHxHEIGHT"),
        ("Steps: 2, Seed: 1, CFG scale: high", "CFG scale: 'high' is not a number"),
    ],
)
def test_a_bad_value_names_the_file_and_key(tmp_path, line, message):
    path = tmp_path / "bad.png"
    write_png(path, BLACK, {"parameters": f"x\n{line}"})
    with pytest.raises(ValueError, match=f"^{path}: {message}"):
        read_png_settings(path)


def test_pilot_json_wins_and_is_checked(tmp_path):
    path = tmp_path / "a.png"
    params = {"model": "m", "prompt": "fog", "steps": 3, "seed": 4, "lora": ["a.pt:0.5"],
              "init": "i.png", "strength": 0.25, "batch": 1, "quantize": True,
              "future": 1}  # fmt: skip
    a1111 = "other\nSteps: 9, Seed: 9, Size: 8x8, Model hash: 0123456789, Model: m"
    write_png(path, BLACK,
              {"parameters": a1111, "pilot": json.dumps(params)})  # fmt: skip
    settings = read_png_settings(path)
    assert settings.source == "pilot"
    assert settings.values == {"model": "m", "prompt": "fog", "steps": 3, "seed": 4,
                               "lora": ["a.pt:0.5"]}  # fmt: skip
    assert (settings.img2img, settings.strength, settings.init) == (True, 0.25, "i.png")
    assert settings.model_hash == "0123456789"  # from the A1111 text, for the model note
    assert settings.ignored == [
        "future (not a `pilot generate` option)",
        "quantize (pilot.diffusion.pipeline's, no option of the command)",
    ]
    with pytest.raises(ValueError, match="pilot JSON: steps: '3' is not int"):
        settings_from_pilot({"steps": "3"})
    with pytest.raises(ValueError, match="pilot JSON: steps: True is not int"):
        settings_from_pilot({"steps": True})


def test_files_without_parameters_are_one_line_errors(tmp_path):
    plain, jpeg, text = tmp_path / "plain.png", tmp_path / "photo.jpg", tmp_path / "notes.png"
    Image.new("RGB", (8, 8)).save(plain)
    Image.new("RGB", (8, 8)).save(jpeg)
    text.write_text("not an image")
    for path, message in [
        (plain, f"{plain}: holds no generation parameters"),
        (jpeg, f"{jpeg}: a JPEG image, not a PNG: pilot reads generation parameters"),
        (text, f"{text}: not a readable PNG"),
    ]:
        with pytest.raises(ValueError, match=f"^{message}"):
            read_png_settings(path)
    broken = tmp_path / "broken.png"
    write_png(broken, BLACK, {"pilot": "{not json"})
    with pytest.raises(ValueError, match=f"^{broken}: pilot JSON: not JSON"):
        read_png_settings(broken)
    with pytest.raises(FileNotFoundError, match="missing.png: no such file"):
        read_png_settings(tmp_path / "missing.png")


def test_pilot_writes_a1111_sampler_labels_that_read_back():
    """The A1111 text names samplers and schedules as A1111 does (image sites read them), and
    every pilot sampler x schedule reads back as itself (`--from` a PNG whose JSON was lost)."""
    from pilot.commands._a1111 import a1111_sampler_fields
    from pilot.diffusion.samplers import SAMPLERS
    from pilot.diffusion.schedules import SCHEDULES

    assert a1111_sampler_fields("dpmpp_2m", "karras") == [
        "Sampler: DPM++ 2M",
        "Schedule type: Karras",
    ]
    assert a1111_sampler_fields("euler_ancestral", "linspace") == [
        "Sampler: Euler a", "Schedule type: Uniform"
    ]  # fmt: skip
    for sampler in SAMPLERS:
        for schedule in SCHEDULES:
            fields = dict(f.split(": ", 1) for f in a1111_sampler_fields(sampler, schedule))
            back = a1111_sampler(fields["Sampler"], fields["Schedule type"])
            assert back == (sampler, schedule), (sampler, schedule, fields)
