"""Comparing animation modes on one shot: independent frames against the feedback loop.

The baseline is per-frame txt2img with the same seeds and dials as the loop (`independent`):
what a frame looks like when nothing carries the previous one over. Both are rendered by the
same `FeedbackSampler` into their own `FrameStore`, resumably (`render_to_store`; `render_video`
reads the frames back as one tensor), and measured with `pilot.animation.metrics` plus
`disoccluded_distance` (`DisoccludedDistance` frame by frame): how far a mode's frames are
from the baseline's on pixels the previous frame did not see (low = new surfaces are dreamed
fresh rather than smeared over by the warp). Used by `pilot demo` and
`experiments/animate_figures.py`.
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


def render_to_store(
    sampler: FeedbackSampler,
    n_frames: int,
    *,
    batch: int = 1,
    progress: bool = False,
    desc: str | None = None,
) -> list[float]:
    """Render frames 0 .. n_frames - 1 of `sampler` that its store lacks, in order.

    Frames already in the store are kept (a resumed run equals an uninterrupted one: the
    sampler re-reads frame k - 1 from disk). With `batch` > 1, runs of frames that depend on no
    other frame (`FeedbackSampler.independent`, e.g. every frame of an `independent` config) are
    sampled up to `batch` at a time (`FeedbackSampler.render_batch`: the same pixels up to float
    rounding); the others one by one. Nothing is kept but the store's last few frames, so the
    memory does not grow with `n_frames`. Returns the seconds each frame rendered now took (a
    batch's time is shared equally by its frames).
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
    return seconds


def render_video(
    sampler: FeedbackSampler,
    n_frames: int,
    *,
    batch: int = 1,
    progress: bool = False,
    desc: str | None = None,
) -> tuple[Tensor, list[float]]:
    """`render_to_store`, then the whole video as read back from the store, (N, 3, H, W) in
    [0, 1], and the seconds each frame rendered now took."""
    seconds = render_to_store(sampler, n_frames, batch=batch, progress=progress, desc=desc)
    return torch.cat([sampler.store.read(k) for k in range(n_frames)]), seconds


def disoccluded_distance(video: Tensor, reference: Tensor, flow: FlowSource) -> float:
    """Mean |video - reference| over the pixels of frames 1.. not seen in the previous frame.

    Args:
        video, reference: (N, 3, H, W) in [0, 1], frames 0 .. N - 1 of the same shot.
        flow: The shot's flow source (`flow(k).visible`: pixels of k seen in k - 1).

    Returns NaN when no pixel is disoccluded (`DisoccludedDistance` frame by frame).
    """
    distance = DisoccludedDistance(flow)
    for k in range(len(video)):
        distance.add(video[k], reference[k])
    return distance.result()


class DisoccludedDistance:
    """`disoccluded_distance` of frames given one pair at a time (`add`), for a long video:
    nothing is kept but one number a frame. The result is the same, bit for bit, as
    `disoccluded_distance` of the frames stacked.

    Args:
        flow: The shot's flow source (`flow(k).visible`: pixels of k seen in k - 1).
    """

    def __init__(self, flow: FlowSource) -> None:
        self.flow, self.frames = flow, 0
        # as Python floats (exact) and their dtype, as `TemporalMetrics` keeps its values
        self.distances: list[float] = []
        self.dtype: torch.dtype | None = None

    def add(self, frame: Tensor, reference: Tensor) -> None:
        """Score the next frame (3, H, W) of the video against the same frame of the reference
        (frame 0 has no previous frame: nothing is disoccluded)."""
        if self.frames > 0:
            unseen = ~self.flow(self.frames).visible
            distance = masked_mean((frame - reference).abs()[None], unseen)
            self.distances.append(distance.item())
            self.dtype = distance.dtype
        self.frames += 1

    def result(self) -> float:
        """Mean over the frames added so far (NaN before two frames, or if none is
        disoccluded)."""
        if not self.distances:
            return float("nan")
        return float(torch.tensor(self.distances, dtype=self.dtype).nanmean())
