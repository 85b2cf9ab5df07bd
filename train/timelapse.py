"""Training timelapse: fixed samples plus loss curves, one frame every N steps, as GIF and MP4.

The LightningModule owns what is drawn: `timelapse_panels()` returns named image batches made
from inputs fixed at construction (latents, validation pairs), and `training_step` returns its
losses as a dict. This rank-zero callback keeps the loss history, renders a frame keyed by
`trainer.global_step` into `<dirpath>/frames/<step>.png`, rebuilds `timelapse.gif` and
`timelapse.mp4` from every frame on disk, and logs frames and video to W&B when a `WandbLogger`
is attached, at the step Lightning logs the losses at (one per GAN step), with `global_step` as
`timelapse/global_step`. Under `fast_dev_run` (a config check) a frame is rendered into
`last_frame` but nothing is written or deleted. The history is part of the checkpoint and the
frames stay on disk, so a training resumed from its last checkpoint keeps the frames it had made
(frames newer than the checkpoint are dropped and made again). Only `<step>.png` files count as
frames; the temp files of writes a kill interrupted are deleted when a training starts.

Note: with manual optimisation Lightning counts every optimiser step, so a GAN step (one
discriminator and one generator update) advances `global_step` by 2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor

from pilot.animation.video import (
    read_frame,
    remove_temp_files,
    to_uint8,
    write_frame,
    write_gif,
    write_mp4,
)

_CURVE_COLOURS = [(230, 80, 60), (60, 120, 230), (60, 170, 80), (200, 150, 30), (150, 70, 200)]
_LABEL_W = 70  # pixels left of each panel row for its name
_CURVES_W = 330  # least width of the loss curves (beside the label column), so they stay readable


def image_grid(images: Tensor, ncol: int) -> np.ndarray:
    """(N, C, H, W) images in [-1, 1] -> uint8 grid (rows * H, ncol * W, 3) with a 2-pixel gap.

    C >= 3 shows the first three channels as RGB; C = 1 and C = 2 show the first channel as grey
    (a 2-channel image has no natural colour mapping; split it into panels to see both).
    """
    images = images.detach().float().cpu()
    images = images[:, :3] if images.shape[1] >= 3 else images[:, :1].repeat(1, 3, 1, 1)
    n, _, h, w = images.shape
    nrow = -(-n // ncol)
    grid = np.full((nrow * (h + 2), ncol * (w + 2), 3), 255, dtype=np.uint8)
    tiles = to_uint8(images.permute(0, 2, 3, 1).numpy())  # (N, H, W, 3)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncol)
        grid[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = tile
    return grid


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(np.pad(values, (window - 1, 0), mode="edge"), kernel, mode="valid")


def plot_curves(history: dict[str, list[tuple[int, float]]], width: int, height: int) -> np.ndarray:
    """Loss curves (moving average over ~2% of the points) as a uint8 RGB image."""
    plot = np.full((height, width, 3), 255, dtype=np.uint8)
    series = {k: np.asarray(v, dtype=np.float64) for k, v in history.items() if len(v) > 1}
    if not series:
        return plot
    legend = _legend_rows(list(series), width - 45)
    x0, x1 = 40, width - 10
    y0, y1 = 5 + 13 * len(legend), height - 16
    steps = np.concatenate([s[:, 0] for s in series.values()])
    smoothed = {k: _smooth(s[:, 1], max(1, len(s) // 50)) for k, s in series.items()}
    ys = np.concatenate(list(smoothed.values()))
    lo, hi = np.percentile(ys, 1), np.percentile(ys, 99)
    hi = hi if hi > lo else lo + 1.0
    s_max = max(float(steps.max()), 1.0)
    cv2.rectangle(plot, (x0, y0), (x1, y1), (200, 200, 200), 1)
    for text, y in ((f"{hi:.2f}", y0 + 8), (f"{lo:.2f}", y1)):
        cv2.putText(plot, text, (2, y), cv2.FONT_HERSHEY_PLAIN, 0.8, (90, 90, 90), 1)
    cv2.putText(plot, f"{int(s_max)}", (x1 - 40, height - 3), cv2.FONT_HERSHEY_PLAIN, 0.8, (0,) * 3)
    colours = {name: _CURVE_COLOURS[i % len(_CURVE_COLOURS)] for i, name in enumerate(series)}
    for name, s in series.items():
        px = x0 + (s[:, 0] / s_max) * (x1 - x0)
        py = y1 - (np.clip(smoothed[name], lo, hi) - lo) / (hi - lo) * (y1 - y0)
        pts = np.stack([px, py], axis=1).round().astype(np.int32)[None]
        cv2.polylines(plot, pts, False, colours[name], 1, lineType=cv2.LINE_AA)
    for row, names in enumerate(legend):  # every curve named, on as many lines as it takes
        x = x0 + 5
        for name in names:
            cv2.putText(plot, name, (x, 13 + 13 * row), *_FONT, colours[name], 1)
            x += _text_width(name) + 12
    return plot


_FONT = (cv2.FONT_HERSHEY_PLAIN, 0.9)  # face and scale of the panel names and the legend


def _text_width(text: str) -> int:
    return cv2.getTextSize(text, *_FONT, 1)[0][0]


def _legend_rows(names: list[str], width: int) -> list[list[str]]:
    """The curve names in lines of at most `width` pixels (a longer name gets a line)."""
    rows: list[list[str]] = [[]]
    used = 0
    for name in names:
        w = _text_width(name) + 12
        if rows[-1] and used + w > width:
            rows.append([])
            used = 0
        rows[-1].append(name)
        used += w
    return rows


def _name_lines(name: str, width: int, max_lines: int) -> list[str]:
    """A panel name in at most `max_lines` lines of at most `width` pixels, split at spaces
    (e.g. "true" / "texture"); a word that does not fit is cut."""
    lines: list[str] = []
    for word in name.split():
        if lines and _text_width(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    cut = []
    for line in lines[: max(max_lines, 1)]:
        while len(line) > 1 and _text_width(line) > width:
            line = line[:-1]
        cut.append(line)
    return cut


def render_frame(
    panels: list[tuple[str, Tensor]],
    history: dict[str, list[tuple[int, float]]],
    step: int,
    *,
    ncol: int = 8,
    curve_height: int = 110,
) -> np.ndarray:
    """One timelapse frame: a row of samples per named panel (none: the step and the curves
    only) above the loss curves so far."""
    grids = [(name, image_grid(images, min(ncol, len(images)))) for name, images in panels]
    width = _LABEL_W + max([_CURVES_W, *(g.shape[1] for _, g in grids)])
    rows = [np.full((20, width, 3), 255, dtype=np.uint8)]
    cv2.putText(rows[0], f"step {step}", (4, 15), cv2.FONT_HERSHEY_PLAIN, 1.1, (0, 0, 0), 1)
    for name, grid in grids:
        row = np.full((grid.shape[0], width, 3), 255, dtype=np.uint8)
        row[:, _LABEL_W : _LABEL_W + grid.shape[1]] = grid
        for i, line in enumerate(_name_lines(name, _LABEL_W - 5, max(grid.shape[0] // 13, 1))):
            cv2.putText(row, line, (3, 14 + 13 * i), *_FONT, (0, 0, 0), 1)
        rows.append(row)
    rows.append(plot_curves(history, width, curve_height))
    return np.concatenate(rows, axis=0)


class Timelapse(L.Callback):
    """Every `every_n_steps` global steps, draw the module's `timelapse_panels()` and the losses.

    Args:
        every_n_steps: global steps between frames (a GAN step counts 2, see the module note):
            a frame at step 0 (the untrained model, before the first update), then at each
            multiple of it, and one
            where training stops.
        dirpath: output folder; default `<trainer.default_root_dir>/timelapse`, the same for
            every run in that folder, so a resumed run adds to the frames of the run it resumes.
        fps: frame rate of the GIF and MP4.
        video_every_n_frames: rebuild the videos after this many new frames, or a quarter of the
            frames so far when that is more (a long run's rebuilds stay cheap), and at the end.
        log_wandb: also log frames and the final video to an attached `WandbLogger`.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        dirpath: str | None = None,
        fps: float = 8.0,
        video_every_n_frames: int = 10,
        log_wandb: bool = True,
    ) -> None:
        if every_n_steps < 1 or video_every_n_frames < 1 or fps <= 0:
            raise ValueError(
                f"need every_n_steps >= 1, video_every_n_frames >= 1, fps > 0; got "
                f"{every_n_steps}, {video_every_n_frames}, {fps}"
            )
        self.every_n_steps, self.fps = every_n_steps, fps
        self.video_every_n_frames, self.log_wandb = video_every_n_frames, log_wandb
        self.dirpath = Path(dirpath) if dirpath else None
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.last_frame_step: int | None = None
        self.last_frame: np.ndarray | None = None  # (H, W, 3) uint8, the latest frame rendered
        self._new_frames = 0

    @property
    def frames_dir(self) -> Path:
        assert self.dirpath is not None, "the folder is set when the training starts"
        return self.dirpath / "frames"

    def frame_paths(self) -> list[Path]:
        """Frame files on disk (`<step>.png`, other files ignored), in step order."""
        if not self.frames_dir.is_dir():
            return []
        return sorted(p for p in self.frames_dir.glob("*.png") if _is_step(p.stem))

    def state_dict(self) -> dict[str, Any]:
        history = {k: [list(p) for p in v] for k, v in self.history.items()}
        return {"history": history, "last_frame_step": self.last_frame_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: [tuple(p) for p in v] for k, v in state_dict["history"].items()}
        self.last_frame_step = state_dict["last_frame_step"]

    def folder(self, trainer: L.Trainer) -> Path:
        """`dirpath`, else `<default_root_dir>/timelapse`: not the logger's versioned folder,
        so a resume writes here too."""
        return Path(self.dirpath or Path(trainer.default_root_dir) / "timelapse")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.dirpath = self.folder(trainer)
        if not hasattr(pl_module, "timelapse_panels"):
            raise ValueError(f"{type(pl_module).__name__} has no timelapse_panels() to draw")

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run:
            return  # a config check deletes nothing
        step = trainer.global_step  # restored by now when resuming
        remove_temp_files(self.frames_dir)  # left by writes a kill interrupted
        remove_temp_files(self.dirpath, "timelapse", (".gif", ".mp4"))
        for path in self.frame_paths():  # made after the checkpoint we resume from
            if int(path.stem) > step:
                path.unlink()
        self.history = {k: [p for p in v if p[0] <= step] for k, v in self.history.items()}
        if self.last_frame_step is not None and self.last_frame_step > step:
            self.last_frame_step = None
        kept = f" ({len(self.frame_paths())} kept)" if step else ""
        rank_zero_info(
            f"Timelapse: a frame every {self.every_n_steps} global steps in "
            f"{self.frames_dir}{kept}; videos {self.dirpath / 'timelapse.mp4'} and .gif"
        )

    @rank_zero_only
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        if trainer.global_step == 0 and self.last_frame_step is None:  # the untrained model
            self.make_frame(trainer, pl_module)

    @rank_zero_only
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        step = trainer.global_step
        if isinstance(outputs, dict):
            for name, value in outputs.items():
                if isinstance(value, Tensor) and name != "loss":
                    self.history.setdefault(name, []).append((step, value.detach().item()))
                elif isinstance(value, (float, int)) and name != "loss":
                    self.history.setdefault(name, []).append((step, float(value)))
        # after the untrained model's frame (step 0, `on_train_batch_start`), one where the step
        # reaches a multiple of N, so frames stay N apart across a stop (its own final frame)
        # and a resume
        n = self.every_n_steps
        due = self.last_frame_step is None or step // n > self.last_frame_step // n
        if due and not trainer.sanity_checking:
            self.make_frame(trainer, pl_module)

    def make_frame(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *, final: bool = False
    ) -> Path | None:
        """Render, write and (maybe) log the frame of the current step (`final`: after the fit
        loop); returns its path (None under `fast_dev_run`, which only renders it into
        `last_frame`)."""
        step = trainer.global_step
        with torch.no_grad():
            panels = pl_module.timelapse_panels()
        frame = self.last_frame = render_frame(panels, self.history, step)
        self.last_frame_step = step
        if trainer.fast_dev_run:
            return None
        path = write_frame(frame, self.frames_dir / f"{step:08d}.png")
        self._new_frames += 1
        # rebuilding costs every frame on disk: waiting for the frames to grow by a
        # quarter keeps a long run's rebuilds linear in its frames, not quadratic
        if self._new_frames >= max(self.video_every_n_frames, len(self.frame_paths()) // 4):
            self.write_videos()
        self._log_wandb(trainer, final, frame=frame)
        self._write_history()
        return path

    def write_videos(self) -> list[Path]:
        """Rebuild timelapse.gif and timelapse.mp4 from every frame on disk, read one at a
        time (hundreds of frames need not fit in memory)."""
        paths = self.frame_paths()
        self._new_frames = 0
        if not paths:
            return []
        shape = read_frame(paths[-1]).shape  # frames can grow if a panel changes: pad to it

        def frames() -> Iterator[np.ndarray]:
            return (_fit(read_frame(path), shape) for path in paths)

        return [
            write_gif(frames(), self.dirpath / "timelapse.gif", fps=self.fps),
            write_mp4(frames(), self.dirpath / "timelapse.mp4", fps=self.fps),
        ]

    def _write_history(self) -> None:
        tmp = self.dirpath / ".losses.json.tmp"
        tmp.write_text(json.dumps(self.history))
        os.replace(tmp, self.dirpath / "losses.json")

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.last_frame_step != trainer.global_step:
            self.make_frame(trainer, pl_module, final=True)
        if trainer.fast_dev_run:
            return
        if paths := self.write_videos():
            self._log_wandb(trainer, True, video=paths[0])
            frames = self.frame_paths()
            rank_zero_info(
                f"Timelapse: {len(frames)} frames (steps {int(frames[0].stem)}-"
                f"{int(frames[-1].stem)}) in {self.frames_dir}; videos {paths[1]}, {paths[0]}"
            )

    @rank_zero_only
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, error: Exception):
        if self.dirpath is not None and self._new_frames:
            self.write_videos()  # keep what was made when a training is interrupted

    def _log_wandb(
        self,
        trainer: L.Trainer,
        final: bool,
        frame: np.ndarray | None = None,
        video: Path | None = None,
    ) -> None:
        """Log a frame or the video (GIF) to an attached `WandbLogger` (if any) at the
        step Lightning logs the losses at (`_logging_step`), with `trainer.global_step` (the
        frame files' step) as `timelapse/global_step`."""
        if not self.log_wandb:
            return
        from lightning.pytorch.loggers import WandbLogger

        logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if logger is None:
            return
        import wandb

        metrics: dict[str, Any] = {"timelapse/global_step": trainer.global_step}
        if frame is not None:
            metrics["timelapse/frame"] = [wandb.Image(frame)]
        if video is not None:
            metrics["timelapse/video"] = wandb.Video(str(video), format="gif")
        logger.log_metrics(metrics, step=_logging_step(trainer, final=final))


def _logging_step(trainer: L.Trainer, *, final: bool) -> int:
    """The step Lightning logs `LightningModule.log` metrics at (Lightning 2.x): the batches
    that stepped the optimisers, so a GAN step is one step (`global_step` counts each optimiser,
    2 per GAN step). The count goes up after a batch's hooks, so once the fit loop is done
    (`final`) the last batch's step is one less."""
    step = trainer.fit_loop.epoch_loop._batches_that_stepped
    return max(step - 1, 0) if final else step


def _is_step(stem: str) -> bool:
    return stem.isascii() and stem.isdigit()


def _fit(frame: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Crop or pad (white) a frame to `shape`."""
    out = np.full(shape, 255, dtype=np.uint8)
    h, w = min(shape[0], frame.shape[0]), min(shape[1], frame.shape[1])
    out[:h, :w] = frame[:h, :w]
    return out
