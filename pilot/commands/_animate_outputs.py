"""`pilot animate`'s results once the frames are made: the MP4 and GIF of the frame range at
`output_fps`, and metrics.json (`finish`), read from the run folder one frame at a time; and the
temporary files that killed writes left, removed before a run writes (`remove_run_temps`).

Kept apart from `pilot.commands.animate` (the command's flow), which re-exports these names, as
`pilot.commands._animate_checks` holds its checks, so each stays a short module.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `pilot --help` imports no torch
    import numpy as np

    from pilot.animation.inputs import FrameSource, FrameStore


def output_fps(args: argparse.Namespace, frames: FrameSource, step: int = 1) -> float:
    """The frame rate of the MP4 and GIF: --fps, else the source's / the --frames step (every
    step-th frame keeps the clip's duration)."""
    return frames.fps / step if args.fps is None else args.fps


def remove_run_temps(run: Path, out: Path) -> None:
    """Delete the temporary files that writes killed mid-way (kill -9, a power cut) left in the
    run folder (locked: no other process writes there) and beside the videos."""
    from pilot.animation.video import remove_temp_files
    from pilot.imageio import remove_stale_temps

    remove_temp_files(run / "frames")
    remove_temp_files(run / "state", suffixes=(".npy",))
    remove_temp_files(run, suffixes=(".json",))  # settings.json, metrics.json
    remove_stale_temps([out, out.with_suffix(".gif")])


def finish(
    args: argparse.Namespace,
    frames: FrameSource,
    store: FrameStore,
    todo: range,
    run: Path,
    seconds: list[float],
) -> dict:
    """MP4 + GIF of the range's frames, and metrics.json: warp error and flicker of each frame
    against the one before it in the range (frame k - STEP), scored with the shot's geometry
    flow (DIS for a video) whatever --flow made the frames, so runs with other flow sources are
    on one scale. Frames are read from disk one at a time, as the
    writers take them (a 2000-frame 512 px run held as floats would take 6 GB)."""
    from pilot.animation.flow import GeometryFlow
    from pilot.animation.inputs import ShotFrames
    from pilot.animation.metrics import TemporalMetrics
    from pilot.animation.video import write_gif, write_mp4
    from pilot.commands._animate_checks import check_frame_sizes
    from pilot.imageio import atomic_output, to_uint8

    store.flush()  # every frame on disk, for their headers
    check_frame_sizes(todo, frames, store)  # before any video is written
    shot = isinstance(frames, ShotFrames)
    flow = GeometryFlow(frames.shot) if shot else frames.flow
    scores = TemporalMetrics(flow, todo.start, todo.step)

    def video(score: bool) -> Iterator[np.ndarray]:
        for k in todo:
            image = store.read(k)[0]  # (3, H, W) in [0, 1]
            if score:
                scores.add(image)
            yield to_uint8(image)

    fps = output_fps(args, frames, todo.step)
    write_mp4(video(score=True), args.out, fps=fps)  # scored on the way: one read per frame
    write_gif(video(score=False), args.out.with_suffix(".gif"), fps=fps)
    metrics = scores.result()
    metrics.update(
        first_frame=todo.start,
        frame_step=todo.step,
        fps=fps,
        flow=args.flow if args.shot is not None else "estimated",
        scored_with="geometry" if shot else "estimated",
        seconds_per_frame=round(sum(seconds) / len(seconds), 4) if seconds else None,
        rendered_now=len(seconds),
        mp4=str(args.out),
        gif=str(args.out.with_suffix(".gif")),
    )
    with atomic_output(run / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    return metrics
