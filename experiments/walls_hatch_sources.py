"""Does a walls conditioner work on drawn hatching as well as on the renderer's own? A procedural
fly-through (`pilot shot render`) is given to each checkpoint twice: with the renderer's hatched
pass (what the conditioner was trained on), and with the pass `pilot shot hatch` draws from depth
and normals (what a Blender export gets). Texture PSNR and fog correlation against the renderer's
true texture and fog, per checkpoint and source, as JSON.

    python -m experiments.walls_hatch_sources --checkpoint \
        runs/walls_transpose/checkpoints/last.ckpt runs/walls_resize/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from experiments.walls_eval import finite, load_walls_generator
from pilot.scenes.layouts import fly_through
from pilot.scenes.render import render
from pilot.scenes.sketch import hatched_pass
from train.metrics import head_metrics


def quantise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> 8-bit steps in [-1, 1], as the passes are when read back from PNG."""
    return x.clamp(0, 1).mul(255).round().div(127.5).sub(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", nargs="+", required=True, help="Pix2Pix walls models")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--density", type=float, default=10.0, help="drawn lines per metre")
    args = parser.parse_args()
    try:  # before any frame is rendered
        generators = {c: load_walls_generator(c) for c in args.checkpoint}
    except ValueError as e:
        parser.error(str(e))
    scene, path = fly_through(np.random.default_rng(args.seed))
    c2w = path.poses(args.frames)
    K = path.intrinsics(args.size, args.size).expand(args.frames, 3, 3)
    out = {k: [] for k in ("hatched", "textured", "fog", "depth", "normals")}
    for i in range(args.frames):
        frame = render(scene, K[i : i + 1], c2w[i : i + 1], args.size, args.size)
        for k in out:
            out[k].append(frame[k])
    out = {k: torch.cat(v) for k, v in out.items()}
    drawn = hatched_pass(out["depth"], out["normals"], K, c2w, density=args.density)
    sources = {"renderer": quantise(out["hatched"]), "drawn": quantise(drawn)}
    texture, fog = quantise(out["textured"]), quantise(out["fog"])
    results = {}
    for checkpoint, generator in generators.items():
        for name, hatched in sources.items():
            with torch.no_grad():
                heads = [generator.split_heads(generator(x)) for x in hatched.split(16)]
            pred = {k: torch.cat([h[k] for h in heads]) for k in ("texture", "fog")}
            t, f = head_metrics(pred["texture"], texture), head_metrics(pred["fog"], fog)
            results[f"{checkpoint} | {name}"] = {
                "texture_psnr": round(t["psnr"], 2),
                "fog_corr": round(f["corr"], 3),
                "fog_corr_per_image": round(f["corr_per_image"], 3),
                "fog_l1": round(f["l1"], 3),
            }
    print(json.dumps(finite({"frames": args.frames, "size": args.size, **results}), indent=1))


if __name__ == "__main__":
    main()
