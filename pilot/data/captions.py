"""Captions of procedural renders from their scene parameters, and a tokenizer made from them.

A caption names what dominates the picture, from the parameters the renderer drew it with:

    "<colour> <material> <room>, <amount> <colour> fog"   e.g. "red brick corridor, thick blue fog"

- material and colour: those of the plane covering the most pixels (the render's `plane` pass):
  its material kind, and its colour named by hue (`colour_name`) as it *looks*: the mean of the
  fogged `image` pass over that plane's pixels when the image is given (a red wall deep in thick
  white fog is captioned "grey", as a person would see it), else the material's base colour;
- room: the layout (`room`, `corridor`; free-standing `walls` are a `yard`);
- fog: the scene's fog density in three bands and the fog colour's name.

Captions are pure functions of `(seed, index)` of a `pilot.data.walls` data set plus the plane
pass, so they are as deterministic as the renders. The grammar's words are a closed set
(`caption_words`): `build_tokenizer` makes a CLIP BPE tokenizer whose merges build every one of
them into a single `word</w>` symbol, so a caption tokenizes to one id per word (and the comma),
while any other text still tokenizes byte by byte without unknown symbols.
"""

from __future__ import annotations

import colorsys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from pilot.data.walls import sample_item
from pilot.models.tokenizer import BOS_TOKEN, EOS_TOKEN, CLIPTokenizer, bytes_to_unicode
from pilot.scenes import layouts, materials
from pilot.scenes.render import Scene

MATERIAL_WORDS = ("brick", "tile", "panel", "plaster")  # per `materials.KINDS`
ROOM_WORDS = {"room": "room", "corridor": "corridor", "walls": "yard"}  # per layout
# Hue bands in degrees (upper bounds) and their names; red wraps around 360.
HUES = ((15, "red"), (45, "orange"), (70, "yellow"), (165, "green"), (200, "teal"))
HUES += ((260, "blue"), (330, "purple"), (360, "red"))
GREY_SATURATION = 0.2  # HSV saturation below which a wall colour is "grey"
FOG_GREY_SATURATION = 0.1  # fog colours are pale (0.55 .. 0.95 per channel): "white" below this
FOG_AMOUNTS = ((0.06, "thin"), (0.14, "soft"), (float("inf"), "thick"))  # density per metre


@dataclass(frozen=True)
class SceneWords:
    """The words of one caption (see the module docstring for the grammar)."""

    colour: str
    material: str
    room: str
    fog_amount: str
    fog_colour: str

    def text(self) -> str:
        """The caption, e.g. "red brick corridor, thick blue fog"."""
        return f"{self.colour} {self.material} {self.room}, {self.fog_amount} {self.fog_colour} fog"


def colour_name(rgb: Sequence[float], grey_saturation: float = GREY_SATURATION) -> str:
    """The hue band name of an RGB colour in [0, 1] ("grey" when its saturation is low)."""
    hue, sat, _ = colorsys.rgb_to_hsv(*(float(c) for c in rgb))
    if sat < grey_saturation:
        return "grey"
    degrees = hue * 360
    return next(name for bound, name in HUES if degrees < bound)


def fog_amount(density: float) -> str:
    """ "thin", "soft" or "thick" for a fog density per metre (`layouts.LayoutConfig` range)."""
    return next(name for bound, name in FOG_AMOUNTS if density < bound)


def dominant_plane(plane: Tensor) -> int:
    """Index of the plane covering the most pixels of a (1, H, W) or (H, W) plane pass.

    Sky (-1) is ignored; an all-sky view gives plane 0. Ties go to the lower index.
    """
    visible = plane[plane >= 0]
    if visible.numel() == 0:
        return 0
    return int(torch.bincount(visible.flatten()).argmax())


def region_colour(image: Tensor, mask: Tensor) -> str:
    """Colour name of the mean of `image` (3, H, W) in [0, 1] over `mask` (H, W) (all if empty)."""
    mean_rgb = image[:, mask].mean(1) if mask.any() else image.mean((1, 2))
    return colour_name(mean_rgb.tolist())


