"""Comparing animation modes on one shot: independent frames against the feedback loop.

The baseline is per-frame txt2img with the same seeds and dials as the loop (`independent`):
what a frame looks like when nothing carries the previous one over. Both are rendered by the
same `FeedbackSampler` into their own `FrameStore`, resumably (`render_video`), and measured with
`pilot.animation.metrics` plus `disoccluded_distance`: how far a mode's frames are from the
baseline's on pixels the previous frame did not see (low = new surfaces are dreamed fresh rather
than smeared over by the warp). Used by `pilot demo` and `experiments/animate_figures.py`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from pilot.animation.feedback import FeedbackConfig, FeedbackSampler
from pilot.animation.flow import FlowSource
from pilot.animation.metrics import masked_mean

# Dials that turn the feedback loop into per-frame txt2img (strength 1 ignores the warped init).
INDEPENDENT = {
    "strength": "1.0",
    "occlusion": "ignore",
    "color_reference": None,
    "blend": 0.0,
    "noise": "fresh",
}


def independent(config: FeedbackConfig) -> FeedbackConfig:
    """`config` as per-frame txt2img: same seeds, CFG and controls, nothing carried over."""
    return replace(config, **INDEPENDENT)


def render_video(
    sampler: FeedbackSampler,
    n_frames: int,
    *,
    batch: int = 1,
    progress: bool = False,
    desc: str | None = None,
) -> tuple[Tensor, list[float]]:
    """Render frames 0 .. n_frames - 1 of `sampler` that its store lacks, in order.

    Frames already in the store are kept (a resumed run equals an uninterrupted one: the
    sampler re-reads frame k - 1 from disk). With `batch` > 1, runs of frames that depend on no
    other frame (`FeedbackSampler.independent`, e.g. every frame of an `independent` config) are
    sampled up to `batch` at a time (`FeedbackSampler.render_batch`: the same pixels up to float
    rounding); the others one by one. Returns the whole video as read back from the store,
    (N, 3, H, W) in [0, 1], and the seconds each frame rendered now took (a batch's time is
    shared equally by its frames).
    """
    missing = [k for k in range(n_frames) if not sampler.store.has(k)]
    seconds = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_frames, initial=n_frames - len(missing), unit="frame", desc=desc)
    for ks, per_frame in sampler.render_missing(missing, batch):
        seconds += [per_frame] * len(ks)
        if bar is not None:
            bar.update(len(ks))
    if bar is not None:
        bar.close()
    return torch.cat([sampler.store.read(k) for k in range(n_frames)]), seconds


def disoccluded_distance(video: Tensor, reference: Tensor, flow: FlowSource) -> float:
    """Mean |video - reference| over the pixels of frames 1.. not seen in the previous frame.

    Args:
        video, reference: (N, 3, H, W) in [0, 1], frames 0 .. N - 1 of the same shot.
        flow: The shot's flow source (`flow(k).visible`: pixels of k seen in k - 1).

    Returns NaN when no pixel is disoccluded.
    """
    distances = [
        masked_mean((video[k] - reference[k]).abs()[None], ~flow(k).visible)
        for k in range(1, len(video))
    ]
    return float(torch.stack(distances).nanmean()) if distances else float("nan")
