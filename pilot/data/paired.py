"""Paired image folders for Pix2Pix-style training on your own data.

Two layouts:

- "folders": one sub-folder per side, files matched by name without suffix, e.g. `A/0001.png` with
  `B/0001.jpg` (suffixes in any case, `.PNG`; accented names match however the system spelled
  them; hidden files such as `.DS_Store` or macOS `._0001.png` copies, and sub-folders, are
  skipped). A side can be several folders concatenated along channels, e.g. targets
  `("textured", "fog")` read an RGB texture and a grey fog map as one 4-channel target.
- "side_by_side": every image is A and B next to each other (A left), as the pix2pix data sets
  ship; the image is cut in half.

Conversions (documented, not errors): every image is decoded with Pillow and converted to the
channels its folder asks for; 1 channel = luminance (ITU-R 601, Pillow's "L"), 3 channels = RGB
(greyscale is repeated). 16-bit greys (PNG, TIFF) are scaled to 8 bits, and the EXIF orientation of
phone photos is applied, so images read as viewers show them. Transparent images (RGBA, LA, P with
transparency) are composited over white first. Images of any size are resized to `load_size` squares
(aspect not kept; smaller ones upscaled), so mixed sizes are fine; the two sides of one pair must
have the same size, though, since they should be pixel-aligned. Augmentation (random crop to
`image_size` and horizontal flip) draws one crop and one flip per pair and applies them to every
side alike.

Errors name the files: an empty folder, names present on only one side (and files of those names
whose suffix is not read, e.g. `A/0001.gif`), a file that is not an image, a cut-off JPEG or PNG
(an interrupted copy) or a pair of two sizes (checked when the set is opened, before training
starts), an image that fails to decode otherwise (checked when the item is read).
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from pilot.imageio import decode_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_LISTED = 8  # names an error message lists before "... and N more"


@dataclass(frozen=True)
class PairedConfig:
    """Where the pairs are and how they are loaded."""

    layout: Literal["folders", "side_by_side"] = "folders"
    inputs: tuple[str, ...] = ("A",)  # folders: sub-folders of the condition, concatenated
    input_channels: tuple[int, ...] = (3,)  # 1 or 3 per input folder
    targets: tuple[str, ...] = ("B",)  # folders: sub-folders of the target, concatenated
    target_channels: tuple[int, ...] = (3,)  # 1 or 3 per target folder
    image_size: int = 256  # side of the square crops fed to the model
    load_size: int = 286  # images are resized to this square before the random crop
    flip: bool = True  # random horizontal flips when augmenting

    def __post_init__(self) -> None:
        for name in ("inputs", "input_channels", "targets", "target_channels"):
            if isinstance(getattr(self, name), list):  # lists from YAML
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.layout not in ("folders", "side_by_side"):
            raise ValueError(f"layout={self.layout!r} is not one of ('folders', 'side_by_side')")
        for names, chans in (
            (self.inputs, self.input_channels),
            (self.targets, self.target_channels),
        ):
            if not names or len(names) != len(chans) or any(c not in (1, 3) for c in chans):
                raise ValueError(
                    f"folders {names} need one channel count (1 or 3) each, got {chans}"
                )
        if self.layout == "side_by_side" and (len(self.inputs) != 1 or len(self.targets) != 1):
            raise ValueError("side_by_side has exactly one input and one target side")
        if self.load_size < self.image_size:
            raise ValueError(f"load_size={self.load_size} < image_size={self.image_size}")

    @property
    def in_channels(self) -> int:
        """Channels of the model's input: the input folders' channels together."""
        return sum(self.input_channels)

    @property
    def out_channels(self) -> int:
        """Channels of the model's target: the target folders' channels together."""
        return sum(self.target_channels)


def _key(path: Path) -> str:
    """A file's pair name: its name without suffix, in Unicode NFC (macOS writes accented names
    decomposed, other systems composed; both spellings are one name)."""
    return unicodedata.normalize("NFC", path.stem)


def _skipped(path: Path) -> bool:
    """Hidden files (`.DS_Store`, macOS `._name` copies) and folders are not images."""
    return path.name.startswith(".") or path.is_dir()


def list_images(folder: Path) -> dict[str, Path]:
    """Image files of a folder keyed by name without suffix (`_key`), hidden files and
    sub-folders skipped; errors name the folder."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not _skipped(p)
    )
    if not files:
        raise ValueError(f"{folder}: no images (suffixes {', '.join(IMAGE_SUFFIXES)})")
    stems: dict[str, Path] = {}
    for p in files:
        if _key(p) in stems:
            raise ValueError(
                f"{folder}: two files named {p.stem!r}: {stems[_key(p)].name}, {p.name}"
            )
        stems[_key(p)] = p
    return stems


