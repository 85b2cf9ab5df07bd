"""`pilot.imageio`: images read as viewers show them, by every reader (init, mask, control)."""

import numpy as np
import pytest
import torch
from PIL import Image

from pilot.control.spec import read_image as read_control
from pilot.imageio import atomic_output, decode_image, read_image, remove_stale_temps


def _ramp(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)], -1).astype(np.uint8)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "depth16.png")  # how MiDaS saves depth
    expected = torch.from_numpy((ramp >> 8).astype(np.float32)) / 255
    assert torch.equal(read_image(tmp_path / "depth16.png", "L")[0], expected)
    assert torch.equal(read_image(tmp_path / "depth16.png")[1], expected)
    assert torch.equal(read_control(tmp_path / "depth16.png")[0, 2], expected)


def test_exif_orientation_is_applied(tmp_path):
    stored = _ramp(40, 56)  # stored landscape, shown portrait (orientation 6: rotate 90 cw)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    shown = torch.from_numpy(np.rot90(stored, -1).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(read_image(tmp_path / "phone.png"), shown)
    assert torch.equal(read_control(tmp_path / "phone.png")[0], shown)


def test_alpha_is_dropped_or_put_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red under fully transparent pixels
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    assert (decode_image(tmp_path / "clear.png") == [200, 0, 0]).all()
    assert (decode_image(tmp_path / "clear.png", alpha="white") == 255).all()


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.png: no such image file"):
        read_image(tmp_path / "nothing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        read_image(tmp_path / "bad.png")


def test_remove_stale_temps_clears_only_the_targets_own(tmp_path):
    from tests.conftest import plant_temps

    targets = [tmp_path / "a.b.mp4", tmp_path / "f" / "00001.png", tmp_path / "noext"]
    ours = plant_temps(*targets)
    others = plant_temps(tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "f" / "00002.png")
    (tmp_path / ".a.b.notrandom.mp4").touch()
    assert remove_stale_temps([*targets, tmp_path / "missing" / "x.png"]) == sorted(ours)
    assert all(p.exists() for p in others) and (tmp_path / ".a.b.notrandom.mp4").exists()
    with atomic_output(tmp_path / "a.b.mp4") as tmp:  # the names it clears are these
        tmp.write_bytes(b"video")
    tmp.touch()  # as a kill mid-write leaves it
    assert remove_stale_temps([tmp_path / "a.b.mp4"]) == [tmp]
