"""`KIND:IMAGE[:SCALE[:START:END]]` parsing and control images read from files."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from pilot.control import PREPROCESSORS, ControlSpec, parse_control_arg, read_image
from pilot.control.spec import picture_size
from pilot.imageio import write_png


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("depth:img.png", ("depth", "img.png", 1.0, 0.0, 1.0)),
        ("canny:img.png:0.8", ("canny", "img.png", 0.8, 0.0, 1.0)),
        ("depth:img.png:0.8:0:1", ("depth", "img.png", 0.8, 0.0, 1.0)),
        ("hatch:shots/a:b.png:1.2:0.1:0.6", ("hatch", "shots/a:b.png", 1.2, 0.1, 0.6)),
        ("normal:C:/frames/0001.png:0.5", ("normal", "C:/frames/0001.png", 0.5, 0.0, 1.0)),
    ],
)
def test_parse_control_arg(text, expected):
    spec = parse_control_arg(text)
    assert (spec.kind, str(spec.image), spec.scale, spec.start, spec.end) == (
        expected[0],
        str(Path(expected[1])),
        *expected[2:],
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("depth", "expected KIND:IMAGE"),
        ("depth:", "expected KIND:IMAGE"),
        ("blur:img.png", "unknown control kind 'blur'"),
        ("depth:img.png:0.8:0.2", "give SCALE, or SCALE:START:END"),
        ("depth:img.png:1:0.7:0.2", "start=0.7, end=0.2"),
    ],
)
def test_parse_control_arg_errors_name_the_argument(text, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_control_arg(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("fields", ["abc", "0.5:abc", "0.8:abc:1", "1:2:3:4"])
def test_a_bad_scale_after_an_existing_image_is_named(tmp_path, fields):
    """`IMAGE:abc` where IMAGE exists: the number is wrong, not the image missing."""
    image = tmp_path / "depth.png"
    Image.new("RGB", (8, 8)).save(image)
    text = f"depth:{image}:{fields}"
    message = f"--control {text!r}: {image} is the image, but {fields!r} is not SCALE"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_control_arg(text)
    (tmp_path / "depth.png:abc").write_bytes(image.read_bytes())  # a file of that name: taken
    assert parse_control_arg(f"depth:{image}:abc").image == tmp_path / "depth.png:abc"


def test_control_image_reads_resizes_and_preprocesses(tmp_path):
    pixels = torch.zeros(40, 48, 3, dtype=torch.uint8)
    pixels[10:30, 12:36] = 255
    path = tmp_path / "square.png"
    Image.fromarray(pixels.numpy()).save(path)
    image = read_image(path)
    assert image.shape == (1, 3, 40, 48) and image.max() == 1 and image.min() == 0
    assert read_image(path, (32, 24)).shape == (1, 3, 32, 24)
    for kind in PREPROCESSORS:
        control = ControlSpec(kind, path).control_image((32, 32))
        assert control.shape == (1, 3, 32, 32) and 0 <= control.min() <= control.max() <= 1
    edges = ControlSpec("canny", path).control_image()
    assert edges[0, 0, 20, 24] == 0 and edges[0, 0].sum() > 0
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        read_image(tmp_path / "bad.png")


def test_invert_flips_a_near_black_depth_map_before_its_preprocessor(tmp_path):
    """Blender's normalised Z and mist passes are near = black: `depth+invert` reads them."""
    near_white = torch.linspace(1, 0, 16).expand(1, 3, 8, 16)
    write_png(tmp_path / "near_black.png", 1 - near_white[0])
    spec = parse_control_arg(f"depth+invert:{tmp_path / 'near_black.png'}:0.5")
    assert (spec.kind, spec.invert, spec.scale) == ("depth", True, 0.5)
    assert (spec.control_image() - near_white).abs().max() < 1e-6
    plain = parse_control_arg(f"depth:{tmp_path / 'near_black.png'}")
    assert not plain.invert and (plain.control_image() - (1 - near_white)).abs().max() < 1e-6
    sketch = parse_control_arg(f"image+invert:{tmp_path / 'near_black.png'}").control_image()
    assert (sketch - near_white).abs().max() < 1e-6  # black lines on white -> white on black


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("depth+flip:img.png", r"unknown modifier \+flip \(valid: \+invert\)"),
        ("canny+invert:img.png", r"canny\+invert: only depth, hatch, image"),
    ],
)
def test_bad_modifiers_are_named(text, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_control_arg(text)
    assert repr(text) in str(info.value)


def test_stretch_note_names_a_picture_of_another_aspect(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("L", (160, 90)).save(path)
    spec = ControlSpec("depth", path)
    assert spec.stretch_note((90 * 2, 160 * 2)) is None  # same aspect: resized, no note
    assert spec.stretch_note((64, 64)) == (
        f"{path} is 160x90 (WxH), stretched to 64x64: crop it to that aspect, or pass "
        "--width/--height of its own"
    )


def test_picture_size_is_as_shown_after_exif_rotation(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    Image.new("RGB", (40, 30)).save(path, exif=exif)
    assert picture_size(path) == (30, 40)
    assert read_image(path).shape[-2:] == (40, 30)  # (H, W): what the size says


def test_a_damaged_exr_control_image_is_named(tmp_path):
    """EXR depth is read (tests/control/test_depth_files.py); a broken one is one error."""
    path = tmp_path / "z.exr"
    path.write_bytes(b"\x76\x2f\x31\x01" + bytes(60))
    with pytest.raises(ValueError, match=r"z.exr: bad channel list"):
        ControlSpec("depth", path).control_image()
