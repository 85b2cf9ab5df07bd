"""Caption statistics of the tiny SD training data: word balance and whether captions are right.

    python -m experiments.tiny_sd.caption_stats --count 512 --size 64

Prints, for `count` items of the captioned render set: the number of distinct captions, the
frequency of each word per caption slot, the mean share of the image covered by the captioned
(dominant) plane, and how often the caption's colour word equals the name of that plane's mean
*rendered* colour (the lit `textured` pass over its pixels, before fog): an upper bound for the
"prompted colour dominates" check of issue 8 that a perfect generator could reach.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from pilot.data.captions import caption_items, colour_name, dominant_plane
from pilot.data.walls import render_pairs

SLOTS = ("colour", "material", "room", "fog amount", "fog colour")


def caption_stats(count: int, size: int, seed: int) -> dict:
    """Word counts per slot, distinct captions, coverage and colour agreement (see module doc)."""
    slots = [Counter() for _ in SLOTS]
    captions, coverage, agree = [], [], 0
    for lo in range(0, count, 128):
        n = min(128, count - lo)
        out = render_pairs(n, size, seed, start=lo)
        caps = caption_items(seed, range(lo, lo + n), out["plane"])
        for cap, plane, textured in zip(caps, out["plane"], out["textured"], strict=True):
            words = cap.replace(",", "").split()
            for slot, word in zip(slots, [*words[:4], words[4]], strict=True):
                slot[word] += 1
            mask = plane[0] == dominant_plane(plane)  # (S, S)
            coverage.append(mask.float().mean().item())
            mean_rgb = textured[:, mask].mean(1) if mask.any() else textured.mean((1, 2))
            agree += colour_name(mean_rgb.tolist()) == words[0]
        captions += caps
    return {
        "count": count,
        "distinct": len(set(captions)),
        "slots": {name: dict(c.most_common()) for name, c in zip(SLOTS, slots, strict=True)},
        "coverage": sum(coverage) / len(coverage),
        "colour_agreement": agree / count,
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
    print(f"caption colour = name of the plane's rendered colour: {stats['colour_agreement']:.0%}")


if __name__ == "__main__":
    main()
