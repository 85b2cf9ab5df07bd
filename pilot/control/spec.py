"""`KIND[+invert]:IMAGE[:SCALE[:START:END]]` control arguments and the preprocessors they name.

`parse_control_arg("depth:shot/0001.png:0.8:0:0.6")` gives a `ControlSpec`; `spec.control_image()`
reads the picture and runs the kind's preprocessor, giving the (1, 3, H, W) tensor in [0, 1]
that `pilot.diffusion.control.Control` takes. Kinds (`PREPROCESSORS`):

- `canny`, `softedge`, `lineart`: edges of a photo or render (`pilot.control.edges`);
- `depth`: the picture is a depth map, near bright (as pilot and the ControlNet annotators save
  them); it is used as it is, made grey;
- `normal`: the picture is a normal map in the 1.1 normalbae colours, used as it is;
- `hatch`: the picture is a near-bright depth map; normals come from it (`normals_from_depth`
  with a 50 degree horizontal field of view) and `pilot.control.hatching.hatch` draws it;
- `image`: the picture is already a control image.

`KIND+invert` (`depth`, `hatch`, `image`) takes 1 - the picture first: a near-dark depth map
(Blender's normalised Z or mist pass) becomes near-bright, a black-on-white sketch white-on-black.

`depth` and `hatch` also read float depth files (`.exr`, `.npy`, float TIFF; near = small, e.g.
Blender's Z pass in metres), made near-bright by `depth_to_control` as pilot's own depth passes
are (`pilot.control.depth_files`); with `+invert` the file holds inverse depth (near = large).

Scene passes (metric depth, normal passes) go through `depth_to_control`, `normals_to_control`
and `hatch` directly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pilot.control.depth import normals_from_depth
from pilot.control.depth_files import depth_file_size, depth_picture, is_depth_file
from pilot.control.edges import canny, line_art, luma, soft_edges
from pilot.control.hatching import hatch
from pilot.scenes.camera import intrinsics


def _grey(image: Tensor) -> Tensor:
    return luma(image).expand(-1, 3, -1, -1).contiguous()


def _hatch_from_depth_image(image: Tensor) -> Tensor:
    """Hatching from a near-bright depth picture: depth = 1 / (0.05 + brightness), 50 deg fov."""
    depth = 1 / (0.05 + luma(image).float())
    K = intrinsics(50.0, image.shape[-1], image.shape[-2])
    return hatch(depth, normals_from_depth(depth, K), K).to(image.dtype)


PREPROCESSORS: dict[str, Callable[[Tensor], Tensor]] = {
    "canny": canny,
    "softedge": soft_edges,
    "lineart": line_art,
    "depth": _grey,
    "normal": lambda image: image,
    "hatch": _hatch_from_depth_image,
    "image": lambda image: image,
}
# Kinds whose picture is data to invert (`KIND+invert`); an edge detector's photo is not.
INVERTIBLE = ("depth", "hatch", "image")
# Kinds whose picture is a depth map, so that a float depth file can stand for it.
DEPTH_KINDS = ("depth", "hatch")
DEPTH_SUFFIXES = (".exr", ".npy")


@dataclass(frozen=True)
class ControlSpec:
    """One parsed `--control KIND:IMAGE[:SCALE[:START:END]]`.

    Attributes:
        kind: A `PREPROCESSORS` key.
        image: Path of the picture.
        scale: Conditioning scale (default 1).
        start: Fraction of the sampling steps where the control starts (default 0).
        end: Fraction where it ends (default 1).
        invert: Take 1 - the picture before the preprocessor (`INVERTIBLE` kinds only); of a
            float depth file: it holds inverse depth, near = large.
    """

    kind: str
    image: Path
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    invert: bool = False

    def __post_init__(self) -> None:
        if self.kind not in PREPROCESSORS:
            raise ValueError(
                f"unknown control kind {self.kind!r}; valid: {', '.join(PREPROCESSORS)}"
            )
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(
                f"control start={self.start}, end={self.end}: need 0 <= start <= end <= 1"
            )
        if self.invert and self.kind not in INVERTIBLE:
            raise ValueError(
                f"{self.kind}+invert: only {', '.join(INVERTIBLE)} pictures are inverted (an "
                f"edge detector finds the same edges in a negative)"
            )
        if self.kind not in DEPTH_KINDS and self.image.suffix.lower() in DEPTH_SUFFIXES:
            raise ValueError(_not_a_picture(self.image, self.kind))

    def control_image(self, size: tuple[int, int] | None = None) -> Tensor:
        """The preprocessed control image (1, 3, H, W) in [0, 1].

        Args:
            size: (height, width) to resize the picture to first (the generated image's size;
                a picture of another aspect is stretched, see `stretch_note`).
        """
        if self.kind in DEPTH_KINDS and is_depth_file(self.image):
            picture = depth_picture(self.image, size, disparity=self.invert)  # near = 1
        else:
            picture = read_image(self.image, size, kind=self.kind)
            picture = 1 - picture if self.invert else picture
        return PREPROCESSORS[self.kind](picture)

    def stretch_note(self, size: tuple[int, int]) -> str | None:
        """What `control_image(size)` does to a picture of another aspect ratio, for the user
        (None when the aspects agree within 1%): it is stretched, not cropped."""
        w, h = picture_size(self.image)
        if abs((w / h) / (size[1] / size[0]) - 1) <= 0.01:
            return None
        return (
            f"{self.image} is {w}x{h} (WxH), stretched to {size[1]}x{size[0]}: crop it to that "
            "aspect, or pass --width/--height of its own"
        )


def parse_control_arg(text: str) -> ControlSpec:
    """Parse `KIND[+invert]:IMAGE[:SCALE[:START:END]]`, e.g. `depth+invert:mist.png:0.8:0:1`.

    The image path may itself contain colons (`C:/x.png`, `a:b.png`): trailing numeric fields
    are taken from the right, the kind is everything before the first colon.

    Raises:
        ValueError: naming the argument and what is wrong with it.
    """
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ValueError(f"--control {text!r}: expected KIND:IMAGE[:SCALE[:START:END]]")
    kind, plus, modifier = kind.partition("+")
    if plus and modifier != "invert":
        raise ValueError(f"--control {text!r}: unknown modifier +{modifier} (valid: +invert)")
    parts = rest.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 3 and _is_number(parts[-1]):
        numbers.insert(0, float(parts.pop()))
    if len(numbers) == 2:  # IMAGE:SCALE:START without END is ambiguous: refuse it
        raise ValueError(f"--control {text!r}: give SCALE, or SCALE:START:END")
    scale, start, end = [*numbers, 0.0, 1.0] if len(numbers) == 1 else numbers or [1.0, 0.0, 1.0]
    _check_image_part(text, rest, ":".join(parts))
    try:
        return ControlSpec(kind, Path(":".join(parts)), scale, start, end, invert=bool(plus))
    except ValueError as e:
        raise ValueError(f"--control {text!r}: {e}") from e


def _check_image_part(text: str, rest: str, image: str) -> None:
    """Where `image` (the IMAGE part of `rest`, IMAGE[:SCALE[:START:END]]) is no file but a
    head of it up to a colon is, what follows was meant as numbers: a ValueError saying so, not
    "no such control image" later."""
    if ":" not in image or Path(image).exists():
        return
    parts = image.split(":")
    for k in range(len(parts) - 1, 0, -1):
        head = ":".join(parts[:k])
        if Path(head).is_file():
            raise ValueError(
                f"--control {text!r}: {head} is the image, but {rest[len(head) + 1 :]!r} is "
                "not SCALE or SCALE:START:END (numbers)"
            )


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def read_image(
    path: str | os.PathLike, size: tuple[int, int] | None = None, *, kind: str | None = None
) -> Tensor:
    """Read a picture as (1, 3, H, W) float32 RGB in [0, 1], optionally resized (bicubic);
    decoded as viewers show it (`pilot.imageio.decode_image`: EXIF orientation, 16-bit grey).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image, or a float depth file (which
            `depth_picture` reads; `kind` names the control kind that was given it).
    """
    from PIL import Image

    from pilot.imageio import decode_image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such control image")
    if is_depth_file(path):
        raise ValueError(_not_a_picture(path, kind))
    im = Image.fromarray(decode_image(path, "RGB"))  # EXIF orientation, 16-bit grey
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(im).copy())  # (H, W, 3) uint8
    return pixels.permute(2, 0, 1)[None].float() / 255


def _not_a_picture(path: Path, kind: str | None) -> str:
    """Why a float depth file is no picture for `kind` (None: whatever asked)."""
    wants = f"{kind}: wants an 8- or 16-bit picture" if kind else "depth:FILE"
    return f"{path}: a float depth file, which only depth and hatch controls read ({wants})"


def picture_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file as `read_image` shows it (EXIF rotation applied), or
    of a float depth file, from its header.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such control image")
    if is_depth_file(path):
        return depth_file_size(path)
    try:
        with Image.open(path) as im:
            (w, h), orientation = im.size, im.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)  # transposed / rotated 90 deg
