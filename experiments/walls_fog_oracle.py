"""How well can any conditioner predict the walls data's fog? An oracle bound.

The fog channel is `1 - exp(-density * ray length)`. A conditioner sees only the hatched input:
at best it recovers the geometry (ray lengths) exactly, but a density drawn at random per scene
leaves no trace there. This oracle knows the true ray lengths and uses one density for every
scene (the mean, the median, ...): its correlation with the true fog is the ceiling that the
density's randomness leaves. With a fixed density it is exact but for the open-air yards, whose
fog is 0.4x (a model sees the layout; this oracle does not).

    python -m experiments.walls_fog_oracle                          # random density: 0.87-0.88
    python -m experiments.walls_fog_oracle --fog-density 0.1 0.1    # fixed density: 0.95-0.96
"""

from __future__ import annotations

import argparse
import json

import torch

from pilot.data.walls import render_pairs, sample_item
from pilot.scenes.layouts import LayoutConfig
from train.metrics import pearson, pearson_per_image


def oracle_fog(fog: torch.Tensor, density: torch.Tensor, guess: float) -> torch.Tensor:
    """The fog of ray lengths read back from `fog` (N, 1, H, W) at per-scene `density` (N,),
    recomputed with the single density `guess` (sky stays 1)."""
    ratio = (guess / density)[:, None, None, None]
    return torch.where(fog >= 1, 1.0, 1 - (1 - fog).clamp_min(1e-12) ** ratio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fog-density", type=float, nargs=2, default=[0.02, 0.25])
    args = parser.parse_args()
    cfg = LayoutConfig(fog_density=tuple(args.fog_density))
    fog = render_pairs(args.n, args.size, args.seed, cfg=cfg)["fog"]
    density = torch.tensor(
        [float(sample_item(args.seed, i, cfg=cfg)[0].fog_density[0]) for i in range(args.n)]
    )
    report = {"scenes": args.n, "fog_density": args.fog_density}
    for name, guess in (("mean", density.mean()), ("median", density.median())):
        pred = oracle_fog(fog, density, float(guess))
        report[f"oracle_{name}_density"] = {
            "density": round(float(guess), 4),
            "fog_corr": round(pearson(pred, fog), 4),
            "fog_corr_per_image": round(pearson_per_image(pred, fog), 4),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
