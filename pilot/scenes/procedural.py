"""Procedural shots: a random corridor fly-through rendered and written as a shot folder."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pilot.scenes.geometry import reprojection_flow
from pilot.scenes.layouts import fly_through
from pilot.scenes.render import RenderConfig, render, stack_scenes
from pilot.scenes.shot_writer import ShotWriter


def motion_from_depth(
    depth: Tensor, K: Tensor, c2w: Tensor, far: float = math.inf, first: int = 0
) -> Tensor:
    """Motion pass (B, 4, H, W) of a static scene: flow to previous frame, then to next frame
    (background, depth >= `far`, at infinity as in `GeometryFlow`).

    `depth` (B, 1, H, W) holds frames `first` .. `first + B - 1` of a shot whose cameras are
    `K` (N, 3, 3) and `c2w` (N, 4, 4) (all of them: a batch's first and last frame look at
    their neighbours outside it). The shot's first frame's previous and its last frame's next
    are the frame itself (zero flow), as Blender does for a camera that holds still outside its
    keys.
    """
    frames = torch.arange(first, first + len(depth))
    prev, nxt = (frames - 1).clamp(min=0), (frames + 1).clamp(max=len(K) - 1)
    K_i, c2w_i = K[first : first + len(depth)], c2w[first : first + len(depth)]
    to_prev, _ = reprojection_flow(depth, K_i, c2w_i, K[prev], c2w[prev], far)
    to_next, _ = reprojection_flow(depth, K_i, c2w_i, K[nxt], c2w[nxt], far)
    return torch.cat([to_prev, to_next], 1)


def render_fly_through(
    seed: int, n_frames: int, width: int, height: int, batch: int = 8
) -> dict[str, Tensor]:
    """Render the corridor fly-through `layouts.fly_through(seed)` in `n_frames` frames.

    Returns:
        dict of (N, C, H, W) float tensors: every pass of `pilot.scenes.render.render` (in
        [0, 1] where documented there) plus `motion` (`motion_from_depth`), and the cameras `K`
        (N, 3, 3) and `c2w` (N, 4, 4): `fly_through_batches` put together.
    """
    parts = list(fly_through_batches(seed, n_frames, width, height, batch))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def fly_through_batches(
    seed: int, n_frames: int, width: int, height: int, batch: int = 8
) -> Iterator[dict[str, Tensor]]:
    """`render_fly_through` `batch` frames at a time, rendered as they are drawn: frames 0 ..
    batch - 1 first, then the next `batch`; each dict as `render_fly_through`'s, for those
    frames only (a long fly-through is never all in memory). Bad arguments raise here, before
    any frame is rendered."""
    if n_frames < 2:
        raise ValueError(f"a fly-through needs at least 2 frames, got {n_frames}")
    if batch < 1:
        raise ValueError(f"batch (frames rendered per call) must be >= 1, got {batch}")
    if seed < 0:
        raise ValueError(f"seed {seed} must be >= 0")
    scene, path = fly_through(np.random.default_rng(seed))
    c2w = path.poses(n_frames)  # (N, 4, 4)
    K = path.intrinsics(width, height).expand(n_frames, 3, 3).contiguous()
    far = RenderConfig().far  # `render`'s depth on sky

    def batches() -> Iterator[dict[str, Tensor]]:
        for lo in range(0, n_frames, batch):
            hi = min(lo + batch, n_frames)
            out = render(stack_scenes([scene] * (hi - lo)), K[lo:hi], c2w[lo:hi], height, width)
            motion = motion_from_depth(out["depth"], K, c2w, far, first=lo)
            yield {**out, "motion": motion, "K": K[lo:hi], "c2w": c2w[lo:hi]}

    return batches()


def add_fly_through_frame(
    writer: ShotWriter, out: dict[str, Tensor], k: int, source_frame: int | None = None
) -> None:
    """Add frame k of a `render_fly_through` result (or of a `fly_through_batches` batch) to
    `writer`: depth, normals, motion, the fogged colour image and the hatched line drawing, as
    `fly_through_shot` writes them; `source_frame`: the frame's number in the shot (default k).
    """
    image, hatched = (
        out[p][k].clamp(0, 1).mul(255).round().to(torch.uint8) for p in ("image", "hatched")
    )
    writer.add(
        out["K"][k].numpy(),
        out["c2w"][k].numpy(),
        out["depth"][k, 0].numpy(),
        normals=out["normals"][k].permute(1, 2, 0).numpy(),
        motion=out["motion"][k].permute(1, 2, 0).numpy(),
        image=image.permute(1, 2, 0).numpy(),
        hatched=hatched[0].numpy(),
        source_frame=k if source_frame is None else source_frame,
    )


def fly_through_shot(
    root: str | Path,
    seed: int = 0,
    n_frames: int = 24,
    width: int = 256,
    height: int = 256,
    fps: float = 24.0,
    batch: int = 8,
) -> Path:
    """Render a corridor fly-through (`layouts.fly_through`) and write it as a shot.

    Passes: depth, camera-space normals, motion (from depth and poses, exact for this static
    scene), the fogged colour image, and the hatched line drawing of the same walls (the input
    of the walls conditioner, `pilot conditioner apply`). The folder is checked (`ShotWriter`)
    before rendering; frames are rendered `batch` at a time and written as they are made
    (`fly_through_batches`), so the memory does not grow with `n_frames`. Returns the path of
    shot.json.
    """
    parts = fly_through_batches(seed, n_frames, width, height, batch)  # checks the arguments
    provenance = {"source": "pilot.scenes.procedural.fly_through_shot", "seed": seed}
    writer = ShotWriter(root, width, height, fps=fps, far=RenderConfig().far, provenance=provenance)
    with writer:  # the folder's lock, from the check to shot.json (`pilot.locks`)
        first = 0
        for part in parts:
            for k in range(len(part["depth"])):
                add_fly_through_frame(writer, part, k, source_frame=first + k)
            first += len(part["depth"])
        return writer.close()
