"""Image files: reading to tensors, atomic writes, PNG text chunks (generation parameters).

Every writer goes through `atomic_output`: data lands in a temporary file next to the target and
is `os.replace`d onto it, so a crash never leaves a half-written image behind a finished name;
a write killed mid-way leaves its temporary file, which `remove_stale_temps` clears when the
command runs again.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError
from torch import Tensor


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to `path`, moved onto `path` when the block ends without error.

    The parent folder is created; on error the temporary file is removed and `path` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; written files are ordinary shared outputs
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


TEMP_RANDOM = re.compile(r"[a-z0-9_]{8}")  # tempfile's random part of a temporary file's name


def remove_stale_temps(targets: Iterable[str | os.PathLike]) -> list[Path]:
    """Delete the temporary files that writes of `targets` killed mid-way left beside them
    (`atomic_output`'s names, `.{stem}.{8 random characters}{suffix}`); returns them.

    A command calls it on its outputs before writing them, so a kill -9 leaves nothing for
    good. Only the targets' own temporary files go: other files' in the same folders may be
    another process's writes in progress. Each folder is listed once.
    """
    names: dict[Path, set[tuple[str, str]]] = {}
    for target in map(Path, targets):
        names.setdefault(target.parent, set()).add((target.stem, target.suffix))
    found = []
    for folder, ours in names.items():
        try:
            hidden = [entry.name for entry in os.scandir(folder) if entry.name.startswith(".")]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in hidden:
            for suffix in {suffix for _, suffix in ours}:
                core = name[1 : len(name) - len(suffix)] if name.endswith(suffix) else ""
                stem, dot, random = core[:-9], core[-9:-8], core[-8:]
                if dot == "." and TEMP_RANDOM.fullmatch(random) and (stem, suffix) in ours:
                    found.append(folder / name)
    for path in found:
        path.unlink(missing_ok=True)
    return sorted(found)


_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit greys Pillow's convert clips


def decode_image(path: str | os.PathLike, mode: str = "RGB", *, alpha: str = "drop") -> np.ndarray:
    """Decode an image file to uint8 (H, W) for `mode` "L" or (H, W, 3) for "RGB", as viewers
    show it: EXIF orientation applied (phone photos), 16-bit grey scaled to 8 bits (MiDaS and
    scanners write those; Pillow's `convert` would clip them to white), palette and grey files
    converted. `alpha`: "drop" keeps the colour under transparent pixels, "white" composites
    them over white (paper).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable image (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode in _WIDE_GREY:
                grey = np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8
                image = Image.fromarray(grey.astype(np.uint8), "L")
            if alpha == "white" and (
                image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            ):
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
            return np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e


def read_image(path: str | os.PathLike, mode: str = "RGB") -> Tensor:
    """An image file as float (C, H, W) in [0, 1]; `mode` "RGB" (C = 3) or "L" (C = 1).

    Decoded by `decode_image` (EXIF orientation, 16-bit grey, alpha dropped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable image (the message names it).
    """
    return from_uint8(decode_image(path, mode))


def from_uint8(array: np.ndarray) -> Tensor:
    """(H, W, C) or (H, W) uint8 -> (C, H, W) float in [0, 1]: what `read_image` gives for
    the PNG `write_png` makes of `array` (inverse of `to_uint8`)."""
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def to_uint8(image: Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, C) uint8 (C = 1 gives (H, W))."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    array = array.permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def write_png(
    path: str | os.PathLike, image: Tensor | np.ndarray, text: Mapping[str, str] | None = None
) -> Path:
    """Write (C, H, W) in [0, 1] (C = 1 or 3), or `to_uint8`'s array of it, as a PNG,
    atomically, with optional text chunks.

    Text chunks are how Stable Diffusion front ends share settings: A1111 and ComfyUI read a
    `parameters` key.
    """
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    with atomic_output(path) as tmp:
        array = image if isinstance(image, np.ndarray) else to_uint8(image)
        Image.fromarray(array).save(tmp, format="PNG", pnginfo=info)
    return Path(path)


def read_png_text(path: str | os.PathLike) -> dict[str, str]:
    """The text chunks of a PNG file."""
    with Image.open(path) as image:
        return dict(getattr(image, "text", {}))
