"""The frames `pilot conditioner apply --shot` names (`open_source`, `Source`): a shot's pass
(`open_shot`, `shot_frames`, `shot_fps`), a folder of images or drawings, or a video file, each
frame read as training reads it; and the check that no output is one of the inputs, whose files
it would overwrite (`check_outputs`).

Kept apart from `pilot.commands.conditioner` (the command's flow and outputs; its docstring says
which frames are read and how), which re-exports these names, so each stays a short module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `pilot --help` imports no numpy
    from pilot.animation.video_reader import VideoFile
    from pilot.scenes.shot import Shot


def open_shot(shot: Path) -> Shot | None:
    """The `Shot` in a shot folder (shot.json, or a writer's unfinished marker: refused as
    `Shot` refuses it), or None for a plain folder (of frames, or of pass folders)."""
    from pilot.scenes.shot import UNFINISHED, Shot

    if (shot / "shot.json").is_file() or (shot / UNFINISHED).exists():
        return Shot(shot)
    return None


def shot_frames(shot: Path, pass_name: str, opened: Shot | None) -> list[Path]:
    """Frame files of one pass of a shot folder, in order; errors name the folder. `opened`:
    its `open_shot` (read once by the caller, who also takes the fps from it).

    A shot's pass gives the frames shot.json lists (other files in the pass folder are not
    frames of the shot); a folder that is not one of the shot's passes, or a plain folder,
    gives its images in name order. An interrupted shot (unfinished marker) is refused.
    """
    from pilot.data.paired import list_images

    folder = shot / pass_name
    if not shot.is_dir():
        raise FileNotFoundError(f"{shot}: no such shot folder or video file")
    if opened is not None and pass_name in opened.passes:
        return [opened.file(k, pass_name) for k in range(len(opened))]
    if opened is not None and not folder.is_dir():
        raise ValueError(
            f"{shot}: the shot has no {pass_name} pass (passes {opened.passes}); `pilot shot "
            f"render` writes a hatched pass, or put the frames as images in {folder}"
        )
    return list(list_images(folder if folder.is_dir() else shot).values())


def shot_fps(opened: Shot | None, default: float = 12.0) -> float:
    """The frame rate of a shot (`open_shot`), or `default` for a plain folder of frames."""
    return default if opened is None else opened.fps


@dataclass(frozen=True)
class Source:
    """The frames `--shot` names: image files (`files`) or a video file's (`video`, opened
    once: opening counts its frames by decoding them)."""

    names: list[str]  # each frame's output name: its file's name without suffix, or 00000k
    files: list[Path] | None
    video: VideoFile | None
    fps: float  # the shot's or the video's; 12 for a folder of images
    protected: list[Path]  # what no output may be: the inputs' folder, the shot and its passes

    def frames(self, channels: int, skip: frozenset[int] = frozenset()) -> Iterator:
        """The frames in order as uint8 (H, W, channels), converted as training converts; None
        for those in `skip` (not decoded, but a video's)."""
        from pilot.data.paired import read_image

        if self.files is not None:
            yield from (None if k in skip else read_image(p, channels)
                        for k, p in enumerate(self.files))  # fmt: skip
            return
        import numpy as np
        from PIL import Image

        video = self.video
        try:
            for k in range(len(video)):
                if k in skip:
                    yield None
                elif channels == 1:
                    yield np.asarray(Image.fromarray(video.read(k)).convert("L"))[:, :, None]
                else:
                    yield video.read(k)
        finally:
            video.close()

    def mtime(self, k: int) -> float:
        """When frame k's input last changed (the video's for a video)."""
        return (self.video.path if self.files is None else self.files[k]).stat().st_mtime


def open_source(shot: Path, pass_name: str) -> Source:
    """The frames of `--shot`: a shot's pass, a folder of images, or a video file."""
    if shot.is_file():
        from pilot.animation.video_reader import VideoFile

        video = VideoFile(shot)  # counts the frames that decode
        fps = video.fps if video.fps and math.isfinite(video.fps) else 12.0
        names = [f"{k:06d}" for k in range(len(video))]
        return Source(names, None, video, fps, [shot])
    opened = open_shot(shot) if shot.is_dir() else None
    files = shot_frames(shot, pass_name, opened)
    protected = [files[0].parent, shot]
    protected += [shot / p for p in opened.passes] if opened is not None else []
    return Source([f.stem for f in files], files, None, shot_fps(opened), protected)


def check_outputs(source: Source, outputs: list[tuple[str, Path]]) -> None:
    """ValueError naming an output (flag, path) that is one of the inputs' (`Source.protected`),
    before anything is written: its files would be overwritten."""
    protected = {Path(os.path.abspath(p)): p for p in source.protected}
    for flag, path in outputs:
        hit = protected.get(Path(os.path.abspath(path)))
        if hit is not None:
            video = source.video is not None and hit == source.video.path
            what = "the input video" if video else "an input folder"
            files = "it" if video else "its files"
            raise ValueError(
                f"{flag} {path} is {what} ({hit}): {files} would be overwritten; pass another path"
            )
