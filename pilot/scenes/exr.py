"""Minimal OpenEXR reader for uncompressed scanline files (numpy only, runs inside Blender).

Blender writes every render pass, with all of its channels, into one multilayer EXR; the
compositor's File Output node drops the fourth channel of the Vector pass, so the bridge reads
the multilayer file instead. Written with `exr_codec = 'NONE'`, such a file is a header, a table
of scanline offsets and raw rows, which this module parses (OpenEXR file layout spec, v2). Only
single-part, scanline, uncompressed files are accepted; anything else raises ValueError naming
the file.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_MAGIC = 20000630
_PIXEL_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode(), end + 1


def _header(buf: bytes, path: Path) -> tuple[dict, int]:
    """Attributes {name: (type, raw bytes)} and the offset just past the header."""
    magic, version = struct.unpack_from("<ii", buf, 0)
    if magic != _MAGIC:
        raise ValueError(f"{path}: not an OpenEXR file")
    if version & 0x1200:  # tiled (0x200) or multi-part (0x1000)
        raise ValueError(f"{path}: tiled or multi-part EXR is not supported; write scanlines")
    attrs, pos = {}, 8
    while buf[pos] != 0:
        name, pos = _cstring(buf, pos)
        kind, pos = _cstring(buf, pos)
        (size,) = struct.unpack_from("<i", buf, pos)
        attrs[name] = (kind, buf[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return attrs, pos + 1


def _channels(raw: bytes) -> list[tuple[str, np.dtype]]:
    out, pos = [], 0
    while raw[pos] != 0:
        name, pos = _cstring(raw, pos)
        ptype, _, _, xs, ys = struct.unpack_from("<iB3sii", raw, pos)
        if (xs, ys) != (1, 1):
            raise ValueError(f"channel {name} is subsampled")
        out.append((name, _PIXEL_TYPES[ptype]))
        pos += 16
    return out


def read_exr(path: str | Path) -> dict[str, np.ndarray]:
    """Channels of an uncompressed scanline EXR: {name: (H, W) float32}, rows top to bottom."""
    path = Path(path)
    buf = path.read_bytes()
    attrs, pos = _header(buf, path)
    if attrs.get("compression", ("", b"\x00"))[1] != b"\x00":
        raise ValueError(f"{path}: compressed EXR; write it with exr_codec = 'NONE'")
    try:
        channels = _channels(attrs["channels"][1])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: bad channel list ({e})") from e
    x0, y0, x1, y1 = struct.unpack("<iiii", attrs["dataWindow"][1])
    width, height = x1 - x0 + 1, y1 - y0 + 1
    offsets = np.frombuffer(buf, "<u8", height, pos)
    row_dtype = np.dtype([(f"c{i}", dt, (width,)) for i, (_, dt) in enumerate(channels)])
    rows = np.empty(height, row_dtype)
    for off in offsets:
        y, size = struct.unpack_from("<ii", buf, int(off))
        if size != row_dtype.itemsize:
            raise ValueError(
                f"{path}: scanline {y} has {size} bytes, expected {row_dtype.itemsize}"
            )
        rows[y - y0] = np.frombuffer(buf, row_dtype, 1, int(off) + 8)[0]
    return {name: rows[f"c{i}"].astype(np.float32) for i, (name, _) in enumerate(channels)}
