"""Acceptance check of the triangles DCGAN: the share of 256 samples that the OpenCV shape check
(`pilot.data.shape_check`) accepts as one filled, centred triangle.

    python -m experiments.triangles_eval --checkpoint runs/triangles_dcgan/checkpoints/last.ckpt \
        --grid experiments/figures/triangles_samples.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pilot.animation.video import to_uint8, write_frame
from pilot.data.shape_check import acceptance_rate
from pilot.data.triangles import ShapesConfig, TrianglesDataset
from pilot.weights.gan import load_generator


def sample(generator: torch.nn.Module, n: int, seed: int) -> np.ndarray:
    """n samples as uint8 (n, S, S, 3), generator in eval mode, latents from `seed`."""
    z = torch.randn(n, generator.cfg.latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        images = generator(z)
    return to_uint8(images.permute(0, 2, 3, 1).numpy())


def grid(images: np.ndarray, ncol: int = 16) -> np.ndarray:
    """(N, S, S, 3) -> one (rows S, ncol S, 3) sheet."""
    n, s = images.shape[:2]
    rows = -(-n // ncol)
    sheet = np.zeros((rows * s, ncol * s, 3), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, ncol)
        sheet[r * s : (r + 1) * s, c * s : (c + 1) * s] = image
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("-n", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--grid", type=Path, help="write the first 64 samples as a PNG sheet")
    args = parser.parse_args()
    _, generator = load_generator(args.checkpoint, kind="dcgan")
    images = sample(generator, args.n, args.seed)
    rate, reasons = acceptance_rate(images)
    real = torch.stack([TrianglesDataset(ShapesConfig(length=args.n))[i] for i in range(args.n)])
    real_rate, _ = acceptance_rate(to_uint8(real.permute(0, 2, 3, 1).numpy()))
    if args.grid:
        write_frame(grid(images[:64]), args.grid)
    report = {"samples": args.n, "accepted": rate, "rejected_by": reasons, "real_data": real_rate}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
