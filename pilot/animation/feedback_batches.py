"""Frame batching of the feedback sampler: which frames may be sampled together, and the loop
that makes a run's missing frames a batch at a time.

A frame whose pixels depend on no other frame (`FeedbackSampler.independent`: frame 0, or any
frame at strength 1 with occlusion "ignore", no blend and no warped noise, as in
`pilot.animation.compare.independent`) can be sampled together with others of its kind:
`render_batch(ks)` runs the UNet, ControlNets and VAE on B frames at once. Each frame keeps its
own seed (`BatchedNoise`: one generator per frame), so it equals `render(k)` up to float rounding
whatever batch it is in.

`FrameBatching` is a base class of `pilot.animation.feedback.FeedbackSampler`, apart from it
because it decides which frames go together and in what order, not how a frame is made: it
calls the sampler's `render`, `context`, `init_image` and `sample_frames` and reads its
`config`, `tracks`, `base_seed`, `frame_step` and `store`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from pilot.animation.feedback_config import frame_params, independent_frame


class FrameBatching:
    """Frame batching of `FeedbackSampler` (module docstring): `independent`, `batch_key`,
    `batches`, `render_missing` and `render_batch`."""

    def independent(self, k: int) -> bool:
        """Whether frame k's pixels depend on no other frame (`independent_frame`)."""
        return independent_frame(self.config, k, self.frame_step)

    def batch_key(self, k: int) -> tuple:
        """What frames of one batch share: strength, CFG, ControlNet scales (one sigma grid and
        one guidance scale per call) and the text embedding's length."""
        p = frame_params(self.config, self.tracks, self.base_seed, k)
        return p.strength, p.cfg, p.scales, tuple(self.context(k)[0].shape)

    def batches(self, ks: Sequence[int], size: int) -> list[list[int]]:
        """`ks` in order, cut into runs of at most `size` consecutive `independent` frames with
        one `batch_key`; every other frame is a batch of its own (it needs the one before)."""
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        out: list[list[int]] = []
        key = None
        for k in ks:
            free = size > 1 and self.independent(k)
            k_key = self.batch_key(k) if free else None
            if free and out and key == k_key and len(out[-1]) < size:
                out[-1].append(k)
            else:
                out.append([k])
                key = k_key
        return out

    def render_missing(
        self, ks: Sequence[int], batch: int = 1
    ) -> Iterator[tuple[list[int], float]]:
        """Make the frames of `ks` that the store lacks, in order: runs of `independent` frames
        up to `batch` at a time (`render_batch`), the others one by one (`render`).

        Yields:
            (the frames just made, seconds per frame: a batch's time shared equally).
        """
        missing = [k for k in ks if not self.store.has(k)]
        for group in self.batches(missing, batch):
            start = time.perf_counter()
            if len(group) > 1:
                self.render_batch(group)
            else:
                self.render(group[0])
            yield group, (time.perf_counter() - start) / len(group)
        self.store.flush()

    def render_batch(self, ks: Sequence[int]) -> Tensor:
        """Make the `independent` frames ks in one batch; returns them (B, 3, H, W) in [0, 1]
        after writing each. Each equals `render(k)` up to float rounding (per-frame seeds).

        Raises:
            ValueError: a frame depends on its previous one, or the frames differ in
                `batch_key` (strength, CFG, ControlNet scales, prompt length).
        """
        ks = list(ks)
        tied = [k for k in ks if not self.independent(k)]
        if tied:
            raise ValueError(
                f"frames {tied} depend on their previous frame (strength < 1, occlusion "
                f"{self.config.occlusion!r}, blend {self.config.blend} or noise "
                f"{self.config.noise!r}); render them one by one"
            )
        keys = {k: self.batch_key(k) for k in ks}
        if len(set(keys.values())) > 1:
            raise ValueError(f"frames {ks} differ in (strength, cfg, scales, prompt shape): {keys}")
        params = [frame_params(self.config, self.tracks, self.base_seed, k) for k in ks]
        inits = [self.init_image(k, None) for k in ks]
        init = None if inits[0] is None else torch.cat(inits)  # (B, 3, H, W)
        images = self.sample_frames(ks, params, init, None)
        for k, image in zip(ks, images, strict=True):
            self.store.write(k, image[None])
        return torch.cat([self.store.read(k) for k in ks])
