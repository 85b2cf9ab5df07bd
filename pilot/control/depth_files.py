"""Float depth files as depth control pictures: EXR (Blender's Z pass), .npy and float TIFF.

`--control depth:z.exr` reads metric depth (near = small, in any unit) and turns it into the
near-bright control image with `pilot.control.depth.depth_to_control`, as pilot's own depth
passes are: inverse depth, min-max normalised over the image. Pixels without a surface (Cycles
writes 1e10 where a ray hits nothing; inf, NaN, 0 or negative elsewhere) are background: drawn
black, the farthest, and left out of the range.

Which values are read:

- `.npy`: a 2-D array (size-1 axes are dropped: (1, H, W) and (H, W, 1) are fine), numbers;
- float TIFF (Pillow mode "F"): its one channel;
- `.exr` (`pilot.scenes.exr.read_exr`: uncompressed, ZIP, ZIPS or RLE scanlines): the depth
  channel, chosen by name: `Z`, or a channel of a layer or pass named Depth (a multilayer
  render's `ViewLayer.Depth.Z`, a File Output node's `Depth.V`); else the only channel that is
  not alpha (`V` from a single-layer File Output node, `Y` from OpenCV or a grey EXR); else R
  of equal R, G and B (a grey image saved in colour). Anything else raises ValueError listing
  the channels. A Mist pass is refused: it is normalised (0 at the mist start), not metric.

With `disparity=True` (`depth+invert:`) the values are inverse depth, near = large (a MiDaS
output, a disparity pass), normalised as they are; zero is background.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pilot.control.depth import depth_to_control
from pilot.scenes.exr import exr_size, read_exr

# Depth at or beyond which a pixel is background: Cycles' misses are 1e10, nothing real is this
# far in metres, centimetres or millimetres.
BACKGROUND_DEPTH = 1e9


def is_depth_file(path: str | os.PathLike) -> bool:
    """Whether `path` holds float depth (.exr, .npy, a float TIFF) rather than a picture."""
    suffix = Path(path).suffix.lower()
    if suffix in (".exr", ".npy"):
        return True
    if suffix not in (".tif", ".tiff") or not Path(path).is_file():
        return False
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.mode == "F"
    except (UnidentifiedImageError, OSError):
        return False


def depth_file_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a depth file, from its header."""
    path = Path(path)
    if path.suffix.lower() == ".exr":
        return exr_size(path)
    if path.suffix.lower() == ".npy":
        h, w = _load_npy(path, mmap_mode="r").shape
        return w, h
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def read_depth_file(path: str | os.PathLike) -> np.ndarray:
    """The (H, W) float32 depth of a depth file (see the module docstring for which values).

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file and what is wrong (shape, dtype, channels, compression).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such depth file")
    if path.suffix.lower() == ".exr":
        channels = read_exr(path)
        return channels[depth_channel(channels, path)]
    if path.suffix.lower() == ".npy":
        return _load_npy(path).astype(np.float32)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(im, dtype=np.float32)  # a copy: writable
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable float TIFF ({e})") from e


def _load_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """A .npy file's 2-D array of numbers (size-1 axes dropped)."""
    try:
        array = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})") from e
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise ValueError(f"{path}: holds {getattr(array, 'dtype', type(array))}, not depth values")
    squeezed = array.reshape([n for n in array.shape if n != 1])
    if squeezed.ndim != 2:
        raise ValueError(f"{path}: array of shape {array.shape}: expected a 2-D (H, W) depth map")
    return squeezed


def depth_channel(channels: dict[str, np.ndarray], path: str | os.PathLike) -> str:
    """The name of the depth channel among an EXR's `channels` (`read_exr`'s; the rule is in
    the module docstring), or a ValueError naming the file `path` and listing them."""
    names = sorted(channels)
    last = {n: n.rsplit(".", 1)[-1] for n in names}
    depth = [n for n in names if n == "Z" or "depth" in n.lower().split(".")]
    if len(depth) > 1:
        raise ValueError(f"{path}: several depth channels ({', '.join(depth)}); save one")
    colour = [n for n in names if last[n] != "A"]
    if not depth and len(colour) == 1:
        depth = colour
    if not depth and sorted(last[n] for n in colour) == ["B", "G", "R"]:
        r, g, b = sorted(colour, key=lambda n: "RGB".index(last[n]))
        if all(np.array_equal(channels[r], channels[c], equal_nan=True) for c in (g, b)):
            depth = [r]  # a grey picture saved in colour
    if not depth:
        raise ValueError(
            f"{path}: which channel is the depth? It has {', '.join(names)}; save the Z pass "
            "(channel Z, or a layer named Depth) or a one-channel EXR"
        )
    if "mist" in depth[0].lower().split("."):
        raise ValueError(
            f"{path}: {depth[0]} is a Mist pass (0 to 1 from the mist start, not metric depth); "
            "save the Depth (Z) pass, or the mist as a 16-bit PNG for depth+invert"
        )
    return depth[0]


def depth_picture(
    path: str | os.PathLike, size: tuple[int, int] | None = None, *, disparity: bool = False
) -> Tensor:
    """The near-bright depth control picture (1, 3, H, W) in [0, 1] of a depth file:
    `depth_to_control` of its values (per image, background black), then resized to `size`
    (height, width) if given (bicubic, as pictures are).

    Args:
        disparity: The file holds inverse depth (near = large), as `depth+invert:` says.
    """
    depth = torch.from_numpy(read_depth_file(path))[None, None]  # (1, 1, H, W)
    picture = depth_to_control(depth, far=BACKGROUND_DEPTH, disparity=disparity)
    if size is not None and tuple(picture.shape[-2:]) != tuple(size):
        picture = F.interpolate(picture, size=size, mode="bicubic", antialias=True).clamp(0, 1)
    return picture