def _not_read(folder: Path, names: set[str]) -> list[str]:
    """Files of `folder` named as one of `names` whose suffix is not an image's (e.g. .gif)."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if _key(p) in names and p.suffix.lower() not in IMAGE_SUFFIXES and not _skipped(p)
    )


def _listing(names: Sequence[str]) -> str:
    more = f" ... and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more


def match_pairs(root: Path, folders: Sequence[str]) -> list[list[Path]]:
    """Files with the same name in every folder, sorted; ValueError naming unmatched files (and
    files of those names not read for their suffix)."""
    listings = [list_images(root / f) for f in folders]
    common = set(listings[0]).intersection(*listings[1:])
    problems = []
    unmatched = set().union(*listings) - common
    for folder, files in zip(folders, listings, strict=True):
        alone = sorted(set(files) - common)
        if alone:
            problems.append(f"only in {folder}/: {_listing([files[s].name for s in alone])}")
        ignored = _not_read(root / folder, unmatched - set(files))
        if ignored:
            problems.append(
                f"not read in {folder}/, not an image suffix: {_listing(ignored)} (read: "
                f"{', '.join(IMAGE_SUFFIXES)})"
            )
    if problems:
        raise ValueError(f"{root}: unmatched files ({'; '.join(problems)})")
    return [[files[s] for files in listings] for s in sorted(common)]


_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 = as stored) from the header, without decoding the pixels (a PNG
    whose EXIF comes after its pixel data reads as 1 here; `read_image` still applies it)."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1  # Pillow would decode the whole image to look for it
    return image.getexif().get(ExifTags.Base.Orientation, 1)


def check_image(path: Path) -> tuple[int, int]:
    """Open the header; returns (width, height) as viewers show it (EXIF orientation applied).

    Raises:
        ValueError: naming a file that is not an image, or a cut-off JPEG or PNG (an
            interrupted copy or download).
    """
    try:
        with Image.open(path) as image:
            (width, height), orientation = image.size, _orientation(image)
            if image.format == "JPEG":  # verify() reads no JPEG data: decode at 1/8 scale,
                image.draft("RGB", (width // 8, height // 8))  # which finds a cut-off file
                image.load()
            else:
                image.verify()  # PNG: every chunk's CRC, so a cut-off file too
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e
    return (height, width) if orientation in _TRANSPOSED else (width, height)


def read_image(path: Path, channels: int) -> np.ndarray:
    """Decode to uint8 (H, W, channels) with `pilot.imageio.decode_image`: EXIF orientation
    applied (as viewers show it), 16-bit grey scaled to 8 bits, transparency over white (paper),
    grey/RGB as asked."""
    array = decode_image(path, "L" if channels == 1 else "RGB", alpha="white")
    return array[:, :, None] if array.ndim == 2 else array


def _to_tensor(array: np.ndarray, size: int) -> Tensor:
    """uint8 (H, W, C) -> float (C, size, size) in [-1, 1], bicubic (antialiased) resize."""
    x = torch.from_numpy(np.array(array)).permute(2, 0, 1).float()[None]  # writable copy
    x = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bicubic", antialias=True, align_corners=False
    )
    return (x[0] / 127.5 - 1.0).clamp(-1.0, 1.0)


def _check_sizes(files: Sequence[Path], sizes: Sequence[tuple[int, int]]) -> None:
    """ValueError naming every file of a pair whose sides differ in (width, height)."""
    if len(set(sizes)) > 1:
        listed = ", ".join(f"{p} {w}x{h}" for p, (w, h) in zip(files, sizes, strict=True))
        raise ValueError(f"pair {files[0].stem!r} mixes image sizes: {listed}")


UNFINISHED = ".pairs-unfinished"  # marker: a writer (`pilot.data.walls.write_pairs`) is not done


class PairedImages(Dataset):
    """Paired images under `root` (see the module doc); item -> {"A": (Ca, S, S), "B": (Cb, S, S)}.

    Args:
        root: the folder holding the side folders (or the side-by-side images).
        cfg: layout, folders, channels and sizes.
        augment: random crop and flip (training); otherwise a plain resize to `image_size`.
        names: restrict to these pair names (e.g. a validation split); None takes all.

    Augmentation draws from torch's global generator (seeded per worker by Lightning's
    `seed_everything(workers=True)`), so crops differ per epoch and reproduce per seed.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        cfg: PairedConfig,
        *,
        augment: bool = True,
        names: Sequence[str] | None = None,
    ) -> None:
        self.root, self.cfg, self.augment = Path(root), cfg, augment
        if (self.root / UNFINISHED).exists():
            raise ValueError(
                f"{self.root}: unfinished pairs ({UNFINISHED}: the writer was interrupted); "
                "run it again"
            )
        if cfg.layout == "side_by_side":
            self.pairs = [[p] for p in list_images(self.root).values()]
        else:
            self.pairs = match_pairs(self.root, cfg.inputs + cfg.targets)
        if names is not None:
            wanted = set(names)
            self.pairs = [p for p in self.pairs if _key(p[0]) in wanted]
        for files in self.pairs:
            _check_sizes(files, [check_image(path) for path in files])

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def names(self) -> list[str]:
        """Name of each pair (its first file's name without suffix), in item order."""
        return [_key(files[0]) for files in self.pairs]

    def _read_sides(self, files: list[Path]) -> list[np.ndarray]:
        cfg = self.cfg
        if cfg.layout == "side_by_side":
            path = files[0]
            a = read_image(path, cfg.input_channels[0])
            b = read_image(path, cfg.target_channels[0])
            half = a.shape[1] // 2
            return [a[:, :half], b[:, half : 2 * half]]
        channels = cfg.input_channels + cfg.target_channels
        arrays = [read_image(p, c) for p, c in zip(files, channels, strict=True)]
        _check_sizes(files, [(a.shape[1], a.shape[0]) for a in arrays])  # again, decoded
        return arrays

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        cfg = self.cfg
        arrays = self._read_sides(self.pairs[i])
        size = cfg.load_size if self.augment else cfg.image_size
        x = torch.cat([_to_tensor(a, size) for a in arrays])  # (Ca + Cb, size, size)
        if self.augment:
            top, left = torch.randint(0, size - cfg.image_size + 1, (2,)).tolist()
            x = x[
                :, top : top + cfg.image_size, left : left + cfg.image_size
            ]  # one crop, all sides
            if cfg.flip and torch.rand(()) < 0.5:
                x = x.flip(-1)
        return {"A": x[: cfg.in_channels], "B": x[cfg.in_channels :]}
