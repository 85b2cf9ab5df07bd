"""Temporal consistency metrics of an animation, measured with the true (or estimated) flow.

- warp error (Lai et al. 2018, "Learning Blind Video Temporal Consistency", eq. 9, with an L1
  colour distance): mean |frame_k - warp(frame_{k-1}, flow_{k -> k-1})| over the pixels of frame
  k that were visible in frame k - 1. Low means surfaces keep their look as the camera moves.
- flicker index: |mean over the same pixels of (frame_k - warped frame_{k-1})|, the part of the
  change that is a global brightness/colour shift: what reads as flicker on screen. It is at
  most the warp error; textures that "boil" in place raise the warp error but not the flicker.

Frames are (N, 3, H, W) in [0, 1]; flow fields follow `pilot.animation.flow`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pilot.animation.flow import FlowField, FlowSource
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


def temporal_metrics(frames: Tensor, flow: FlowSource, first: int = 0) -> dict:
    """Warp error and flicker index of consecutive frames, mean and per pair.

    Args:
        frames: (N, 3, H, W) in [0, 1]: frames `first` to `first + N - 1` of a shot.
        flow: Flow source of the shot (`flow(k)` for the shot's own frame numbers).
        first: Shot frame number of `frames[0]`.
    """
    fields = [flow(first + k) for k in range(1, len(frames))]
    if not fields:
        return {"frames": len(frames), "warp_error": None, "flicker": None}
    errors, flicker = warp_errors(frames, fields), flicker_indices(frames, fields)
    return {
        "frames": len(frames),
        "warp_error": float(errors.nanmean()),
        "flicker": float(flicker.nanmean()),
        "warp_error_per_frame": [round(float(e), 6) for e in errors],
        "flicker_per_frame": [round(float(e), 6) for e in flicker],
    }
