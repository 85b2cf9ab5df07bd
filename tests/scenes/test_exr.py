"""The numpy EXR reader on a hand-assembled uncompressed file (OpenEXR layout) and bad files."""

import struct

import numpy as np
import pytest

from pilot.scenes.exr import read_exr


def _attr(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _exr(channels: dict[str, np.ndarray], compression: int = 0) -> bytes:
    """Scanline EXR with FLOAT (2) and HALF (1) channels, rows stored top to bottom."""
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
    rows = [
        struct.pack("<ii", y, sum(channels[n][y].nbytes for n in names))
        + b"".join(channels[n][y].tobytes() for n in names)
        for y in range(h)
    ]
    start = len(header) + 8 * h
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


def test_bad_files_name_the_path(tmp_path):
    path = tmp_path / "zip.exr"
    path.write_bytes(_exr({"R": np.zeros((2, 2), np.float32)}, compression=3))
    with pytest.raises(ValueError, match="zip.exr: compressed"):
        read_exr(path)
    path = tmp_path / "png.exr"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    with pytest.raises(ValueError, match="png.exr: not an OpenEXR"):
        read_exr(path)
