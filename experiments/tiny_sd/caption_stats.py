"""Caption statistics of the tiny SD training data: word balance and whether captions are right.

    python -m experiments.tiny_sd.caption_stats --count 512 --size 64

Prints, for `count` items of the captioned render set: the number of distinct captions, the
frequency of each word per caption slot, the mean share of the image covered by the captioned
(dominant) plane, and how often the caption's colour word equals the name of that plane's mean
*rendered* colour over its pixels, in the lit `textured` pass (before fog) and in the fogged
`image` the models train on. Captions name the colour as it looks in the fogged image
(`pilot.data.captions.describe`), so the latter is 1 by construction: a perfect generator passes
the "prompted colour dominates" check of issue 8; the former says how often fog changes the name.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from pilot.data.captions import caption_items, dominant_plane, region_colour
from pilot.data.walls import render_pairs

SLOTS = ("colour", "material", "room", "fog amount", "fog colour")


def caption_stats(count: int, size: int, seed: int) -> dict:
    """Word counts per slot, distinct captions, coverage and colour agreement (see module doc)."""
    slots = [Counter() for _ in SLOTS]
    captions, coverage = [], []
    agree = {"textured": 0, "image": 0}
    for lo in range(0, count, 128):
        n = min(128, count - lo)
        out = render_pairs(n, size, seed, start=lo)
        caps = caption_items(seed, range(lo, lo + n), out["plane"], images=out["image"])
        for j, (cap, plane) in enumerate(zip(caps, out["plane"], strict=True)):
            words = cap.replace(",", "").split()
            for slot, word in zip(slots, words[:5], strict=True):  # words[5] is "fog"
                slot[word] += 1
            mask = plane[0] == dominant_plane(plane)  # (S, S)
            coverage.append(mask.float().mean().item())
            for name in agree:
                agree[name] += region_colour(out[name][j], mask) == words[0]
        captions += caps
    return {
        "count": count,
        "distinct": len(set(captions)),
        "slots": {name: dict(c.most_common()) for name, c in zip(SLOTS, slots, strict=True)},
        "coverage": sum(coverage) / len(coverage),
        "colour_agreement": {name: n / count for name, n in agree.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=512)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    stats = caption_stats(args.count, args.size, args.seed)
    print(f"{stats['count']} items, {stats['distinct']} distinct captions")
    for name, words in stats["slots"].items():
        print(f"  {name:10s} " + ", ".join(f"{w} {n}" for w, n in words.items()))
    print(f"captioned plane covers {stats['coverage']:.0%} of the image on average")
    for name, rate in stats["colour_agreement"].items():
        print(f"caption colour = name of the plane's mean colour in {name}: {rate:.0%}")


if __name__ == "__main__":
    main()
