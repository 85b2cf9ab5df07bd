"""Procedural shots: a random corridor fly-through rendered and written as a shot folder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pilot.scenes.geometry import reprojection_flow
from pilot.scenes.layouts import fly_through
from pilot.scenes.render import RenderConfig, render, stack_scenes
from pilot.scenes.shot_writer import ShotWriter


def motion_from_depth(depth: Tensor, K: Tensor, c2w: Tensor, far: float = math.inf) -> Tensor:
    """Motion pass (N, 4, H, W) of a static scene: flow to previous frame, then to next frame
    (background, depth >= `far`, at infinity as in `GeometryFlow`).

    The first frame's previous and the last frame's next are the frame itself (zero flow), as
    Blender does for a camera that holds still outside its keys.
    """
    prev = torch.cat([torch.arange(1), torch.arange(len(depth) - 1)])
    nxt = torch.cat([torch.arange(1, len(depth)), torch.tensor([len(depth) - 1])])
    to_prev, _ = reprojection_flow(depth, K, c2w, K[prev], c2w[prev], far)
    to_next, _ = reprojection_flow(depth, K, c2w, K[nxt], c2w[nxt], far)
    return torch.cat([to_prev, to_next], 1)


def render_fly_through(
    seed: int, n_frames: int, width: int, height: int, batch: int = 8
) -> dict[str, Tensor]:
    """Render the corridor fly-through `layouts.fly_through(seed)` in `n_frames` frames.

    Returns:
        dict of (N, C, H, W) float tensors: every pass of `pilot.scenes.render.render` (in
        [0, 1] where documented there) plus `motion` (`motion_from_depth`), and the cameras `K`
        (N, 3, 3) and `c2w` (N, 4, 4).
    """
    if n_frames < 2:
        raise ValueError(f"a fly-through needs at least 2 frames, got {n_frames}")
    if batch < 1:
        raise ValueError(f"batch (frames rendered per call) must be >= 1, got {batch}")
    if seed < 0:
        raise ValueError(f"seed {seed} must be >= 0")
    scene, path = fly_through(np.random.default_rng(seed))
    c2w = path.poses(n_frames)  # (N, 4, 4)
    K = path.intrinsics(width, height).expand(n_frames, 3, 3).contiguous()
    parts = []
    for lo in range(0, n_frames, batch):
        hi = min(lo + batch, n_frames)
        parts.append(render(stack_scenes([scene] * (hi - lo)), K[lo:hi], c2w[lo:hi], height, width))
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    far = RenderConfig().far  # `render`'s depth on sky
    out.update(motion=motion_from_depth(out["depth"], K, c2w, far), K=K, c2w=c2w)
    return out


def add_fly_through_frame(writer: ShotWriter, out: dict[str, Tensor], k: int) -> None:
    """Add frame k of a `render_fly_through` result to `writer`: depth, normals, motion, the
    fogged colour image and the hatched line drawing, as `fly_through_shot` writes them."""
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
        source_frame=k,
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
    before rendering. Returns the path of shot.json.
    """
    if n_frames < 2:
        raise ValueError(f"a fly-through needs at least 2 frames, got {n_frames}")
    provenance = {"source": "pilot.scenes.procedural.fly_through_shot", "seed": seed}
    writer = ShotWriter(root, width, height, fps=fps, far=RenderConfig().far, provenance=provenance)
    with writer:  # the folder's lock, from the check to shot.json (`pilot.locks`)
        out = render_fly_through(seed, n_frames, width, height, batch)
        for k in range(n_frames):
            add_fly_through_frame(writer, out, k)
        return writer.close()
