"""Float depth files (EXR, .npy, float TIFF) as depth control pictures."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pilot.control import ControlSpec, depth_to_control, parse_control_arg
from pilot.control.depth_files import depth_channel, read_depth_file
from pilot.control.spec import picture_size
from pilot.scenes.exr import read_exr

DATA = Path(__file__).parents[1] / "scenes" / "data"  # make_exr_fixtures.py writes them


@pytest.mark.parametrize(
    "name", ["blender_zip", "blender_zips", "blender_rle", "blender_file_output_depth"]
)
def test_blenders_depth_pass_is_the_near_bright_control_image(name):
    """The Z pass (`ViewLayer.Depth.Z`, or the File Output node's `V`) in metres becomes what
    pilot makes of its own depth: near white, the farthest surface and the sky (1e10) black."""
    spec = parse_control_arg(f"depth:{DATA / name}.exr")
    assert picture_size(spec.image) == (20, 18)
    image = spec.control_image()  # (1, 3, 18, 20)
    z = read_exr(DATA / "blender_none.exr")["ViewLayer.Depth.Z"]
    expected = depth_to_control(torch.from_numpy(z)[None, None], far=1e9)
    assert torch.allclose(image, expected, atol=1e-6)  # made grey (luma): rounding only
    column = image[0, 0, :, 0]  # sky rows 0-6, the floor from 10 m (row 7) to 2.5 m (row 17)
    assert column[:8].abs().max() < 1e-6 and (column[8:].diff() > 0).all()
    assert column[-1] == pytest.approx(1)
    assert spec.control_image((36, 40)).shape == (1, 3, 36, 40)


def test_npy_and_float_tiff_are_metric_depth_with_background(tmp_path):
    z = np.array([[1.0, 2.0, 4.0, 1e10], [np.inf, np.nan, 0.0, -1.0]], np.float32)
    np.save(tmp_path / "z.npy", z[None])  # (1, H, W): size-1 axes are dropped
    Image.fromarray(z, "F").save(tmp_path / "z.tif")
    for path in (tmp_path / "z.npy", tmp_path / "z.tif"):
        assert picture_size(path) == (4, 2)
        image = ControlSpec("depth", path).control_image()[0, 0]
        assert torch.allclose(image[0], torch.tensor([1.0, 1 / 3, 0.0, 0.0]))  # 1/z normalised
        assert (image[1] == 0).all()  # inf, NaN, 0 and negative depth: no surface, black


def test_invert_reads_inverse_depth(tmp_path):
    z = np.linspace(1, 9, 12, dtype=np.float32).reshape(3, 4)
    z[-1, -1] = 1e10  # the sky
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "midas.npy", np.where(z < 1e9, 1 / z, 0))  # near = large, sky 0
    depth = ControlSpec("depth", tmp_path / "z.npy").control_image()
    disparity = ControlSpec("depth", tmp_path / "midas.npy", invert=True).control_image()
    assert torch.allclose(depth, disparity, atol=1e-6) and disparity[0, 0, -1, -1] == 0
    hatch = ControlSpec("hatch", tmp_path / "z.npy").control_image()
    assert hatch.shape == (1, 3, 3, 4)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["ViewLayer.Combined.R", "ViewLayer.Depth.Z", "ViewLayer.Mist.Z"], "ViewLayer.Depth.Z"),
        (["A", "B", "G", "R", "Z"], "Z"),
        (["Depth.V", "Image.V"], "Depth.V"),
        (["V"], "V"),
        (["A", "Y"], "Y"),
    ],
)
def test_the_depth_channel_is_chosen_by_name(names, expected):
    assert depth_channel(dict.fromkeys(names, np.zeros((1, 1))), "f.exr") == expected


def test_grey_rgb_gives_r_and_anything_else_is_named(tmp_path):
    grey = {c: np.full((2, 2), 3.0) for c in "RGB"}
    assert depth_channel({**grey, "A": np.ones((2, 2))}, "g.exr") == "R"
    with pytest.raises(ValueError, match=r"c.exr: which channel is the depth\? It has A, B, G, R;"):
        depth_channel({**grey, "G": np.ones((2, 2)), "A": grey["R"]}, "c.exr")
    with pytest.raises(ValueError, match=r"two.exr: several depth channels \(a.Depth.Z, b.Dep"):
        depth_channel(dict.fromkeys(["a.Depth.Z", "b.Depth.Z"], grey["R"]), "two.exr")
    with pytest.raises(ValueError, match=r"m.exr: View.Mist.Z is a Mist pass .* 16-bit PNG"):
        depth_channel({"View.Mist.Z": grey["R"], "View.Combined.A": grey["R"]}, "m.exr")


def test_bad_depth_files_and_kinds_are_named(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"cube.npy: array of shape \(2, 3, 4\): expected a 2-D"):
        read_depth_file(tmp_path / "cube.npy")
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"words.npy: holds <U1, not depth values"):
        read_depth_file(tmp_path / "words.npy")
    np.save(tmp_path / "objects.npy", np.array([{}], dtype=object))
    with pytest.raises(ValueError, match=r"objects.npy: not a readable .npy array"):
        read_depth_file(tmp_path / "objects.npy")
    with pytest.raises(
        ValueError, match=r"z.exr: a float depth file, which only depth and .* \(canny: wants"
    ):
        parse_control_arg(f"canny:{DATA / 'z.exr'}")
    Image.fromarray(np.ones((2, 2), np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(
        ValueError, match=r"f.tif: a float depth file, .* \(image: wants an 8- or 16-bit"
    ):
        ControlSpec("image", tmp_path / "f.tif").control_image()
