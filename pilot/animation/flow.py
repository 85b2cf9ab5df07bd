"""Flow sources for the feedback sampler: where each pixel of frame k was in frame k - 1.

A flow source is a callable `source(k) -> FlowField` for k >= 1: the backward flow
`flow_{k -> k-1}` (1, 2, H, W) in pixels, the displacement from a pixel of frame k to the same
surface point in frame k - 1, so `warp(previous_output, field.flow)` (`pilot.scenes.geometry`)
carries the previous frame onto the new camera, and a mask `visible` (1, 1, H, W), False where
the point was not seen in frame k - 1 (disoccluded or outside the old view): the pixels the
sampler must dream fresh instead of smearing. The sources here also take a step,
`source(k, step)`: the flow from frame k back to frame k - step (every step-th frame of a shot
or video, `pilot animate --frames START:END:STEP`); `backward_flow` calls any source, a
one-argument one of your own included, with step 1.

Three sources, all swappable:

- `GeometryFlow`: exact reprojection of the shot's depth through its cameras, occlusion by a
  depth test (`pilot.scenes.geometry.reprojection_flow`, `visibility`); the background (depth
  at the shot's `far`: sky, or beyond the camera's clip end) is at infinity, moved by the
  camera's rotation only, and seen wherever it lands on background;
- `VectorFlow`: the shot's motion pass (Blender's vector pass), masked by forward-backward
  consistency with the next-frame vectors of frame k - 1; adjacent frames only (step 1);
- `EstimatedFlow`: OpenCV's DIS optical flow (Kroeger et al. 2016) between video frames in both
  directions, masked by forward-backward consistency (Sundaram et al. 2010): for plain video.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pilot.diffusion.samplers import callable_name
from pilot.scenes.geometry import (
    forward_backward_error,
    pixel_grid,
    reprojection_flow,
    visibility,
    warp,
)

if TYPE_CHECKING:  # annotations only
    from pilot.scenes.shot import Shot


@dataclass(frozen=True)
class FlowField:
    """Backward flow of one frame and where it can be trusted.

    Attributes:
        flow: (1, 2, H, W) float32 pixels, frame k -> frame k - 1 (x right, y down).
        visible: (1, 1, H, W) bool, True where frame k's pixel was seen in frame k - 1.
    """

    flow: Tensor
    visible: Tensor


class FlowSource(Protocol):
    """`source(k)`: the `FlowField` from frame k back to frame k - 1, for 1 <= k < len (the
    sources of this module also take `step`: back to frame k - step)."""

    def __call__(self, k: int) -> FlowField: ...


def backward_flow(
    source: FlowSource, k: int, step: int = 1, size: tuple[int, int] | None = None
) -> FlowField:
    """`source`'s flow from frame k back to frame k - step: `source(k)` for step 1 (any flow
    source, a one-argument callable of your own included), else `source(k, step)`.

    Args:
        size: The frames' (height, width): the result is checked against it
            (`check_flow_field`), a ValueError naming the source and frame k.
    """
    field = source(k) if step == 1 else source(k, step)  # type: ignore[call-arg]
    if size is not None:
        check_flow_field(field, *size, f"flow source {callable_name(source)} at frame {k}")
    return field


def check_flow_field(field: object, height: int, width: int, what: str) -> None:
    """ValueError unless `field` is a `FlowField` of a `height` x `width` frame: flow (1, 2, H,
    W) floats and visible (1, 1, H, W) bool. `what` names the source and frame in the message
    (a flow source of your own, say, that returns a tuple, (2, H, W) or a float mask)."""
    if not isinstance(field, FlowField):
        raise ValueError(
            f"{what} returned a {type(field).__name__}: expected a FlowField(flow, visible)"
        )

    def describe(t: object) -> str:
        return f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__

    flow, visible = field.flow, field.visible
    if not (
        isinstance(flow, Tensor)
        and isinstance(visible, Tensor)
        and tuple(flow.shape) == (1, 2, height, width)
        and flow.is_floating_point()
        and tuple(visible.shape) == (1, 1, height, width)
        and visible.dtype == torch.bool
    ):
        raise ValueError(
            f"{what} gave flow {describe(flow)} and visible {describe(visible)}: expected flow "
            f"(1, 2, {height}, {width}) float (pixels) and visible (1, 1, {height}, {width}) bool"
        )


def check_flow_step(source: FlowSource, step: int) -> None:
    """ValueError if `step` > 1 and `source` takes one argument (`source(k)`: the flow to
    frame k - 1 only); sources whose signature cannot be read pass."""
    try:
        params = list(inspect.signature(source).parameters.values())
    except (TypeError, ValueError):
        return
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    if step > 1 and not varargs and sum(p.kind in positional for p in params) < 2:
        raise ValueError(
            f"frame step {step}: flow source {callable_name(source)} takes one argument (k: the "
            "flow to frame k - 1); take (k, step) for the flow to frame k - step"
        )


def _check_index(k: int, n: int, name: str, step: int = 1) -> None:
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"{name}: flow step must be an int >= 1, got {step!r}")
    if not step <= k < n:
        back = "the previous frame" if step == 1 else f"frame k - {step}"
        raise IndexError(f"{name}: flow to {back} needs {step} <= k < {n}, got {k}")


def inside(flow: Tensor) -> Tensor:
    """True (B, 1, H, W) where `p + flow(p)` lies inside the image."""
    H, W = flow.shape[-2:]
    uv = pixel_grid(H, W, flow) + flow
    x, y = uv[:, :1], uv[:, 1:]
    return (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)


def consistency_mask(
    flow_ij: Tensor, flow_ji: Tensor, *, alpha: float = 0.01, beta: float = 0.5
) -> Tensor:
    """Forward-backward consistency (Sundaram et al. 2010): True (B, 1, H, W) where trusted.

    A pixel passes when its round trip `|f_ij + f_ji(p + f_ij)|^2` is below
    `alpha (|f_ij|^2 + |f_ji(p + f_ij)|^2) + beta` and it lands inside frame j.
    """
    back = warp(flow_ji, flow_ij)
    error = forward_backward_error(flow_ij, flow_ji) ** 2
    bound = alpha * (flow_ij.square().sum(1, keepdim=True) + back.square().sum(1, keepdim=True))
    return (error <= bound + beta) & inside(flow_ij)


class GeometryFlow:
    """Exact backward flow from a shot's depth and cameras, occlusion by the depth test;
    background pixels (depth >= the shot's `far`) are at infinity (`pilot.scenes.geometry`).

    Args:
        shot: A `pilot.scenes.shot.Shot`.
        rel_tol: Relative depth tolerance of the visibility test.
    """

    def __init__(self, shot: Shot, rel_tol: float = 0.01) -> None:
        self.shot, self.rel_tol = shot, rel_tol

    def __call__(self, k: int, step: int = 1) -> FlowField:
        """Flow from frame k back to frame k - step (any two frames: depth and cameras)."""
        _check_index(k, len(self.shot), str(self.shot.root), step)
        cur, prev = self.shot.frame(k, ["depth"]), self.shot.frame(k - step, ["depth"])
        far = self.shot.far
        flow, z = reprojection_flow(
            cur.depth[None], cur.K[None], cur.c2w[None], prev.K[None], prev.c2w[None], far
        )  # (1, 2, H, W) k -> k - step, and frame k's depth seen from camera k - step (inf: sky)
        return FlowField(flow, visibility(flow, z, prev.depth[None], self.rel_tol, far))


class VectorFlow:
    """Backward flow from a shot's motion pass (Blender's vector pass), consistency-masked.

    The motion pass of frame k holds the flow to frame k - 1 in channels 0-1; frame k - 1's
    channels 2-3 (its flow to the next frame) close the round trip. The pass links adjacent
    frames only: a step other than 1 is a ValueError (use `GeometryFlow` or `EstimatedFlow`).
    """

    def __init__(self, shot: Shot, *, alpha: float = 0.01, beta: float = 0.5) -> None:
        if "motion" not in shot.passes:
            raise ValueError(f"{shot.root}: no motion pass (passes: {shot.passes})")
        self.shot, self.alpha, self.beta = shot, alpha, beta

    def __call__(self, k: int, step: int = 1) -> FlowField:
        """Flow from frame k back to frame k - 1 (`step` must be 1)."""
        if step != 1:
            raise ValueError(
                f"{self.shot.root}: the motion pass (vector flow) links adjacent frames only, not "
                f"frames {step} apart; use geometry flow (depth and cameras) or estimated flow"
            )
        _check_index(k, len(self.shot), str(self.shot.root))
        to_prev = self.shot.frame(k, ["motion"]).motion[None, :2].float()  # (1, 2, H, W)
        to_next = self.shot.frame(k - 1, ["motion"]).motion[None, 2:].float()
        visible = consistency_mask(to_prev, to_next, alpha=self.alpha, beta=self.beta)
        return FlowField(to_prev, visible)


def dis_flow(image_i: Tensor, image_j: Tensor, preset: str = "medium") -> Tensor:
    """DIS optical flow i -> j (1, 2, H, W) between two (3, H, W) images in [0, 1].

    `p_j = p_i + flow(p_i)`, the convention of `pilot.scenes.geometry`.
    """
    import cv2

    presets = {
        "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
        "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
        "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
    }
    if preset not in presets:
        raise ValueError(f"DIS preset {preset!r}; valid: {', '.join(presets)}")

    def grey(image: Tensor) -> np.ndarray:
        rgb = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        return cv2.cvtColor(rgb.permute(1, 2, 0).cpu().numpy(), cv2.COLOR_RGB2GRAY)

    dis = cv2.DISOpticalFlow_create(presets[preset])
    flow = dis.calc(grey(image_i), grey(image_j), None)  # (H, W, 2) float32
    return torch.from_numpy(flow).permute(2, 0, 1)[None].contiguous()


class EstimatedFlow:
    """Backward flow estimated from the frames themselves (DIS both ways, consistency mask).

    Args:
        frames: `frames(k)` gives frame k as (3, H, W) in [0, 1] (a video's source frames).
        n_frames: Number of frames.
        preset: DIS preset, "ultrafast", "fast" or "medium".
        estimator: Another optical flow estimator in place of DIS (RAFT, say):
            `estimator(image_i, image_j) -> flow i -> j`, (1, 2, H, W) pixels from two (3, H,
            W) images in [0, 1], as `dis_flow`; it runs both ways for the consistency mask.
    """

    def __init__(
        self,
        frames: Callable[[int], Tensor],
        n_frames: int,
        *,
        preset: Literal["ultrafast", "fast", "medium"] = "medium",
        alpha: float = 0.01,
        beta: float = 0.5,
        estimator: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        self.frames, self.n_frames, self.preset = frames, n_frames, preset
        self.alpha, self.beta, self.estimator = alpha, beta, estimator

    def __call__(self, k: int, step: int = 1) -> FlowField:
        """Flow from frame k back to frame k - step (the estimator between those two frames)."""
        _check_index(k, self.n_frames, "video", step)
        cur, prev = self.frames(k), self.frames(k - step)
        to_prev, to_next = self.estimate(cur, prev), self.estimate(prev, cur)
        visible = consistency_mask(to_prev, to_next, alpha=self.alpha, beta=self.beta)
        return FlowField(to_prev, visible)

    def estimate(self, image_i: Tensor, image_j: Tensor) -> Tensor:
        """Flow i -> j (1, 2, H, W) float32 on the CPU: DIS, or `estimator` (its result checked,
        a ValueError naming it)."""
        if self.estimator is None:
            return dis_flow(image_i, image_j, self.preset)
        flow = self.estimator(image_i, image_j)
        H, W = image_i.shape[-2:]
        if not isinstance(flow, Tensor) or tuple(flow.shape) != (1, 2, H, W):
            got = tuple(flow.shape) if isinstance(flow, Tensor) else type(flow).__name__
            raise ValueError(
                f"flow estimator {callable_name(self.estimator)} returned {got}: expected flow "
                f"(1, 2, {H}, {W}) in pixels between two (3, {H}, {W}) images"
            )
        return flow.detach().float().cpu()


def downsample_flow(field: FlowField, factor: int) -> FlowField:
    """The flow field at 1 / `factor` resolution (latents): averaged flow in the new pixels,
    visible only where the whole `factor` x `factor` cell was visible."""
    if factor == 1:
        return field
    H, W = field.flow.shape[-2:]
    if H % factor or W % factor:
        raise ValueError(f"flow of size {W}x{H} is not a multiple of {factor}")
    flow = F.avg_pool2d(field.flow, factor) / factor  # (1, 2, H/f, W/f)
    visible = -F.max_pool2d(-field.visible.float(), factor) > 0.5
    return FlowField(flow, visible)
