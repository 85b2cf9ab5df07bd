"""How close and how fast the distilled preview decoder is, against the VAE decoder it imitates.

    python -m experiments.tiny_sd.evaluate_preview runs/tiny_sd/export/vae \
        runs/tiny_sd/export/preview --out runs/tiny_sd/preview_metrics.json

On held-out procedural renders (items from `--start`, after the training and validation ones):
PSNR of the preview against the teacher's decode of the same latents (posterior means) and
against the render, beside the teacher's own PSNR against the render; then decode time of the
teacher and the preview, interleaved in one process, at the training size (a batch) and for one
image of `--large` pixels (what a preview is for). Writes the figures as JSON with `--out`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from experiments.bench.common import device_name, format_table, time_many_ms
from pilot.data.captioned import CaptionedRenders
from pilot.imageio import atomic_output
from pilot.models.preview import load_preview_decoder
from pilot.weights.loaders import load_vae
from train.metrics import psnr


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("teacher", help="VAE folder (diffusers AutoencoderKL)")
    p.add_argument("preview", help="PreviewDecoder folder")
    p.add_argument("--count", type=int, default=256)
    p.add_argument("--start", type=int, default=2064, help="first item (after train + val)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--large", type=int, default=512, help="image side of the one-image timing")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    vae, preview = load_vae(args.teacher).eval(), load_preview_decoder(args.preview)
    data = CaptionedRenders(args.count, args.size, args.seed, start=args.start)
    with torch.no_grad():
        z = torch.cat([vae.encode(x).mode() for x in data.images.split(args.batch)])
        teacher = torch.cat([vae.decode(b) for b in z.split(args.batch)]).clamp(-1, 1)
        student = torch.cat([preview.decode(b) for b in z.split(args.batch)])
        f = vae.cfg.downsample_factor
        large = torch.randn(1, z.shape[1], args.large // f, args.large // f) * z.std()
        cpu = torch.device("cpu")
        fns = [
            lambda: vae.decode(z[: args.batch]),
            lambda: preview.decode(z[: args.batch]),
            lambda: vae.decode(large),
            lambda: preview.decode(large),
        ]
        ms = time_many_ms(fns, cpu, warmup=1, iters=3)
    figures = {
        "items": [args.start, args.start + args.count - 1],
        "psnr_preview_vs_teacher": psnr(student, teacher),
        "psnr_preview_vs_render": psnr(student, data.images),
        "psnr_teacher_vs_render": psnr(teacher, data.images),
        "ms_teacher_batch": ms[0],
        "ms_preview_batch": ms[1],
        "ms_teacher_large": ms[2],
        "ms_preview_large": ms[3],
        "device": device_name(cpu),
    }
    print(
        f"{args.count} held-out renders (items {args.start}-{args.start + args.count - 1}), "
        f"{args.size} px; {figures['device']}"
    )
    rows = [
        ["preview vs teacher decode", f"{figures['psnr_preview_vs_teacher']:.2f}"],
        ["preview vs render", f"{figures['psnr_preview_vs_render']:.2f}"],
        ["teacher vs render", f"{figures['psnr_teacher_vs_render']:.2f}"],
    ]
    print(format_table(["PSNR", "dB"], rows))
    n, s = args.batch, args.large
    rows = [
        [f"{n} images, {args.size} px", f"{ms[0]:.1f}", f"{ms[1]:.1f}", f"{ms[1] / ms[0]:.2f}x"],
        [f"1 image, {s} px", f"{ms[2]:.1f}", f"{ms[3]:.1f}", f"{ms[3] / ms[2]:.2f}x"],
    ]
    print(format_table(["decode", "teacher ms", "preview ms", "preview / teacher"], rows))
    if args.out is not None:
        with atomic_output(args.out) as tmp:
            tmp.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
