"""Minimal OpenEXR reader for scanline files, uncompressed or ZIP / ZIPS / RLE (numpy and the
standard library only, so it runs inside Blender's Python).

Blender writes every render pass, with all of its channels, into one multilayer EXR; the
compositor's File Output node drops the fourth channel of the Vector pass, so the bridge reads
the multilayer file instead (written with `exr_codec = 'NONE'`). Artists' depth passes come
ZIP-compressed, Blender's default codec. The layout (OpenEXR file layout spec, v2): a header of
attributes, a table of chunk offsets, then chunks of `y, size, data`; a chunk holds 1 scanline
(NONE, RLE, ZIPS) or 16 (ZIP), each row all its channels one after the other (channels in
alphabetical order), little-endian. RLE and ZIP chunks are compressed (run lengths, zlib) after
two reversible steps: each byte replaced by its difference to the previous one plus 128 (mod
256), and the bytes reordered so that those at even positions come first; a chunk that would
not shrink is stored as it is (its size then equals the raw size). Only single-part scanline
files of these compressions are accepted; anything else (PIZ, PXR24, B44, DWA..., tiled,
multi-part, deep) raises ValueError naming the file and what to save instead.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_MAGIC = 20000630
_PIXEL_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}
_COMPRESSIONS = ("NONE", "RLE", "ZIPS", "ZIP", "PIZ", "PXR24", "B44", "B44A", "DWAA", "DWAB")
_LINES_PER_CHUNK = {"NONE": 1, "RLE": 1, "ZIPS": 1, "ZIP": 16}  # the ones read
SAVE_HINT = (
    "save it with Codec ZIP or None (Blender: Output Properties > Output, or the File Output "
    "node; bpy: image_settings.exr_codec = 'ZIP')"
)


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.find(b"\0", pos)
    if end < 0:
        raise IndexError("string runs past the end")
    return buf[pos:end].decode(), end + 1


def _header(buf: bytes, path: Path) -> tuple[dict, int]:
    """Attributes {name: (type, raw bytes)} and the offset just past the header."""
    magic, version = struct.unpack_from("<ii", buf, 0)
    if magic != _MAGIC:
        raise ValueError(f"{path}: not an OpenEXR file")
    if version & 0x1A00:  # tiled (0x200), deep data (0x800) or multi-part (0x1000)
        raise ValueError(f"{path}: tiled, deep or multi-part EXR is not supported; write scanlines")
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


def _compression(attrs: dict, path: Path) -> str:
    """The file's compression name, or a ValueError naming it when it is not read here."""
    code = attrs.get("compression", ("", b"\x00"))[1][0]
    name = _COMPRESSIONS[code] if code < len(_COMPRESSIONS) else f"compression {code}"
    if name not in _LINES_PER_CHUNK:
        raise ValueError(f"{path}: {name}-compressed EXR is not read; {SAVE_HINT}")
    return name


def exr_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an EXR's data window, from its header."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16)  # headers are small; a longer one is read whole
    with _damaged(path):
        try:
            attrs, _ = _header(head, path)
        except (IndexError, struct.error):
            attrs, _ = _header(path.read_bytes(), path)
        x0, y0, x1, y1 = struct.unpack("<iiii", attrs["dataWindow"][1])
    return x1 - x0 + 1, y1 - y0 + 1


def read_exr(path: str | Path) -> dict[str, np.ndarray]:
    """Channels of a scanline EXR (uncompressed, ZIP, ZIPS or RLE): {name: (H, W) float32},
    rows top to bottom.

    Raises:
        ValueError: naming the file, for anything but such a single-part scanline EXR.
    """
    path = Path(path)
    with _damaged(path):
        return _read(path.read_bytes(), path)


@contextmanager
def _damaged(path: Path) -> Iterator[None]:
    """A damaged file's low-level errors as one ValueError naming it."""
    try:
        yield
    except (IndexError, KeyError, struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: damaged or cut short EXR ({type(e).__name__}: {e})") from e


def _read(buf: bytes, path: Path) -> dict[str, np.ndarray]:
    attrs, pos = _header(buf, path)
    compression = _compression(attrs, path)
    try:
        channels = _channels(attrs["channels"][1])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: bad channel list ({e})") from e
    x0, y0, x1, y1 = struct.unpack("<iiii", attrs["dataWindow"][1])
    width, height = x1 - x0 + 1, y1 - y0 + 1
    lines = _LINES_PER_CHUNK[compression]
    chunks = math.ceil(height / lines)
    if pos + 8 * chunks > len(buf):
        raise ValueError(f"{path}: cut short in its offset table")
    offsets = np.frombuffer(buf, "<u8", chunks, pos)
    row_dtype = np.dtype([(f"c{i}", dt, (width,)) for i, (_, dt) in enumerate(channels)])
    rows = np.empty(height, row_dtype)
    for off in offsets.tolist():
        y, size = struct.unpack_from("<ii", buf, off)
        n = min(lines, y1 - y + 1)  # the last chunk may be short
        if not 0 <= y - y0 < height or not 0 <= size <= len(buf) - off - 8:
            raise ValueError(f"{path}: chunk at byte {off} (y={y}) is damaged or cut short")
        raw = _unpack(buf[off + 8 : off + 8 + size], n * row_dtype.itemsize, compression,
                      f"{path}: scanline {y}")  # fmt: skip
        rows[y - y0 : y - y0 + n] = np.frombuffer(raw, row_dtype, n)
    return {name: rows[f"c{i}"].astype(np.float32) for i, (name, _) in enumerate(channels)}


def _unpack(data: bytes, size: int, compression: str, where: str) -> bytes:
    """The `size` raw bytes of one chunk's `data` (`where` names it in errors)."""
    if compression != "NONE" and len(data) < size:  # else stored raw: it would not shrink
        try:
            packed = zlib.decompress(data) if compression != "RLE" else _unrle(data)
        except (zlib.error, IndexError) as e:
            raise ValueError(f"{where}: damaged {compression} data ({e})") from e
        if len(packed) == size:
            return _deinterleave(_undo_predictor(packed))
        data = packed
    if len(data) != size:
        raise ValueError(f"{where}: {len(data)} bytes, expected {size}")
    return data


def _undo_predictor(packed: bytes) -> np.ndarray:
    """Bytes from their differences: d[0] = t[0], d[i] = d[i - 1] + t[i] - 128 (mod 256)."""
    t = np.frombuffer(packed, np.uint8).copy()
    t[1:] -= 128  # uint8 wraps: mod 256
    return np.cumsum(t, dtype=np.uint8)


def _deinterleave(d: np.ndarray) -> bytes:
    """Undo the reordering: the first half (rounded up) holds the bytes at even positions."""
    out = np.empty_like(d)
    half = (len(d) + 1) // 2
    out[0::2], out[1::2] = d[:half], d[half:]
    return out.tobytes()


def _unrle(data: bytes) -> bytes:
    """OpenEXR run lengths: a signed count byte n; n < 0: -n literal bytes follow, else the next
    byte repeats n + 1 times."""
    out, i = bytearray(), 0
    while i < len(data):
        n = data[i] - 256 if data[i] > 127 else data[i]
        if n < 0:
            out += data[i + 1 : i + 1 - n]
            i += 1 - n
        else:
            out += bytes([data[i + 1]]) * (n + 1)
            i += 2
    return bytes(out)
