"""`pilot control`: the control image a --control argument makes, written for a preview."""

from pathlib import Path

import pytest
import torch

from pilot.cli import main
from pilot.control import parse_control_arg
from pilot.imageio import read_image, write_png
from tests.conftest import plant_temps


@pytest.fixture
def depth(tmp_path):
    path = tmp_path / "mist.png"  # near = black, as Blender's mist pass
    write_png(path, torch.linspace(0, 1, 48).expand(1, 32, 48))
    return path


def test_writes_what_generate_feeds_the_controlnet(capsys, tmp_path, depth):
    out = tmp_path / "preview" / "control.png"
    killed = plant_temps(out, age=0)  # a kill -9 during a write: removed by the next run
    others = plant_temps(tmp_path / "preview" / "other.png", age=0)
    assert main(["control", f"depth+invert:{depth}:0.8:0:0.5", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    expected = parse_control_arg(f"depth+invert:{depth}").control_image()[0]
    assert torch.allclose(read_image(out), expected, atol=0.5 / 255)
    assert read_image(out)[0, 0, 0] == 1  # the near (left) side is white now
    assert not killed[0].exists() and others[0].exists()  # only its own output's


def test_size_follows_the_picture_and_notes_a_stretch(capsys, tmp_path, depth):
    out = tmp_path / "c.png"
    assert main(["control", f"hatch:{depth}", "--out", str(out), "--width", "96"]) == 0
    assert read_image(out).shape == (3, 64, 96)  # the picture's aspect
    assert capsys.readouterr().err == ""
    assert main(["control", f"canny:{depth}", "--out", str(out), "--width", "32",
                 "--height", "32"]) == 0  # fmt: skip
    assert "is 48x32 (WxH), stretched to 32x32" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "{depth}"], "is the picture itself"),
        (["--out", "{tmp}/c.jpg"], "write a .png"),
        (["--out", "{tmp}/c.png", "--width", "0"], "--width must be a positive"),
        (["--out", "{tmp}"], "is a folder"),
    ],
)
def test_bad_arguments_are_one_line(capsys, tmp_path, depth, argv, message):
    argv = [a.format(depth=depth, tmp=tmp_path) for a in argv]
    assert main(["control", f"depth:{depth}", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pilot control: error: ") and message in err and err.count("\n") == 1
    assert read_image(depth)[0, 0, 0] == 0  # the input is untouched


def test_previews_blenders_zip_depth_pass(capsys, tmp_path):
    """`pilot control depth:z.exr` reads a ZIP-compressed Z pass (metres, sky 1e10): near white."""
    exr = Path(__file__).parents[1] / "scenes" / "data" / "blender_zip.exr"
    out = tmp_path / "c.png"
    assert main(["control", f"depth:{exr}", "--out", str(out), "--width", "40"]) == 0
    image = read_image(out)
    assert image.shape == (3, 36, 40) and capsys.readouterr().err == ""
    assert image[:, -1].min() > 0.9 and image[:, 0].max() == 0  # the floor below, the sky above
