"""Temporal consistency metrics of an animation, measured with the true (or estimated) flow.

- warp error (Lai et al. 2018, "Learning Blind Video Temporal Consistency", eq. 9, with an L1
  colour distance): mean |frame_k - warp(frame_{k-1}, flow_{k -> k-1})| over the pixels of frame
  k that were visible in frame k - 1. Low means surfaces keep their look as the camera moves.
- flicker index: |mean over the same pixels of (frame_k - warped frame_{k-1})|, the part of the
  change that is a global brightness/colour shift: what reads as flicker on screen. It is at
  most the warp error; textures that "boil" in place raise the warp error but not the flicker.

Frames are (N, 3, H, W) in [0, 1]; flow fields follow `pilot.animation.flow`. For every
step-th frame of a shot (`step`), "frame k - 1" is the previous frame of the animation, shot
frame k - step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pilot.animation.flow import FlowField, FlowSource, backward_flow
from pilot.scenes.geometry import warp


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` (B, C, H, W) over the pixels where `mask` (B, 1, H, W) is True (NaN if
    none): every channel of a selected pixel counts."""
    mask = mask.expand_as(values)
    return values[mask].mean() if mask.any() else values.new_tensor(float("nan"))


def frame_difference(current: Tensor, previous: Tensor, field: FlowField) -> Tensor:
    """`current - warp(previous, flow)` (1, 3, H, W) for (3, H, W) frames."""
    return current[None].float() - warp(previous[None].float(), field.flow.to(current.device))


def warp_errors(frames: Tensor, fields: Sequence[FlowField]) -> Tensor:
    """Per-pair warp error (N - 1,); `fields[k - 1]` is the flow of frame k to frame k - 1."""
    _check(frames, fields)
    out = [
        masked_mean(frame_difference(frames[k], frames[k - 1], f).abs(), f.visible)
        for k, f in enumerate(fields, start=1)
    ]
    return torch.stack(out)


def flicker_indices(frames: Tensor, fields: Sequence[FlowField]) -> Tensor:
    """Per-pair flicker index (N - 1,): |mean signed difference| on visible pixels."""
    _check(frames, fields)
    out = [
        masked_mean(frame_difference(frames[k], frames[k - 1], f), f.visible).abs()
        for k, f in enumerate(fields, start=1)
    ]
    return torch.stack(out)


def _check(frames: Tensor, fields: Sequence[FlowField]) -> None:
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames of shape {tuple(frames.shape)}: expected (N, 3, H, W)")
    if len(fields) != len(frames) - 1:
        raise ValueError(f"{len(fields)} flow fields for {len(frames)} frames (need N - 1)")


def temporal_metrics(frames: Tensor, flow: FlowSource, first: int = 0, step: int = 1) -> dict:
    """Warp error and flicker index of consecutive frames, mean and per pair.

    Args:
        frames: (N, 3, H, W) in [0, 1]: frames `first`, `first + step`, ... of a shot.
        flow: Flow source of the shot (`flow(k)` for the shot's own frame numbers; `flow(k,
            step)` for a step other than 1, `backward_flow`).
        first: Shot frame number of `frames[0]`.
        step: Shot frames from one of `frames` to the next.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames of shape {tuple(frames.shape)}: expected (N, 3, H, W)")
    metrics = TemporalMetrics(flow, first, step)
    for frame in frames:
        metrics.add(frame)
    return metrics.result()


class TemporalMetrics:
    """`temporal_metrics` of frames given one at a time (`add`), for a long animation: only
    the previous frame is kept, and the flow of one pair at a time. The result is the same,
    bit for bit, as `temporal_metrics` of the frames stacked.

    Args:
        flow: Flow source of the shot (`flow(k)` for the shot's own frame numbers; `flow(k,
            step)` for a step other than 1, `backward_flow`).
        first: Shot frame number of the first frame added.
        step: Shot frames from one frame added to the next (every step-th frame of the shot).
    """

    def __init__(self, flow: FlowSource, first: int = 0, step: int = 1) -> None:
        if not isinstance(step, int) or step < 1:
            raise ValueError(f"step must be an int >= 1, got {step!r}")
        self.flow, self.first, self.step, self.frames = flow, first, step, 0
        self.previous: Tensor | None = None
        # float32 values as Python floats (exact): thousands of 0-dim tensors kept among the
        # frames' large buffers fragment the heap (~0.5 MB a pair at 256 px)
        self.errors: list[float] = []
        self.flicker: list[float] = []

    def add(self, frame: Tensor) -> None:
        """Score the next frame (3, H, W) in [0, 1] against the one added before it."""
        if frame.ndim != 3 or frame.shape[0] != 3:
            raise ValueError(f"frame of shape {tuple(frame.shape)}: expected (3, H, W)")
        if self.previous is not None:
            k = self.first + self.frames * self.step  # this frame's shot number
            field = backward_flow(self.flow, k, self.step)  # frame k -> frame k - step
            difference = frame_difference(frame, self.previous, field)
            self.errors.append(masked_mean(difference.abs(), field.visible).item())
            self.flicker.append(masked_mean(difference, field.visible).abs().item())
        self.previous, self.frames = frame, self.frames + 1

    def result(self) -> dict:
        """Means and per-pair values of the frames added so far (None before two frames)."""
        if not self.errors:
            return {"frames": self.frames, "warp_error": None, "flicker": None}
        errors = torch.tensor(self.errors, dtype=torch.float32)  # (N - 1,), as `warp_errors`
        flicker = torch.tensor(self.flicker, dtype=torch.float32)
        return {
            "frames": self.frames,
            "warp_error": float(errors.nanmean()),
            "flicker": float(flicker.nanmean()),
            "warp_error_per_frame": [round(float(e), 6) for e in errors],
            "flicker_per_frame": [round(float(e), 6) for e in flicker],
        }
