"""Probe: does the tiny SD VAE learn colour? (issue 8; found: not with an RGB L1, see README)

Trains a fresh `train.tiny_sd.TINY_VAE`-shaped VAE for a few hundred steps and prints, every
`--every` steps, the training loss, the held-out PSNR and the *colour spread* of held-out
reconstructions next to that of the renders: per image, max - min of the mean R, G, B (in
[-1, 1]), averaged over images. A VAE that learns luminance only scores a fine PSNR on these
fogged renders with a spread near 0.

    python -m experiments.tiny_sd.vae_colour_probe                  # random batches of 2000
    python -m experiments.tiny_sd.vae_colour_probe --fixed-batch    # overfit 16 renders
    python -m experiments.tiny_sd.vae_colour_probe --loss mse --logvar-bias -6 --groups 16
    python -m experiments.tiny_sd.vae_colour_probe --chroma-weight 4  # L1 in Y Cb Cr (the fix)

Seen on this CPU (300 steps, batch 16, lr 4.5e-4, groups 4): random batches 0.025 -> 0.016
(renders 0.150); MSE 0.042 -> 0.029 at 200 steps; logvar bias -6 0.035 -> 0.014; a fixed batch
of 16 renders 0.124 -> 0.174 (renders 0.180); one group 0.041 -> 0.028, two 0.040 -> 0.021.
L1 in Y Cb Cr: chroma weight 1 0.048 -> 0.032, weight 2 0.029 -> 0.035 (200 steps), weight 4
0.051 -> 0.066 (PSNR 20.5 dB; the full stage then learns colour, see vae.yaml).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from pilot.data.captioned import CaptionedRenders
from pilot.models.vae import AutoencoderKL
from train.metrics import colour_spread, psnr
from train.tiny_sd import TINY_VAE, vae_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=4.5e-4)
    p.add_argument("--groups", type=int, default=TINY_VAE.norm_num_groups)
    p.add_argument("--loss", choices=["l1", "mse"], default="l1")
    p.add_argument("--chroma-weight", type=float, help="L1 in Y Cb Cr, weights (1, w, w)")
    p.add_argument("--logvar-bias", type=float, default=0.0, help="added to the initial logvar")
    p.add_argument("--fixed-batch", action="store_true", help="train on one batch (overfit)")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = CaptionedRenders(args.batch if args.fixed_batch else args.count, 64, 0).images
    val = data if args.fixed_batch else CaptionedRenders(64, 64, 0, start=args.count).images
    vae = AutoencoderKL(replace(TINY_VAE, norm_num_groups=args.groups))
    with torch.no_grad():
        vae.quant_conv.bias[vae.cfg.latent_channels :] += args.logvar_bias
    opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    print(f"renders' colour spread {colour_spread(val):.4f}")
    for step in range(args.steps + 1):
        x = data if args.fixed_batch else data[torch.randint(len(data), (args.batch,), generator=g)]
        if args.loss == "l1":
            loss = vae_loss(vae, x, 1e-6, args.chroma_weight)["loss"]
        else:
            loss = (vae.decode(vae.encode(x).sample()) - x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0:
            with torch.no_grad():
                recon = vae.decode(vae.encode(val).mode()).clamp(-1, 1)
            print(
                f"step {step:4d}  loss {loss.item():.4f}  PSNR {psnr(recon, val):.2f} dB  "
                f"colour spread {colour_spread(recon):.4f}  ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
