"""Captioned procedural renders: (image, caption, depth) triples for text-to-image training.

The images are `pilot.data.walls` renders (the fogged colour `image` pass), the captions come
from their scene parameters and the wall colour as it looks in that image
(`pilot.data.captions`), and the depth is the render's z-depth, also
given as a ControlNet depth control image (`pilot.control.depth.depth_to_control`). Item `i` is a
pure function of `(seed, start + i)`: a held-out set is the same seed from another `start`.

    ds = CaptionedRenders(2000, 64, seed=0)              # training items 0 .. 1999
    val = CaptionedRenders(64, 64, seed=0, start=2000)   # held out: never seen in training
    ds[0] -> {"image": (3, 64, 64) in [-1, 1], "depth": (1, 64, 64) metres,
              "control": (3, 64, 64) in [0, 1] near = bright, "caption": str, "index": int}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from pilot.control.depth import depth_to_control
from pilot.data.captions import caption_items
from pilot.data.walls import render_pairs
from pilot.scenes import layouts
from pilot.scenes.render import RenderConfig

CHUNK = 256  # items rendered at once: bounds the memory of the passes not kept


class CaptionedRenders(Dataset):
    """`n` captioned renders at `size` x `size`, rendered once into memory.

    Args:
        n: Number of items.
        size: Image side in pixels (a multiple of 8 for SD's VAE).
        seed: Data set seed (`pilot.data.walls.render_pairs`).
        start: Index of the first item in the data set.
        layout_names: Layouts drawn from (see `pilot.scenes.layouts`).
        batch: Scenes rendered per `render` call.
    """

    def __init__(
        self,
        n: int,
        size: int,
        seed: int,
        *,
        start: int = 0,
        layout_names: Sequence[str] = layouts.LAYOUTS,
        batch: int = 16,
    ) -> None:
        if size % 8:
            raise ValueError(f"size={size} must be a multiple of 8 (the VAE's factor)")
        self.size, self.seed, self.start = size, seed, start
        images, depths, self.captions = [], [], []
        for lo in range(start, start + n, CHUNK):
            m = min(CHUNK, start + n - lo)
            out = render_pairs(m, size, seed, start=lo, layout_names=layout_names, batch=batch)
            images.append(out["image"] * 2 - 1)  # (m, 3, S, S) in [-1, 1]
            depths.append(out["depth"])  # (m, 1, S, S) metres, RenderConfig.far on sky
            self.captions += caption_items(
                seed, range(lo, lo + m), out["plane"], layout_names, images=out["image"]
            )
        self.images, self.depth = torch.cat(images), torch.cat(depths)
        # Sky (depth >= far) is no surface: black in the control image.
        self.control = depth_to_control(self.depth, far=RenderConfig().far)  # (n, 3, S, S)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Tensor | str | int]:
        return {
            "image": self.images[i],
            "depth": self.depth[i],
            "control": self.control[i],
            "caption": self.captions[i],
            "index": self.start + i,
        }
