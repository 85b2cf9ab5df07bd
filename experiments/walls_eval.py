"""Acceptance check of the hatched-walls conditioner on held-out pairs: texture L1 / PSNR and fog
correlation of the model against the input-copy and mean-image baselines, and the texture
ceiling of a colour-blind oracle (true structure, mean colour: wall colours are random per
scene and absent from the hatched input). `checkerboard` (every row) is the amplitude of a
period-2 pixel pattern (`train.metrics.checkerboard`); the targets' own is the reference.

    python -m experiments.walls_eval --checkpoint runs/hatched_walls_pix2pix/checkpoints/last.ckpt

The pairs are read at the model's side (`--size`, default the checkpoint's image size).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from typing import Any

import torch

from pilot.data.paired import PairedConfig, PairedImages
from pilot.weights.gan import load_generator
from train.metrics import checkerboard, head_metrics, input_copy, mean_image, split

WALLS_HEADS = {"texture": 3, "fog": 1}  # the heads of experiments/hatched_walls_pix2pix.yaml
WALLS = PairedConfig(
    inputs=("hatched",),
    input_channels=(1,),
    targets=("textured", "fog"),
    target_channels=(3, 1),
    image_size=128,
    load_size=128,
)


def load_walls_generator(path: str) -> torch.nn.Module:
    """The walls conditioner in `path` (Pix2Pix generator, eval mode).

    Raises:
        ValueError: (one line, naming the file) unreadable, not a Pix2Pix generator, or not a
            walls conditioner: one input channel (hatched) and the heads `WALLS_HEADS`.
    """
    _, generator = load_generator(path, kind="pix2pix")
    cfg = generator.cfg
    heads = dict(zip(cfg.head_names, cfg.head_channels, strict=True))
    if cfg.in_channels != 1 or heads != WALLS_HEADS:
        raise ValueError(
            f"{path}: not a walls conditioner: it takes {cfg.in_channels} input channels and has "
            f"heads {heads}; expected 1 (hatched) and {WALLS_HEADS}, as "
            "experiments/hatched_walls_pix2pix.yaml trains"
        )
    return generator


def finite(x: Any) -> Any:
    """`x` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def stack(dataset: PairedImages, limit: int) -> dict[str, torch.Tensor]:
    items = [dataset[i] for i in range(min(limit, len(dataset)))]
    return {k: torch.stack([it[k] for it in items]) for k in ("A", "B")}


def evaluate(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Texture and fog metrics of one prediction (N, 4, S, S) against the targets."""
    (p_tex, p_fog), (t_tex, t_fog) = split(pred, (3, 1)), split(target, (3, 1))  # WALLS_HEADS
    return {**head_metrics(p_tex, t_tex, "texture_"), **head_metrics(p_fog, t_fog, "fog_")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument(
        "--root", default="runs/data/walls128fog", help="training pairs (mean image)"
    )
    parser.add_argument("--val-root", default="runs/data/walls128fog_val", help="held-out pairs")
    parser.add_argument("--mean-count", type=int, default=1000)
    parser.add_argument("--size", type=int, help="side to evaluate at (default: the model's)")
    args = parser.parse_args()
    try:
        generator = load_walls_generator(args.checkpoint)
        size = generator.cfg.image_size if args.size is None else args.size
        if size <= 0 or size % generator.cfg.image_size:
            raise ValueError(f"--size={size} must be a multiple of the model's side")
        walls = replace(WALLS, image_size=size, load_size=size)
        held = stack(PairedImages(args.val_root, walls, augment=False), 10_000)
        train = stack(PairedImages(args.root, walls, augment=False), args.mean_count)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    with torch.no_grad():
        heads = [generator.split_heads(generator(a)) for a in held["A"].split(16)]
    pred = torch.cat([torch.cat([h[name] for name in WALLS_HEADS], 1) for h in heads])
    n = len(held["A"])
    results = {
        "model": evaluate(pred, held["B"]),
        "input_copy": evaluate(input_copy(held["A"], 4), held["B"]),
        "mean_image": evaluate(mean_image(train["B"], n), held["B"]),
    }
    # The texture ceiling: no model can tell a scene's random wall colours from its hatched
    # input; this oracle has the true texture's structure but the training set's mean colour.
    tex = held["B"][:, :3]
    mean_rgb = train["B"][:, :3].float().mean((0, 2, 3), keepdim=True)
    oracle = (tex - tex.mean((2, 3), keepdim=True) + mean_rgb).clamp(-1, 1)
    results["colour_blind_oracle"] = head_metrics(oracle, tex, "texture_")
    results["targets"] = {
        "texture_checkerboard": checkerboard(tex),
        "fog_checkerboard": checkerboard(held["B"][:, 3:]),
    }
    print(json.dumps(finite({"held_out_pairs": n, "size": size, **results}), indent=1))


if __name__ == "__main__":
    main()
