"""`pilot demo`'s results, made from the frames on disk: metrics, videos, contact sheet, summary.

Both passes' frames are read back from their `FrameStore` one at a time as the metrics
(`TemporalMetrics`, `DisoccludedDistance`) and the video writers take them, so the memory does
not grow with the number of frames (as `pilot animate` and `pilot walk` write theirs). The
results equal, byte for byte, those of the whole videos held as tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used, so `pilot --help` stays light
    import numpy as np
    from torch import Tensor

    from pilot.animation.inputs import FrameStore, ShotFrames
    from pilot.demo import DemoConfig

VIDEO_SIDE = 256  # frames are upscaled (nearest) to this side in the videos
SHEET_SIDE = 128  # and to this side in the contact sheet
OUTPUTS = ("demo.mp4", "side_by_side.mp4", "contact_sheet.png", "metrics.json")
PASSES = ("independent", "feedback")  # the two passes' folders, in the outputs' order


def pass_stores(out: Path) -> dict[str, FrameStore]:
    """Name -> a reader of the pass's frames `out/<name>/frames` (it keeps none in memory)."""
    from pilot.animation.inputs import FrameStore

    return {name: FrameStore(out / name, keep=0) for name in PASSES}


def measure(out: Path, config: DemoConfig) -> dict:
    """Warp error and flicker of both passes with the shot's exact flow, and their ratios;
    the frames are read from disk one at a time."""
    from pilot.animation.compare import DisoccludedDistance
    from pilot.animation.flow import GeometryFlow
    from pilot.animation.metrics import TemporalMetrics
    from pilot.scenes.shot import Shot

    shot = Shot(out / "shot")
    flow = GeometryFlow(shot)
    stores = pass_stores(out)
    scores = {name: TemporalMetrics(flow) for name in stores}
    distance = DisoccludedDistance(flow)  # the feedback frames against the independent ones
    for k in range(len(shot)):
        frames = {name: store.read(k)[0] for name, store in stores.items()}  # (3, H, W)
        for name, frame in frames.items():
            scores[name].add(frame)
        distance.add(frames["feedback"], frames["independent"])
    passes = {name: score.result() for name, score in scores.items()}
    ind, fb = passes["independent"], passes["feedback"]
    return {
        "warp_error": {"independent": ind["warp_error"], "feedback": fb["warp_error"],
                       "ratio": fb["warp_error"] / ind["warp_error"]},
        "flicker": {"independent": ind["flicker"], "feedback": fb["flicker"],
                    "ratio": fb["flicker"] / ind["flicker"]},
        "disoccluded_distance": distance.result(),
        "per_frame": {name: {"warp_error": m["warp_error_per_frame"],
                             "flicker": m["flicker_per_frame"]} for name, m in passes.items()},
        "frames": config.frames,
        "outputs": {name: str(out / name) for name in OUTPUTS},
    }  # fmt: skip


def upscale(images: Tensor, side: int) -> Tensor:
    """(B, C, H, W) -> (B, C, side, side * W / H), nearest neighbour (pixels stay honest)."""
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    return F.interpolate(images, size=(side, round(side * w / h)), mode="nearest")


def write_outputs(out: Path, config: DemoConfig) -> None:
    """demo.mp4, side_by_side.mp4 and contact_sheet.png (all atomic), the videos made as their
    writer takes the frames."""
    from pilot.animation.inputs import ShotFrames
    from pilot.animation.video import write_frame, write_mp4
    from pilot.imageio import to_uint8
    from pilot.scenes.shot import Shot

    shot = Shot(out / "shot")
    frames = ShotFrames(shot, depth_per=config.depth_per)
    stores = pass_stores(out)
    feedback = (
        to_uint8(upscale(stores["feedback"].read(k), VIDEO_SIDE)[0]) for k in range(len(shot))
    )
    write_mp4(feedback, out / "demo.mp4", fps=shot.fps)
    write_mp4(side_by_side(frames, stores), out / "side_by_side.mp4", fps=shot.fps)
    write_frame(sheet(frames, stores, config.rows), out / "contact_sheet.png")


def side_by_side(frames: ShotFrames, stores: dict[str, FrameStore]) -> Iterator[np.ndarray]:
    """The frames of side_by_side.mp4, uint8 (H, W, 3), one at a time: depth control | each
    pass, upscaled to `VIDEO_SIDE`."""
    from pilot.scenes.preview import contact_sheet

    for k in range(len(frames.shot)):
        columns = {"depth control": frames.control_image("depth", k)}
        columns.update({name: store.read(k) for name, store in stores.items()})
        yield contact_sheet({name: upscale(v, VIDEO_SIDE) for name, v in columns.items()})


def sheet(frames: ShotFrames, stores: dict[str, FrameStore], rows: int) -> np.ndarray:
    """contact_sheet.png: `rows` frames spread over the shot, one a row; the shot's passes,
    its hatch control and both passes' frames, upscaled to `SHEET_SIDE`."""
    import torch

    from pilot.scenes.preview import contact_sheet, pass_columns

    shot = frames.shot
    picks = torch.linspace(0, len(shot) - 1, min(rows, len(shot))).round().long().tolist()
    passes = pass_columns([shot[k] for k in picks], shot.far)
    passes.pop("hatched", None)  # the renderer's line drawing: the conditioners' input, not SD's
    columns = {"render" if name == "image" else name: v for name, v in passes.items()}
    columns["hatch"] = torch.cat([frames.control_image("hatch", k) for k in picks])
    columns.update(
        {name: torch.cat([store.read(k) for k in picks]) for name, store in stores.items()}
    )
    return contact_sheet({name: upscale(v, SHEET_SIDE) for name, v in columns.items()})


def summary(out: Path, metrics: dict) -> str:
    """The lines printed at the end: the warp-error figure and where the results are."""
    w, n, made = metrics["warp_error"], metrics["frames"], metrics["rendered_now"]
    resumed = f", {2 * n - made} of them resumed from disk" if made < 2 * n else ""
    return (
        f"warp error: feedback {w['feedback']:.4f} vs independent {w['independent']:.4f} "
        f"(ratio {w['ratio']:.2f}; lower = steadier)\n"
        f"{n} frames x 2 passes{resumed}, {metrics['seconds']['total']:.0f} s; "
        f"results in {out}/: " + ", ".join(OUTPUTS)
    )
