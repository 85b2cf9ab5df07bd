"""Temporal-consistency figures of the feedback sampler on a procedural fly-through.

    python -m experiments.animate_figures                 # 24 frames, 32x32, as the tests
    python -m experiments.animate_figures --frames 48 --size 48

The model is the acceptance tests' (tests/animation/conftest.py): a random tiny UNet over an
analytic identity VAE, so the figures measure the loop, not a trained model. Every mode uses the
same seeds and settings (Euler, 4 steps, CFG 1); "independent" is per-frame txt2img. Columns:
warp error and flicker index with the shot's true flow on pixels seen in the previous frame, the
ratio of warp errors to independent generation, and the distance to the independent (fresh)
frame on disoccluded pixels (low = new surfaces are dreamed fresh rather than smeared).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from experiments.bench.common import format_table
from pilot.animation.compare import INDEPENDENT, disoccluded_distance, render_video
from pilot.animation.feedback import FeedbackConfig, FeedbackSampler
from pilot.animation.inputs import FrameStore, ShotFrames
from pilot.animation.metrics import temporal_metrics
from pilot.animation.schedules import parse_prompt_schedule
from pilot.diffusion.pipeline import SamplingSettings
from pilot.scenes.procedural import fly_through_shot
from pilot.scenes.shot import Shot
from tests.animation.conftest import make_animation_sd

MODES = {
    "independent": INDEPENDENT,
    "plain warping": dict(occlusion="ignore"),
    "occlusion-aware (renoise)": dict(),
    "occlusion-aware, fresh 0.7": dict(fresh_strength=0.7),
    "inpaint disoccluded only": dict(occlusion="inpaint"),
    "renoise + warped noise": dict(noise="warped"),
    "renoise + pixel blend 0.5": dict(blend=0.5),
}


def render(sd, frames, root: Path, config: dict) -> tuple[torch.Tensor, float]:
    # CFG is a schedule of the FeedbackConfig (config["cfg"]); the settings' cfg is not read.
    sampler = FeedbackSampler(
        sd, SamplingSettings(sampler="euler", steps=4), FeedbackConfig(**config),
        frames, parse_prompt_schedule("a corridor"), FrameStore(root), base_seed=3,
    )  # fmt: skip
    video, seconds = render_video(sampler, len(frames))
    return video, sum(seconds) / len(seconds)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--strength", default="0.3")
    p.add_argument("--seed", type=int, default=1, help="procedural shot seed")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sd = make_animation_sd()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fly_through_shot(root / "shot", seed=args.seed, n_frames=args.frames, width=args.size,
                         height=args.size)  # fmt: skip
        frames = ShotFrames(Shot(root / "shot"))
        videos, rows = {}, []
        for name, config in MODES.items():
            config = {"strength": args.strength, "cfg": "1", **config}
            videos[name], seconds = render(sd, frames, root / str(len(videos)), config)
            m = temporal_metrics(videos[name], frames.flow)
            fresh = disoccluded_distance(videos[name], videos["independent"], frames.flow)
            rows.append([name, m["warp_error"], m["flicker"], fresh, seconds])
    base = rows[0][1]
    table = [
        [name, f"{warp:.4f}", f"{warp / base:.2f}", f"{flicker:.4f}", f"{fresh:.4f}", f"{s:.2f}"]
        for name, warp, flicker, fresh, s in rows
    ]
    header = ["mode", "warp error", "vs independent", "flicker", "disoccluded vs fresh", "s/frame"]
    print(f"{args.frames} frames {args.size}x{args.size}, strength {args.strength}, Euler 4 steps")
    print(format_table(header, table))


if __name__ == "__main__":
    main()
