"""The numpy EXR reader: files written by Blender and OpenCV (`data/make_exr_fixtures.py`:
uncompressed, ZIP, ZIPS, RLE), hand-assembled files (OpenEXR layout) and bad files."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from pilot.scenes.exr import exr_size, read_exr

DATA = Path(__file__).parent / "data"


def _attr(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _exr(
    channels: dict[str, np.ndarray], compression: int = 0, lines: int = 1, pack=bytes
) -> bytes:
    """Scanline EXR with FLOAT (2) and HALF (1) channels, rows stored top to bottom, `lines`
    rows a chunk, each chunk's bytes through `pack`."""
    names = sorted(channels)
    h, w = channels[names[0]].shape
    chlist = b"".join(
        n.encode() + b"\0" + struct.pack("<iB3sii", 1 if channels[n].dtype == np.float16 else 2,
                                         0, b"\0\0\0", 1, 1)
        for n in names
    ) + b"\0"  # fmt: skip
    header = struct.pack("<ii", 20000630, 2)
    header += _attr("channels", "chlist", chlist)
    header += _attr("compression", "compression", bytes([compression]))
    header += _attr("dataWindow", "box2i", struct.pack("<iiii", 0, 0, w - 1, h - 1)) + b"\0"
    raw = [b"".join(channels[n][y].tobytes() for n in names) for y in range(h)]
    chunks = [pack(b"".join(raw[y : y + lines])) for y in range(0, h, lines)]
    rows = [struct.pack("<ii", i * lines, len(c)) + c for i, c in enumerate(chunks)]
    start = len(header) + 8 * len(rows)
    offsets = np.cumsum([start] + [len(r) for r in rows[:-1]]).astype("<u8")
    return header + offsets.tobytes() + b"".join(rows)


def test_reads_float_and_half_channels(tmp_path):
    rng = np.random.default_rng(0)
    data = {
        "View.Depth.Z": rng.random((5, 7), dtype=np.float32) * 50,
        "View.Vector.X": rng.standard_normal((5, 7)).astype(np.float16),
    }
    path = tmp_path / "f.exr"
    path.write_bytes(_exr(data))
    out = read_exr(path)
    assert set(out) == set(data)
    for k, v in data.items():
        assert out[k].dtype == np.float32 and np.array_equal(out[k], v.astype(np.float32))


@pytest.mark.parametrize("codec", ["zip", "zips", "rle"])
def test_reads_blender_compressed_files_as_the_uncompressed_one(codec):
    """Blender 4.2 (OpenEXR 3), a 20x18 multilayer render: ZIP's 16-line chunks (one short),
    ZIPS's and RLE's single lines give exactly the channels of the NONE file."""
    expected = read_exr(DATA / "blender_none.exr")
    got = read_exr(DATA / f"blender_{codec}.exr")
    assert sorted(got) == sorted(expected) and "ViewLayer.Depth.Z" in got
    for name, values in expected.items():
        assert np.array_equal(got[name], values), name
    depth = got["ViewLayer.Depth.Z"]
    assert depth.shape == (18, 20) and exr_size(DATA / f"blender_{codec}.exr") == (20, 18)
    assert (depth[0] == 1e10).all() and (depth[-1] < 3).all()  # sky on top, floor near below


@pytest.mark.parametrize("codec", ["zip", "zips", "rle"])
def test_reads_opencv_half_float_files(codec):
    """OpenCV 4.10 (OpenEXR 2.3), one channel Y of half floats, 37 rows (ZIP: 16 + 16 + 5)."""
    y, x = np.mgrid[0:37, 0:29]
    got = read_exr(DATA / f"opencv_ramp_{codec}.exr")
    assert list(got) == ["Y"] and np.array_equal(got["Y"], (1 + x / 8 + y / 4).astype(np.float32))


def _zip(raw: bytes) -> bytes:
    """ZIP's packing, as the spec states it: even bytes first, differences + 128, zlib."""
    b = np.frombuffer(raw, np.uint8)
    t = np.concatenate([b[0::2], b[1::2]]).astype(np.int16)
    t[1:] = (t[1:] - t[:-1] + 128) % 256
    return zlib.compress(t.astype(np.uint8).tobytes())


def test_zip_chunks_short_last_chunk_and_chunks_stored_raw(tmp_path):
    """A ZIP chunk that would not shrink is stored as it is (size = the raw size)."""
    rng = np.random.default_rng(1)
    data = {
        "Z": np.repeat(np.arange(35, dtype=np.float32)[:, None], 6, 1),
        "V": rng.random((35, 6)),
    }
    data["V"] = data["V"].astype(np.float32)
    path = tmp_path / "zip.exr"
    path.write_bytes(_exr(data, compression=3, lines=16, pack=_zip))
    assert all(np.array_equal(read_exr(path)[k], v) for k, v in data.items())
    path.write_bytes(_exr(data, compression=3, lines=16))  # every chunk raw
    assert all(np.array_equal(read_exr(path)[k], v) for k, v in data.items())


@pytest.mark.parametrize(
    ("code", "name"), [(4, "PIZ"), (5, "PXR24"), (6, "B44"), (8, "DWAA"), (12, "compression 12")]
)
def test_other_compressions_are_refused_naming_them_and_what_to_save(tmp_path, code, name):
    path = tmp_path / "z.exr"
    path.write_bytes(_exr({"Z": np.zeros((2, 2), np.float32)}, compression=code))
    with pytest.raises(ValueError, match=rf"z.exr: {name}-compressed EXR is not read; save it "
                       "with Codec ZIP or None"):  # fmt: skip
        read_exr(path)


def test_bad_files_name_the_path(tmp_path):
    path = tmp_path / "png.exr"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    with pytest.raises(ValueError, match="png.exr: not an OpenEXR"):
        read_exr(path)
    whole = (DATA / "blender_zip.exr").read_bytes()
    for cut in (12, 300, 1500, len(whole) - 5):  # in the header, the offsets, the chunks
        path = tmp_path / "cut.exr"
        path.write_bytes(whole[:cut])
        with pytest.raises(ValueError, match=r"cut.exr: .*(damaged|cut short)"):
            read_exr(path)
    path.write_bytes(whole[:-300] + bytes(300))  # zeros where zlib data was
    with pytest.raises(ValueError, match=r"cut.exr: scanline 16: damaged ZIP data"):
        read_exr(path)
