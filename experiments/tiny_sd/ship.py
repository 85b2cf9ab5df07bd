"""Ship the trained tiny SD: fp16 copies of the exports inside the package, and a model card.

    python -m experiments.tiny_sd.ship runs/tiny_sd --metrics runs/tiny_sd/metrics.json

Reads `<runs>/export/{pipeline,controlnet_depth}` (the ends of `experiments/tiny_sd/train.sh`),
writes them in float16 (half the bytes; `pilot.load_pipeline(..., dtype=torch.float32)` restores
float32 for the CPU) to `pilot/assets/tiny_sd/{pipeline,controlnet_depth}`, checks that the
float16 copy generates what the float32 export does (max abs difference printed and recorded),
and writes `pilot/assets/tiny_sd/MODEL_CARD.md` from the training logs (steps, final losses of
every stage, from `<runs>/<stage>/csv/version_*/metrics.csv`) and the held-out metrics JSON of
`experiments.tiny_sd.evaluate`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import torch

import pilot
from pilot.cli import report_errors
from pilot.diffusion.control import Control
from pilot.diffusion.pipeline import Request, SamplingSettings, generate
from pilot.weights.save import save_controlnet, save_pipeline

ASSETS = Path(__file__).resolve().parents[2] / "pilot" / "assets" / "tiny_sd"
# as experiments/tiny_sd/train.sh runs them; a run may skip the anneals (STAGES="vae unet ...")
STAGES = ("vae", "vae_anneal", "unet", "unet_anneal", "controlnet")
OPTIONAL = {"vae_anneal", "unet_anneal"}
LOSS = {stage: "l1" if stage.startswith("vae") else "loss" for stage in STAGES}  # logged


def stage_log(runs: Path, stage: str) -> dict:
    """Last step, the mean of the last 10 logged values of the stage's loss and, where the stage
    validates (the VAE), its last held-out PSNR and colour spread (reconstructions, renders)."""
    logged = []
    for path in sorted((runs / stage / "csv").glob("version_*/metrics.csv")):
        with open(path, newline="") as f:
            logged += list(csv.DictReader(f))
    rows = [r for r in logged if r.get(LOSS[stage])]  # training rows; validation rows apart
    if not rows:
        raise FileNotFoundError(
            f"{runs / stage / 'csv'}/*/metrics.csv: no {LOSS[stage]!r} rows; the {stage} stage has "
            f"not logged its loss yet (it logs every trainer.log_every_n_steps steps)"
        )
    psnr = [float(r["val/psnr"]) for r in logged if r.get("val/psnr")]
    last = [float(r[LOSS[stage]]) for r in rows[-10:]]
    out = {"steps": int(rows[-1]["step"]) + 1, LOSS[stage]: sum(last) / len(last)}
    if psnr:
        out["val_psnr"] = psnr[-1]
    spread = [
        (float(r["val/colour_spread"]), float(r["val/colour_spread_true"]))
        for r in logged
        if r.get("val/colour_spread")
    ]
    if spread:
        out["val_colour_spread"], out["val_colour_spread_true"] = spread[-1]
    return out


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


@torch.no_grad()
def half_error(export: Path, shipped: Path) -> float:
    """Max abs difference of a depth-controlled 64 px image from the fp32 and fp16 weights."""
    images = []
    for root in (export, shipped):
        sd = pilot.load_pipeline(root / "pipeline", dtype=torch.float32)
        net = pilot.load_controlnet(root / "controlnet_depth", dtype=torch.float32)
        depth = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64)
        request = Request(
            prompts=["red brick corridor, soft white fog"], seeds=[0], width=64, height=64
        )
        settings = SamplingSettings(sampler="euler", steps=10, cfg=3.0)
        images.append(generate(sd, request, settings, controls=[Control(net, depth)]))
    return (images[0] - images[1]).abs().max().item()


def model_card(logs: dict, metrics: dict | None, sizes: dict, fp16_error: float) -> str:
    lines = [
        "# Diffusion Pilot tiny SD (64 px, procedural walls)",
        "",
        "A Stable Diffusion of SD 1.x's architecture at toy size, trained from scratch by this",
        "project on its own procedural renders (`pilot.data.captioned`: rooms, corridors and",
        "yards of brick/tile/panel/plaster walls with fog), so that the whole pipeline runs on a",
        "fresh machine with no downloads (`pilot demo`). It draws 64x64 walls of a prompted",
        "colour and material and follows a depth ControlNet; it knows nothing else.",
        "",
        "- Components (diffusers folder layout, float16 safetensors; load with",
        "  `pilot.load_pipeline(path, dtype=torch.float32)` / `pilot.load_controlnet`):",
        "  AutoencoderKL f=8, 4 latent channels; UNet 8x8 latents, cross-attention 64;",
        "  CLIP-architecture text encoder (2 layers, width 64) with a 578-symbol BPE vocabulary",
        "  holding every caption word whole (`pilot.data.captions.build_tokenizer`); depth",
        "  ControlNet seeded from the UNet (near = bright control images).",
        f"- Files: pipeline {sizes['pipeline']:.1f} MB, controlnet_depth "
        f"{sizes['controlnet_depth']:.1f} MB (float16); the float16 copy generates within "
        f"{fp16_error:.1e} (max abs, [0, 1] pixels) of the float32 export.",
        "- Data: items 0..1999 of seed 0 (64 px), held out: items from 2064.",
        '  Captions: "<colour> <material> <room>, <thin|soft|thick> <colour> fog", the wall',
        "  colour named as it looks through the fog.",
        "- Training (`experiments/tiny_sd/train.sh`, configs in `experiments/tiny_sd/`, CPU).",
        "  The VAE's L1 is taken in Y, Cb, Cr with the colour channels weighted (4, then 1 in",
        "  the anneal): with an RGB L1 it learned luminance only and decoded every render grey.",
        "  The *_anneal stages go on from the stage before with a cosine learning rate.",
        "  Colour spread: mean over images of max - min of the mean R, G, B, in [-1, 1] units.",
    ]
    for stage, log in logs.items():  # in STAGES order
        extra = f", held-out PSNR {log['val_psnr']:.2f} dB" if "val_psnr" in log else ""
        if "val_colour_spread" in log:
            extra += (
                f", colour spread of reconstructions {log['val_colour_spread']:.3f} "
                f"(renders {log['val_colour_spread_true']:.3f})"
            )
        name = LOSS[stage]
        lines.append(f"  - {stage}: {log['steps']} steps, final {name} {log[name]:.4f}{extra}")
    if metrics is not None:
        s = metrics["sampling"]
        lines += [
            "- Held-out metrics (`python -m experiments.tiny_sd.evaluate runs/tiny_sd/export "
            f"--count {metrics['count']}`; {s['sampler']}, {s['steps']} steps, CFG {s['cfg']}):",
            f"  - VAE reconstruction PSNR {metrics['vae_psnr']:.2f} dB at 64 px",
            f"  - prompted colour dominates the captioned wall in "
            f"{100 * metrics['colour_match']:.1f}% of depth-controlled samples "
            f"(renders themselves: {100 * metrics['colour_match_renders']:.0f}%); leaving out "
            f"the {metrics['count'] - metrics['non_grey_count']} grey captions: "
            f"{100 * metrics['colour_match_non_grey']:.1f}%",
            f"  - depth control: edge-map correlation with the scene's render "
            f"{metrics['edge_corr']:.3f} vs {metrics['edge_corr_chance']:.3f} for mismatched "
            "pairs (chance)",
        ]
    lines += [
        "",
        "Limits: 64 px only; vocabulary is the caption grammar (other words are split into bytes",
        "the model never saw); undertrained by any real standard (about 2 h 15 min of a",
        "2-core CPU for all stages). The VAE stages' l1 is the chroma-weighted one.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, help="the train.sh run folder (holds export/ and logs)")
    p.add_argument("--metrics", type=Path, help="JSON of experiments.tiny_sd.evaluate")
    p.add_argument("--out", type=Path, default=ASSETS)
    args = p.parse_args(argv)
    export = args.runs / "export"
    logs = {
        stage: stage_log(args.runs, stage)
        for stage in STAGES
        if stage not in OPTIONAL or (args.runs / stage / "csv").is_dir()
    }
    metrics = json.loads(args.metrics.read_text()) if args.metrics else None
    sd = pilot.load_pipeline(export / "pipeline", dtype=torch.float16)
    net = pilot.load_controlnet(export / "controlnet_depth", dtype=torch.float16)
    save_pipeline(sd, args.out / "pipeline", overwrite=True)
    save_controlnet(net, args.out / "controlnet_depth", overwrite=True)
    sizes = {name: size_mb(args.out / name) for name in ("pipeline", "controlnet_depth")}
    error = half_error(export, args.out)
    card = args.out / "MODEL_CARD.md"
    tmp = card.with_name(f".{card.name}.tmp")
    tmp.write_text(model_card(logs, metrics, sizes, error))
    os.replace(tmp, card)
    print(json.dumps({"out": str(args.out), "sizes_mb": sizes, "fp16_max_abs": error, **logs}))


if __name__ == "__main__":
    sys.exit(report_errors("ship", lambda: main() or 0))
