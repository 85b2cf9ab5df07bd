"""Held-out checks of a trained tiny SD (issue 8's acceptance measures), as JSON.

    python -m experiments.tiny_sd.evaluate runs/tiny_sd/export --count 32 --out metrics.json

On `count` renders after the training set (never trained on), at the training size:

- `vae_psnr`: PSNR (dB) of VAE reconstructions (posterior mean) of the renders.
- `colour_match`: share of depth-controlled samples of each render's caption whose captioned
  plane (the render's dominant plane, same pixels) has the caption's colour name
  (`pilot.data.captions.region_colour`); `colour_match_renders` is the same check on the renders
  themselves (1 when captions name colours as seen, see `pilot.data.captions`);
  `colour_match_non_grey` leaves out the captions whose colour is "grey" (about half: fog
  greys walls), the easy case, counted in `non_grey_count`.
- `edge_corr`: mean per-image correlation of soft edge maps of samples and their renders;
  `edge_corr_chance` pairs each sample with another render instead (structure not followed).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch import Tensor

import pilot
from pilot.control.edges import soft_edges
from pilot.data.captioned import CaptionedRenders
from pilot.data.captions import dominant_plane, region_colour
from pilot.data.walls import render_pairs
from pilot.diffusion.control import Control
from pilot.diffusion.pipeline import Request, SamplingSettings, generate
from train.metrics import pearson_per_image, psnr


@torch.no_grad()
def controlled_samples(
    sd, controlnet, data: CaptionedRenders, settings, batch: int, control_scale: float = 1.0
) -> Tensor:
    """Depth-controlled samples (N, 3, S, S) in [0, 1] of every item's caption, seed = index."""
    out = []
    for lo in range(0, len(data), batch):
        items = [data[i] for i in range(lo, min(lo + batch, len(data)))]
        request = Request(
            prompts=[it["caption"] for it in items],
            seeds=[it["index"] for it in items],
            width=data.size,
            height=data.size,
        )
        images = torch.stack([it["control"] for it in items])
        control = Control(controlnet, images, scale=control_scale)
        out.append(generate(sd, request, settings, controls=[control]))
    return torch.cat(out)


def evaluate(
    sd,
    controlnet,
    count: int,
    size: int,
    seed: int,
    start: int,
    settings,
    batch: int = 8,
    control_scale: float = 1.0,
) -> dict:
    """The metrics of the module docstring for a pipeline and its depth ControlNet."""
    data = CaptionedRenders(count, size, seed, start=start)
    with torch.no_grad():
        recon = torch.cat(
            [sd.vae.decode(sd.vae.encode(x).mode()) for x in data.images.split(batch)]
        ).clamp(-1, 1)
    samples = controlled_samples(sd, controlnet, data, settings, batch, control_scale)  # [0, 1]
    renders = (data.images + 1) / 2
    planes = render_pairs(count, size, seed, start=start)["plane"]
    colours = [c.split()[0] for c in data.captions]
    masks = [p[0] == dominant_plane(p) for p in planes]

    def match(images: Tensor, skip_grey: bool = False) -> float:
        hits = [
            region_colour(im, m) == c
            for im, m, c in zip(images, masks, colours, strict=True)
            if not (skip_grey and c == "grey")
        ]
        return sum(hits) / max(len(hits), 1)

    edges_s, edges_r = soft_edges(samples)[:, :1], soft_edges(renders)[:, :1]
    return {
        "count": count,
        "size": size,
        "start": start,
        "sampling": {
            "sampler": settings.sampler,
            "steps": settings.steps,
            "cfg": settings.cfg,
            "control_scale": control_scale,
        },
        "vae_psnr": psnr(recon, data.images),
        "colour_match": match(samples),
        "colour_match_renders": match(renders),
        "colour_match_non_grey": match(samples, skip_grey=True),
        "non_grey_count": sum(c != "grey" for c in colours),
        "edge_corr": pearson_per_image(edges_s, edges_r),
        "edge_corr_chance": pearson_per_image(edges_s, edges_r.roll(1, dims=0)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export", type=Path, help="folder holding pipeline/ and controlnet_depth/")
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=2064, help="first item (after train + val)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--control-scale", type=float, default=1.0, help="depth ControlNet scale")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="write the metrics here as JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    settings = SamplingSettings(sampler="euler", steps=args.steps, cfg=args.cfg)
    sd = pilot.load_pipeline(args.export / "pipeline")
    controlnet = pilot.load_controlnet(args.export / "controlnet_depth")
    metrics = evaluate(
        sd, controlnet, args.count, args.size, args.seed, args.start, settings,
        control_scale=args.control_scale,
    )  # fmt: skip
    text = json.dumps(metrics, indent=1)
    print(text)
    if args.out is not None:
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
