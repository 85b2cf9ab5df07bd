"""Procedural shape images: the seed's first GAN exercise, drawn on the fly with OpenCV.

`TrianglesDataset` draws one centred regular triangle of random colour, size and rotation on a
plain background; `ShapesDataset` draws a composition of random shapes (circles, squares,
triangles, ellipses) anywhere in the frame. Item `i` is a pure function of `(seed, i)`, so the
data set is identical across runs, workers and resumed trainings. Images are (3, S, S) float
tensors in [-1, 1], RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

_SUPERSAMPLE = 4  # shapes are drawn at 4x the side and area-downsampled: smooth, exact edges


@dataclass(frozen=True)
class ShapesConfig:
    """What a procedural shapes data set draws."""

    image_size: int = 64  # square side in pixels
    length: int = 20_000  # items per epoch (drawn on demand, nothing is stored)
    seed: int = 0  # item i is drawn from the random stream (seed, i)
    background: tuple[int, int, int] = (0, 0, 0)  # RGB 0-255 of the plain background
    min_radius: float = 0.2  # shape circumradius range, as a fraction of the side
    max_radius: float = 0.45
    max_shapes: int = 4  # ShapesDataset only: 1..max_shapes shapes per image

    def __post_init__(self) -> None:
        if isinstance(self.background, list):  # lists from YAML
            object.__setattr__(self, "background", tuple(self.background))
        if self.image_size < 8:
            raise ValueError(f"image_size={self.image_size} must be >= 8")
        if self.length < 1:
            raise ValueError(f"length={self.length} must be >= 1")
        if not 0 < self.min_radius <= self.max_radius <= 0.5:
            raise ValueError(
                f"need 0 < min_radius <= max_radius <= 0.5, got "
                f"min_radius={self.min_radius}, max_radius={self.max_radius}"
            )
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"background={self.background} must be three values in 0..255")
        if self.max_shapes < 1:
            raise ValueError(f"max_shapes={self.max_shapes} must be >= 1")


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated, bright RGB colour (HSV with S, V in [0.6, 1]), so it stands off black."""
    hue = rng.uniform(0.0, 180.0)  # OpenCV's hue range
    sat, val = rng.uniform(0.6, 1.0, size=2) * 255
    hsv = np.array([[[hue, sat, val]]], dtype=np.float32).astype(np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def regular_polygon(centre: tuple[float, float], radius: float, n: int, angle: float) -> np.ndarray:
    """Vertices (n, 2) of a regular n-gon with circumradius `radius`, first vertex at `angle`."""
    t = angle + 2 * math.pi * np.arange(n) / n
    return np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], axis=1)


def _canvas(cfg: ShapesConfig) -> np.ndarray:
    side = cfg.image_size * _SUPERSAMPLE
    return np.full((side, side, 3), cfg.background, dtype=np.uint8)


def _fill(canvas: np.ndarray, points: np.ndarray, colour: tuple[int, int, int]) -> None:
    pts = np.round(points * _SUPERSAMPLE).astype(np.int32)[None]  # (1, n, 2) pixel coordinates
    cv2.fillPoly(canvas, pts, colour, lineType=cv2.LINE_AA)


def _to_tensor(canvas: np.ndarray, size: int) -> Tensor:
    """uint8 (S*k, S*k, 3) RGB -> float (3, S, S) in [-1, 1], area-downsampled."""
    image = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image).permute(2, 0, 1).float().div(127.5).sub(1.0)


def draw_triangle(cfg: ShapesConfig, rng: np.random.Generator) -> Tensor:
    """One centred regular triangle of random colour, size and rotation: (3, S, S) in [-1, 1]."""
    s = cfg.image_size
    radius = rng.uniform(cfg.min_radius, cfg.max_radius) * s
    points = regular_polygon((s / 2, s / 2), radius, 3, rng.uniform(0, 2 * math.pi))
    canvas = _canvas(cfg)
    _fill(canvas, points, random_colour(rng))
    return _to_tensor(canvas, s)


def draw_shapes(cfg: ShapesConfig, rng: np.random.Generator) -> Tensor:
    """1..max_shapes random shapes at random places, later ones on top: (3, S, S) in [-1, 1]."""
    s = cfg.image_size
    canvas = _canvas(cfg)
    for _ in range(int(rng.integers(1, cfg.max_shapes + 1))):
        radius = rng.uniform(cfg.min_radius, cfg.max_radius) * s * 0.6
        centre = tuple(rng.uniform(radius * 0.5, s - radius * 0.5, size=2))
        colour, angle = random_colour(rng), rng.uniform(0, 2 * math.pi)
        kind = rng.choice(["circle", "square", "triangle", "ellipse"])
        if kind == "circle":
            points = regular_polygon(centre, radius, 64, angle)
        elif kind == "ellipse":
            t = angle + 2 * math.pi * np.arange(64) / 64
            ax, ay = radius, radius * rng.uniform(0.4, 0.8)
            local = np.stack([ax * np.cos(t), ay * np.sin(t)], axis=1)
            rot = np.array(
                [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
            )
            points = local @ rot.T + np.array(centre)
        else:
            points = regular_polygon(centre, radius, 4 if kind == "square" else 3, angle)
        _fill(canvas, points, colour)
    return _to_tensor(canvas, s)


class TrianglesDataset(Dataset):
    """Centred regular triangles of random colour, size and rotation on a plain background."""

    def __init__(self, cfg: ShapesConfig) -> None:
        self.cfg = cfg

    def __len__(self) -> int:
        return self.cfg.length

    def __getitem__(self, i: int) -> Tensor:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        return draw_triangle(self.cfg, np.random.default_rng([self.cfg.seed, i]))


class ShapesDataset(TrianglesDataset):
    """Compositions of 1..max_shapes random shapes of random colours on a plain background."""

    def __getitem__(self, i: int) -> Tensor:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        return draw_shapes(self.cfg, np.random.default_rng([self.cfg.seed, i]))
