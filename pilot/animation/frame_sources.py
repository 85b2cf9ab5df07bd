"""Frame sources: a shot folder or a plain video as the feedback sampler's frames.

`ShotFrames` / `VideoFrames` give the frames' size, fps, flow source and, per frame, the source
image and the control images. A shot's control images come from its passes (`depth`, `normal`,
`hatch` from geometry; `hatched`, its hatched pass as white lines on black, for line-type
ControlNets; `canny`, `softedge`, `lineart`, `image` from its colour pass); a video has only
colour, so the other kinds are refused up front (`check_kind`). `FrameSource` is either.

These names import from `pilot.animation.inputs` too, beside the control tracks and run folder.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from pilot.animation.flow import EstimatedFlow, FlowSource, GeometryFlow, VectorFlow
from pilot.animation.video_reader import FrameFolder, open_video
from pilot.imageio import from_uint8

if TYPE_CHECKING:  # annotations only
    from pilot.scenes.shot import Shot

GEOMETRY_KINDS = {
    "depth": ("depth",),
    "normal": ("normals",),
    "hatch": ("depth", "normals"),
    "hatched": ("hatched",),
}
IMAGE_KINDS = ("canny", "softedge", "lineart", "image")


def _image_control(kind: str, image: Tensor) -> Tensor:
    from pilot.control.spec import PREPROCESSORS

    return PREPROCESSORS[kind](image).clamp(0, 1)


class ShotFrames:
    """A shot folder as the animation's frames.

    Args:
        shot: A `pilot.scenes.shot.Shot`.
        flow: "geometry" (exact, from depth and cameras), "vector" (the motion pass) or
            "estimated" (DIS on the colour pass).
        depth_per: Depth control normalised over the whole "shot" (steady brightness) or per
            "frame" (each frame spans [0, 1], as single-image depth models are trained).
    """

    def __init__(self, shot: Shot, flow: str = "geometry", depth_per: str = "shot") -> None:
        if depth_per not in ("shot", "frame"):
            raise ValueError(f"depth_per={depth_per!r}; valid: shot, frame")
        self.shot, self.name, self.depth_per = shot, str(shot.root), depth_per
        self.width, self.height, self.fps = shot.width, shot.height, shot.fps
        self.passes = set(shot.passes)
        if flow == "geometry":
            self.flow: FlowSource = GeometryFlow(shot)
        elif flow == "vector":
            self.flow = VectorFlow(shot)
        elif flow == "estimated":
            self._need("image", "estimated flow")
            self.flow = EstimatedFlow(lambda k: shot.frame(k, ["image"]).image, len(shot))
        else:
            raise ValueError(f"flow source {flow!r}; valid: geometry, vector, estimated")
        self._depth_range: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.shot)

    def _need(self, p: str, what: str) -> None:
        if p not in self.passes:
            raise ValueError(
                f"{what} needs the {p} pass, but shot {self.name} has only {sorted(self.passes)}"
            )

    def check_kind(self, kind: str) -> None:
        """ValueError unless the shot has the passes control `kind` is made from."""
        for p in GEOMETRY_KINDS.get(kind, ("image",) if kind in IMAGE_KINDS else ()):
            self._need(p, f"{kind} control")
        if kind not in GEOMETRY_KINDS and kind not in IMAGE_KINDS:
            raise ValueError(f"unknown control kind {kind!r}; valid: {_kinds()}")

    def depth_range(self) -> tuple[float, float]:
        """Inverse-depth range over the whole shot (one range: no per-frame flicker)."""
        if self._depth_range is None:
            lo, hi = float("inf"), 0.0
            for k in range(len(self.shot)):
                d = self.shot.frame(k, ["depth"]).depth
                inv = 1 / d[d < self.shot.far]
                if inv.numel():
                    lo, hi = min(lo, float(inv.min())), max(hi, float(inv.max()))
            self._depth_range = (lo, hi) if hi > 0 else (0.0, 1.0)
        return self._depth_range

    def control_image(self, kind: str, k: int) -> Tensor:
        """Control image (1, 3, H, W) in [0, 1] of frame k (near-bright depth, bae normals...)."""
        from pilot.control.depth import normals_to_control
        from pilot.control.hatching import hatch

        self.check_kind(kind)
        frame = self.shot.frame(k, GEOMETRY_KINDS.get(kind, ["image"]))
        if kind == "depth" and self.depth_per == "frame":
            from pilot.control.depth import depth_to_control

            return depth_to_control(frame.depth[None], far=self.shot.far)
        if kind == "depth":
            lo, hi = self.depth_range()
            depth = frame.depth[None]
            value = ((1 / depth - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
            return torch.where(depth < self.shot.far, value, 0.0).expand(-1, 3, -1, -1)
        if kind == "normal":
            return normals_to_control(frame.normals[None])
        if kind == "hatch":
            return hatch(frame.depth[None], frame.normals[None])
        if kind == "hatched":  # paper-white drawing -> the line ControlNets' white on black
            return (1 - frame.hatched[None]).expand(-1, 3, -1, -1)
        return _image_control(kind, frame.image[None])

    def source_image(self, k: int) -> Tensor | None:
        """The shot's colour pass (1, 3, H, W) of frame k, if it has one."""
        return self.shot.frame(k, ["image"]).image[None] if "image" in self.passes else None


def _kinds() -> str:
    return ", ".join([*GEOMETRY_KINDS, *IMAGE_KINDS])


