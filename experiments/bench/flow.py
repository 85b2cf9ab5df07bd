"""The feedback loop's flow per frame, each flow source, on a procedural shot's files.

    python -m experiments.bench.flow --size 512 --threads 2

The flow sources read a shot folder and compute on the CPU, whatever device the models use
(on a GPU machine the flow is the loop's host-side work). Rows: the reference, geometry flow
computed from whole frames in both directions (`frame_flow(shot[k], shot[k - 1])`: every pass
read, the PNG included; `GeometryFlow` did this up to c1d55e6), then `GeometryFlow` (the depth
pass, one direction), `VectorFlow` (the motion pass) and `EstimatedFlow` (DIS on the colour
pass, both directions). Frame 1 is a warm-up, left out.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from experiments.bench.common import device_name, format_table
from pilot.animation.flow import EstimatedFlow, GeometryFlow, VectorFlow
from pilot.scenes.geometry import frame_flow
from pilot.scenes.procedural import fly_through_shot
from pilot.scenes.shot import Shot

SHARED_OPTIONS = ("size", "threads")
REFERENCE = "geometry, whole frames, both ways"


def sources(shot: Shot) -> dict:
    """Row name -> callable of the frame index k >= 1."""
    return {
        REFERENCE: lambda k: frame_flow(shot[k], shot[k - 1], far=shot.far),
        "GeometryFlow": GeometryFlow(shot),
        "VectorFlow": VectorFlow(shot),
        "EstimatedFlow (DIS)": EstimatedFlow(lambda k: shot.frame(k, ["image"]).image, len(shot)),
    }


def seconds_per_frame(flow, frames: int) -> float:
    """Mean seconds of `flow(k)` over frames 2 .. frames - 1 (frame 1 warms up)."""
    flow(1)
    start = time.perf_counter()
    for k in range(2, frames):
        flow(k)
    return (time.perf_counter() - start) / (frames - 2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="shot side in pixels")
    parser.add_argument("--frames", type=int, default=7, help="frames of the shot (>= 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.frames < 3:
        parser.error(f"--frames {args.frames}: needs 3 or more (one warm-up, one timed)")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shot"
        fly_through_shot(root, n_frames=args.frames, width=args.size, height=args.size)
        times = {name: seconds_per_frame(f, args.frames) for name, f in sources(Shot(root)).items()}
    base = times[REFERENCE]
    print(f"flow sources, {args.size}x{args.size} px, {args.frames - 2} frames timed, "
          f"{device_name(torch.device('cpu'))}")  # fmt: skip
    rows = [[name, f"{1e3 * t:.1f}", f"{t / base:.2f}x"] for name, t in times.items()]
    print(format_table(["flow", "ms / frame", "/ reference"], rows))


if __name__ == "__main__":
    main()
