"""Paired folders: matching, identical jitter on both sides, conversions, clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from pilot.data.paired import PairedConfig, PairedImages


def _write(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _ramp(h=40, w=40):
    """RGB image whose red channel is the column index: shows crops and flips."""
    x = np.zeros((h, w, 3), np.uint8)
    x[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    x[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    return x


CFG = PairedConfig(image_size=32, load_size=40)


def test_folders_match_by_name_and_jitter_both_sides_alike(tmp_path):
    for name in ("a", "b", "c"):
        _write(tmp_path / "A" / f"{name}.png", _ramp())
        _write(tmp_path / "B" / f"{name}.jpg", _ramp())  # other suffix, same name
    ds = PairedImages(tmp_path, CFG, augment=True)
    assert ds.names == ["a", "b", "c"]
    for _ in range(5):
        item = ds[0]
        assert item["A"].shape == item["B"].shape == (3, 32, 32)
        # same crop and flip: the jpg side differs only by compression error
        assert (item["A"] - item["B"]).abs().max() < 0.1
    flips = {bool(ds[0]["A"][0, 0, 0] > ds[0]["A"][0, 0, -1]) for _ in range(20)}
    assert flips == {True, False}


def test_side_by_side_splits_halves(tmp_path):
    a, b = np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)
    _write(tmp_path / "x.png", np.concatenate([a, b], axis=1))
    cfg = PairedConfig(layout="side_by_side", image_size=32, load_size=32)
    item = PairedImages(tmp_path, cfg, augment=False)[0]
    assert torch.all(item["A"] == -1) and torch.all(item["B"] == 1)


def test_grey_rgba_and_mixed_sizes_are_converted(tmp_path):
    rgba = np.zeros((50, 50, 4), np.uint8)  # fully transparent: white after compositing
    _write(tmp_path / "A" / "p.png", rgba, "RGBA")
    _write(tmp_path / "B" / "p.png", np.full((50, 50), 0, np.uint8), "L")  # grey -> RGB
    _write(tmp_path / "A" / "q.png", _ramp(20, 20))  # another size: resized
    _write(tmp_path / "B" / "q.png", _ramp(20, 20))
    cfg = PairedConfig(image_size=32, load_size=32, input_channels=(1,))
    ds = PairedImages(tmp_path, cfg, augment=False)
    p = ds[0]
    assert p["A"].shape == (1, 32, 32) and torch.allclose(p["A"], torch.ones(1))
    assert p["B"].shape == (3, 32, 32) and torch.allclose(p["B"], -torch.ones(1))
    assert ds[1]["B"].shape == (3, 32, 32)


def test_multi_folder_targets_concatenate(tmp_path):
    _write(tmp_path / "hatched" / "0.png", np.zeros((32, 32), np.uint8), "L")
    _write(tmp_path / "textured" / "0.png", _ramp(32, 32))
    _write(tmp_path / "fog" / "0.png", np.full((32, 32), 255, np.uint8), "L")
    cfg = PairedConfig(
        inputs=("hatched",),
        input_channels=(1,),
        targets=("textured", "fog"),
        target_channels=(3, 1),
        image_size=32,
        load_size=32,
    )
    item = PairedImages(tmp_path, cfg, augment=False)[0]
    assert item["A"].shape == (1, 32, 32) and item["B"].shape == (4, 32, 32)
    assert torch.allclose(item["B"][3], torch.ones(1))


def test_unmatched_names_are_listed(tmp_path):
    _write(tmp_path / "A" / "one.png", _ramp())
    _write(tmp_path / "A" / "two.png", _ramp())
    _write(tmp_path / "B" / "one.png", _ramp())
    _write(tmp_path / "B" / "three.png", _ramp())
    with pytest.raises(ValueError, match=r"only in A/: two.png; only in B/: three.png"):
        PairedImages(tmp_path, CFG)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "A").mkdir()
    _write(tmp_path / "B" / "x.png", _ramp())
    with pytest.raises(ValueError, match=r"A: no images"):
        PairedImages(tmp_path, CFG)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PairedImages(tmp_path / "nowhere", CFG)


def test_corrupt_image_and_size_mismatch_are_named(tmp_path):
    _write(tmp_path / "A" / "x.png", _ramp())
    (tmp_path / "B").mkdir()
    (tmp_path / "B" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"B/x.png: not a readable image"):
        PairedImages(tmp_path, CFG)
    _write(tmp_path / "B" / "x.png", _ramp(20, 30))
    with pytest.raises(ValueError, match=r"mixes image sizes: .*A/x.png 40x40, .*B/x.png 30x20"):
        PairedImages(tmp_path, CFG)  # from the headers, before any item is read


def test_bad_config_names_values():
    with pytest.raises(ValueError, match="load_size=16 < image_size=32"):
        PairedConfig(image_size=32, load_size=16)
    with pytest.raises(ValueError, match=r"got \(2,\)"):
        PairedConfig(input_channels=(2,))


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    from pilot.data.paired import read_image

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as image:
        assert image.mode == "I;16"
    for channels in (1, 3):
        pixels = read_image(tmp_path / "grey16.png", channels)
        assert pixels.dtype == np.uint8 and pixels.shape == (64, 64, channels)
        assert np.array_equal(pixels[:, :, 0], (ramp >> 8).astype(np.uint8))
    Image.fromarray(ramp.astype(np.int32), "I").save(tmp_path / "grey32.tif")
    assert np.array_equal(read_image(tmp_path / "grey32.tif", 1)[:, :, 0], ramp >> 8)


def test_exif_orientation_is_applied(tmp_path):
    from pilot.data.paired import check_image, read_image

    stored = _ramp(60, 80)  # stored landscape, shown portrait (orientation 6: rotate 90 cw)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    for name in ("phone.jpg", "phone.png"):
        assert check_image(tmp_path / name) == (60, 80)  # (width, height) as shown
        pixels = read_image(tmp_path / name, 3)
        assert pixels.shape == (80, 60, 3)
        assert np.abs(pixels.astype(int) - np.rot90(stored, -1)).max() < 16  # jpeg error only


def test_hidden_files_and_accented_names_of_a_mac_copy(tmp_path):
    import unicodedata

    for name in ("a", "café"):
        _write(tmp_path / "A" / f"{unicodedata.normalize('NFD', name)}.png", _ramp())  # macOS
        _write(tmp_path / "B" / f"{unicodedata.normalize('NFC', name)}.jpg", _ramp())
    (tmp_path / "A" / "._a.png").write_bytes(b"\0\5\26\7 AppleDouble")  # a Mac's copy to a drive
    (tmp_path / "B" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "B" / "old").mkdir()  # a sub-folder, skipped
    ds = PairedImages(tmp_path, CFG)
    assert ds.names == ["a", "café"] and len(PairedImages(tmp_path, CFG, names=["café"])) == 1


def test_files_of_an_unread_suffix_are_named(tmp_path):
    for name in ("A/x.gif", "A/y.png", "B/x.png", "B/y.png"):
        _write(tmp_path / name, _ramp())
    with pytest.raises(ValueError, match=r"not read in A/, not an image suffix: x.gif \(read: "):
        PairedImages(tmp_path, CFG)


def test_a_cut_off_jpeg_is_refused_before_training(tmp_path):
    _write(tmp_path / "A" / "x.png", _ramp())
    _write(
        tmp_path / "B" / "x.jpg", np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)
    )
    data = (tmp_path / "B" / "x.jpg").read_bytes()
    (tmp_path / "B" / "x.jpg").write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(ValueError, match=r"B/x.jpg: not a readable image \(image file is trunc"):
        PairedImages(tmp_path, CFG)  # when opened, not mid-epoch in a DataLoader worker