class VideoFrames:
    """A plain video (or a folder of images) as the animation's frames: "video in" mode.

    Frames are read when asked for (`pilot.animation.video_reader`: a long or large video is
    never all in memory; the last few frames asked for are kept) and each is resized to `width` x
    `height` if given; flow is estimated with DIS. Without a size every frame must have the first
    one's size (a folder's frames are checked up front from their headers).

    Args:
        path: A video file OpenCV can read, or a folder of PNG/JPEG frames (sorted by name).
        size: Deprecated: (H, W), the old spelling of `height=H, width=W`.
        fps: Frame rate of the output; default the video's own (24 for a folder of frames).
        width, height: Size to resize to (both or neither), multiples of the VAE factor (8 in
            SD); default the video's own size.
        keep: How many decoded frames stay in memory.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
        *,
        width: int | None = None,
        height: int | None = None,
        keep: int = 4,
    ) -> None:
        if size is not None:
            if width is not None or height is not None:
                raise TypeError("VideoFrames() got size= (the old spelling) and width=/height=")
            warnings.warn(
                "VideoFrames(size=(H, W)) is deprecated: pass height=H, width=W instead",
                DeprecationWarning,
                stacklevel=2,
            )
            height, width = size
        if (width is None) != (height is None):
            raise ValueError(f"{path}: width={width}, height={height}: pass both, or neither")
        size = None if width is None else (height, width)
        self.name, self.size, self.keep = str(path), size, keep
        self.reader = open_video(path)
        if not len(self.reader):
            raise ValueError(f"{path}: no frames")
        self.fps = float(fps or self.reader.fps or 24.0)
        self._recent: OrderedDict[int, Tensor] = OrderedDict()
        if size is None and isinstance(self.reader, FrameFolder):
            _check_same_size(self.reader)
        self.height, self.width = self.frame(0).shape[-2:]
        if max(self.height, self.width) < 12:  # OpenCV's DIS flow refuses smaller
            raise ValueError(
                f"video {path} is {self.width}x{self.height}: estimating its flow needs a side "
                "of at least 12 pixels (give a larger size, --width/--height)"
            )
        self.flow: FlowSource = EstimatedFlow(self.frame, len(self.reader))

    def __len__(self) -> int:
        return len(self.reader)

    def frame(self, k: int) -> Tensor:
        """Frame k (3, H, W) in [0, 1], resized to `size` if given."""
        image = self._recent.get(k)
        if image is None:
            image = from_uint8(self.reader.read(k))
            if self.size is not None:
                image = _resize(image, self.size)
            elif k and image.shape[-2:] != (self.height, self.width):
                _, h, w = image.shape
                raise ValueError(
                    f"{self.name}: {self.reader.names[k]} is {w}x{h}, but {self.reader.names[0]} "
                    f"is {self.width}x{self.height}: frames of one video share a size (give a "
                    "size, --width/--height, to resize each)"
                )
            self._recent[k] = image
        self._recent.move_to_end(k)
        while len(self._recent) > self.keep:
            self._recent.popitem(last=False)
        return image

    def notes(self, out: Path, todo: range | None = None, fps: float | None = None) -> list[str]:
        """What `out`, made from frames `todo` (default all) of this video and played at `fps`
        (default `self.fps` / the range's step), does not keep (an audio track, with the ffmpeg
        command that adds it in step; a variable frame rate; frames that did not decode): one
        line each."""
        todo = range(len(self)) if todo is None else todo
        return self.reader.notes(out, todo, self.fps / todo.step if fps is None else fps)

    def check_kind(self, kind: str) -> None:
        """ValueError unless control `kind` is made from colour alone (all a video has)."""
        if kind in GEOMETRY_KINDS:
            raise ValueError(
                f"{kind} control needs a {GEOMETRY_KINDS[kind][0]} pass; video {self.name} has "
                f"only colour (use {', '.join(IMAGE_KINDS)}, or render a shot)"
            )
        if kind not in IMAGE_KINDS:
            raise ValueError(f"unknown control kind {kind!r}; valid: {_kinds()}")

    def control_image(self, kind: str, k: int) -> Tensor:
        """Control image (1, 3, H, W) in [0, 1] of frame k, made from its colour."""
        self.check_kind(kind)
        return _image_control(kind, self.frame(k)[None])

    def source_image(self, k: int) -> Tensor:
        """Frame k (1, 3, H, W) in [0, 1]."""
        return self.frame(k)[None]


def _resize(frame: Tensor, size: tuple[int, int]) -> Tensor:
    """(3, H, W) frame resized to `size` (bilinear, antialiased), unchanged if already that."""
    if tuple(frame.shape[-2:]) == tuple(size):
        return frame
    return F.interpolate(frame[None], size=size, mode="bilinear", antialias=True)[0].clamp(0, 1)


def _check_same_size(folder: FrameFolder) -> None:
    """ValueError naming the first frame whose size differs from the first frame's."""
    (h, w), names = folder.size(0), folder.names
    for k in range(1, len(folder)):
        if (size := folder.size(k)) != (h, w):
            raise ValueError(
                f"{folder.path}: {names[k]} is {size[1]}x{size[0]}, but {names[0]} is {w}x{h}: "
                "frames of one video share a size (give a size, --width/--height, to resize each)"
            )


FrameSource = ShotFrames | VideoFrames