def describe(scene: Scene, layout: str, plane: Tensor, image: Tensor | None = None) -> SceneWords:
    """The caption words of a one-scene `Scene` seen with the plane pass `plane` (1, H, W).

    Args:
        image: (3, H, W) the fogged render in [0, 1]: the wall colour is named as it looks there
            (`region_colour` over the dominant plane); None names the material's base colour.
    """
    if layout not in ROOM_WORDS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {list(ROOM_WORDS)}")
    index = dominant_plane(plane)
    row = scene.material[0, index]  # (N_FIELDS,)
    if image is None:
        colour = colour_name(row[materials.RGB].tolist())
    else:
        colour = region_colour(image, plane.reshape(image.shape[1:]) == index)
    return SceneWords(
        colour=colour,
        material=MATERIAL_WORDS[int(row[materials.KIND])],
        room=ROOM_WORDS[layout],
        fog_amount=fog_amount(float(scene.fog_density[0])),
        fog_colour=colour_name(scene.fog_rgb[0].tolist(), FOG_GREY_SATURATION).replace(
            "grey", "white"
        ),
    )


def caption_items(
    seed: int,
    indices: Iterable[int],
    planes: Tensor,
    layout_names: Sequence[str] = layouts.LAYOUTS,
    cfg: layouts.LayoutConfig | None = None,
    images: Tensor | None = None,
) -> list[str]:
    """Captions of items `indices` of the `pilot.data.walls` data set `seed`.

    Args:
        planes: (N, 1, H, W) long plane passes of those items (`render_pairs(...)["plane"]`).
        layout_names, cfg: as given to `render_pairs` (they decide the scenes).
        images: (N, 3, H, W) their fogged `image` passes: colours named as seen (`describe`).
    """
    indices = list(indices)
    if len(indices) != len(planes):
        raise ValueError(f"{len(indices)} indices but {len(planes)} plane passes")
    if images is not None and images.shape[0] != len(planes):
        raise ValueError(f"{images.shape[0]} images but {len(planes)} plane passes")
    captions = []
    for j, (i, plane) in enumerate(zip(indices, planes, strict=True)):
        scene, _, _, k = sample_item(seed, i, layout_names, cfg)
        image = None if images is None else images[j]
        captions.append(describe(scene, layout_names[k], plane, image).text())
    return captions


def caption_words() -> list[str]:
    """Every word the caption grammar can produce, sorted."""
    colours = {name for _, name in HUES} | {"grey", "white"}
    amounts = {name for _, name in FOG_AMOUNTS}
    return sorted(colours | amounts | set(MATERIAL_WORDS) | set(ROOM_WORDS.values()) | {"fog"})


def _merge(word: list[str], pair: tuple[str, str]) -> list[str]:
    """Merge every non-overlapping occurrence of `pair` in `word`, left to right."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Byte-pair merges that build each word into one `word</w>` symbol (Sennrich et al. 2016).

    Classic BPE learning on the distinct words, run until none is left in pieces: repeatedly
    merge the most frequent adjacent pair (ties: the smallest pair, so the result is
    deterministic). Words are byte-mapped as CLIP's tokenizer maps them.
    """
    enc = bytes_to_unicode()
    pieces = []
    for w in sorted(set(words)):
        chars = [enc[b] for b in w.encode("utf-8")]
        if not chars:
            raise ValueError("empty word in the caption vocabulary")
        pieces.append([*chars[:-1], chars[-1] + "</w>"])
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for p in pieces for pair in pairwise(p))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        pieces = [_merge(p, best) for p in pieces]


def build_tokenizer(words: Iterable[str] | None = None) -> CLIPTokenizer:
    """A small CLIP BPE tokenizer whose vocabulary holds every caption word whole.

    Vocabulary in CLIP's order: the 256 byte symbols, the same with `</w>`, one symbol per merge
    (`learn_merges`), then BOS and EOS (EOS also pads, as in SD 1.x).

    Args:
        words: The words to keep whole; default `caption_words()`.

    Raises:
        ValueError: a word does not tokenize to one symbol (e.g. it holds a space or a comma).
    """
    words = caption_words() if words is None else list(words)
    merges = learn_merges(words)
    chars = list(bytes_to_unicode().values())
    symbols = [*chars, *(c + "</w>" for c in chars), *(a + b for a, b in merges)]
    symbols = list(dict.fromkeys([*symbols, BOS_TOKEN, EOS_TOKEN]))  # a merge may repeat a symbol
    tokenizer = CLIPTokenizer({s: i for i, s in enumerate(symbols)}, merges)
    split = [w for w in words if len(tokenizer.encode(w)) != 1]
    if split:
        raise ValueError(f"words {split} do not tokenize to one symbol (spaces or punctuation?)")
    return tokenizer
