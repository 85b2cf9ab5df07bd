"""Random plane layouts (rooms, corridors, free-standing walls) with random cameras and paths.

Each layout builder (`LAYOUT_BUILDERS`, keyed by the names in `LAYOUTS`) takes a
`np.random.Generator` and returns a one-scene `Scene` (B = 1) plus a camera, so a dataset item is
reproducible from its own seed whatever the batch it is rendered in. World
units are metres, z up, floor at z = 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from pilot.scenes import materials
from pilot.scenes.camera import CameraPath, look_at
from pilot.scenes.render import Scene

Layout = Literal["room", "corridor", "walls"]
LAYOUTS: tuple[Layout, ...] = ("room", "corridor", "walls")
Vec3 = tuple[float, float, float]  # a point or direction in world units (metres)
_X, _Y, _Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
View = tuple[Scene, Tensor, float]  # one-scene Scene, c2w (4, 4), horizontal fov in degrees
_SEAM = 1e-3  # metres added to extents so adjoining planes leave no cracks


@dataclass(frozen=True)
class LayoutConfig:
    """Ranges the random layouts, lights, fog and cameras are drawn from."""

    fov_x_deg: tuple[float, float] = (50.0, 95.0)
    pitch_deg: float = 20.0  # camera pitch drawn from [-pitch, pitch]
    fog_density: tuple[float, float] = (0.02, 0.25)  # per metre
    ambient: tuple[float, float] = (0.3, 0.6)
    material: materials.MaterialConfig = materials.MaterialConfig()


def _u(g: np.random.Generator, lo: float, hi: float) -> float:
    return float(g.uniform(lo, hi))


class _Builder:
    """Collects rectangles and their materials for one scene."""

    def __init__(self, g: np.random.Generator, cfg: LayoutConfig, hatch_scale: float = 1.0):
        lo, hi = cfg.material.hatch_density
        self.material = replace(cfg.material, hatch_density=(lo * hatch_scale, hi * hatch_scale))
        self.g, self.cfg, self.rows = g, cfg, []

    def add(self, center: Vec3, u: Vec3, v: Vec3, half_u: float, half_v: float) -> None:
        """A rectangle centred at `center` spanning `half_u` along unit `u` and `half_v` along
        unit `v` each way (grown by the seam margin), with a random material."""
        mat = materials.sample_material(self.g, self.material)
        self.rows.append((center, u, v, (half_u + _SEAM, half_v + _SEAM), mat))

    def vertical(self, x: float, y: float, yaw: float, width: float, height: float) -> None:
        """A wall standing on the floor, centred at (x, y), facing direction `yaw`."""
        u = (math.cos(yaw), math.sin(yaw), 0.0)
        self.add((x, y, height / 2), u, _Z, width / 2, height / 2)

    def build(self, fog_scale: float = 1.0) -> Scene:
        """The collected planes as a one-scene `Scene` with random sun and fog."""
        g, cfg = self.g, self.cfg
        center, u, v, half, mat = zip(*self.rows, strict=True)
        elev, azim = _u(g, 0.35, 1.2), _u(g, 0, 2 * math.pi)
        light = (math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev))
        fog_rgb = torch.from_numpy(0.55 + 0.4 * g.uniform(size=3)).float()
        return Scene(
            center=torch.tensor(center)[None],
            u=torch.tensor(u)[None],
            v=torch.tensor(v)[None],
            half=torch.tensor(half)[None],
            material=torch.stack(mat)[None],
            valid=torch.ones(1, len(center), dtype=torch.bool),
            light=torch.tensor([light]),
            ambient=torch.tensor([_u(g, *cfg.ambient)]),
            fog_density=torch.tensor([_u(g, *cfg.fog_density) * fog_scale]),
            fog_rgb=fog_rgb[None],
        )


def _box(b: _Builder, lx: float, ly: float, lz: float) -> None:
    """Floor, ceiling and four walls of an axis-aligned box centred on the z axis."""
    b.add((0, 0, 0), _X, _Y, lx / 2, ly / 2)
    b.add((0, 0, lz), _X, _Y, lx / 2, ly / 2)
    for sign in (-1, 1):
        b.add((sign * lx / 2, 0, lz / 2), _Y, _Z, ly / 2, lz / 2)
        b.add((0, sign * ly / 2, lz / 2), _X, _Z, lx / 2, lz / 2)


def _camera(
    g: np.random.Generator, cfg: LayoutConfig, eye: Tensor, yaw: float, up_frac: float = 1.0
) -> tuple[Tensor, float]:
    """Pose (4, 4) at `eye` looking along `yaw`, random pitch (up to `up_frac` of the range up)."""
    pitch = math.radians(_u(g, -cfg.pitch_deg, cfg.pitch_deg * up_frac))
    ahead = torch.tensor(
        [math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)]
    )
    return look_at(eye, eye + ahead), _u(g, *cfg.fov_x_deg)


def room(g: np.random.Generator, cfg: LayoutConfig = LayoutConfig()) -> View:
    """A box room with up to two free-standing partitions, camera inside."""
    b = _Builder(g, cfg)
    lx, ly, lz = _u(g, 3, 9), _u(g, 3, 9), _u(g, 2.4, 4)
    _box(b, lx, ly, lz)
    for _ in range(int(g.integers(3))):
        b.vertical(
            _u(g, -lx / 3, lx / 3), _u(g, -ly / 3, ly / 3), _u(g, 0, math.pi), _u(g, 1, 3), lz * 0.7
        )
    eye = torch.tensor([_u(g, -lx / 2 + 0.4, lx / 2 - 0.4), _u(g, -ly / 2 + 0.4, ly / 2 - 0.4)])
    eye = torch.cat([eye, torch.tensor([_u(g, 0.8, lz - 0.4)])])
    return (b.build(), *_camera(g, cfg, eye, _u(g, 0, 2 * math.pi)))


def _corridor_planes(b: _Builder, g: np.random.Generator) -> tuple[float, float, float]:
    """Corridor along x with a few side fins (door frames); returns its (length, width, height)."""
    lx, ly, lz = _u(g, 12, 30), _u(g, 1.6, 3.2), _u(g, 2.4, 3.6)
    _box(b, lx, ly, lz)
    for _ in range(int(g.integers(4))):
        side, depth = (1 if g.uniform() < 0.5 else -1), ly * 0.25
        b.add(
            (_u(g, -lx / 3, lx / 3), side * (ly / 2 - depth / 2), lz / 2), _Y, _Z, depth / 2, lz / 2
        )
    return lx, ly, lz


def corridor(g: np.random.Generator, cfg: LayoutConfig = LayoutConfig()) -> View:
    """A long corridor with side fins, camera looking roughly along it."""
    b = _Builder(g, cfg)
    lx, ly, lz = _corridor_planes(b, g)
    eye = torch.tensor(
        [_u(g, -lx / 2 + 1, lx / 2 - 1), _u(g, -ly / 2 + 0.4, ly / 2 - 0.4), _u(g, 1, lz - 0.4)]
    )
    yaw = (0.0 if g.uniform() < 0.5 else math.pi) + _u(g, -0.6, 0.6)
    return (b.build(), *_camera(g, cfg, eye, yaw))


def walls(g: np.random.Generator, cfg: LayoutConfig = LayoutConfig()) -> View:
    """Free-standing walls on a ground plane under open sky, camera looking at one of them.

    Seen from further away than room walls, they get 0.4x the hatch density so the lines stay
    above the Nyquist limit at 256 px (denser lines fade to flat grey).
    """
    b = _Builder(g, cfg, hatch_scale=0.4)
    b.add((0, 0, 0), _X, _Y, 40, 40)
    centres = []
    for _ in range(int(g.integers(3, 9))):
        x, y = _u(g, -8, 8), _u(g, -8, 8)
        b.vertical(x, y, _u(g, 0, math.pi), _u(g, 2, 8), _u(g, 1.5, 4))
        centres.append((x, y))
    tx, ty = centres[int(g.integers(len(centres)))]
    for _ in range(50):  # keep the eye off the walls
        a, r = _u(g, 0, 2 * math.pi), _u(g, 2.5, 10)
        eye = np.array([tx + r * math.cos(a), ty + r * math.sin(a), _u(g, 0.8, 2.5)])
        if _clearance(b, eye) > 0.5:
            break
    yaw = math.atan2(ty - eye[1], tx - eye[0]) + _u(g, -0.3, 0.3)
    eye_t = torch.from_numpy(eye).float()
    return (b.build(fog_scale=0.4), *_camera(g, cfg, eye_t, yaw, up_frac=0.2))  # open air


def _clearance(b: _Builder, p: np.ndarray) -> float:
    """Distance from point `p` (3,) to the nearest rectangle collected so far."""
    best = math.inf
    for center, u, v, (hu, hv), _ in b.rows:
        d, u, v = p - np.asarray(center), np.asarray(u), np.asarray(v)
        a, c = float(d @ u), float(d @ v)
        off = d - a * u - c * v  # component along the normal
        da, dc = max(abs(a) - hu, 0.0), max(abs(c) - hv, 0.0)
        best = min(best, math.sqrt(da**2 + dc**2 + float(off @ off)))
    return best


LAYOUT_BUILDERS: dict[Layout, Callable[..., View]] = {
    "room": room,
    "corridor": corridor,
    "walls": walls,
}


def __getattr__(name: str) -> object:
    if name == "SAMPLERS":  # its old name, taken by `pilot.diffusion.SAMPLERS` (the samplers)
        warnings.warn(
            "pilot.scenes.layouts.SAMPLERS is deprecated: use LAYOUT_BUILDERS",
            DeprecationWarning,
            stacklevel=2,
        )
        return LAYOUT_BUILDERS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fly_through(
    g: np.random.Generator, n_keys: int = 5, cfg: LayoutConfig = LayoutConfig()
) -> tuple[Scene, CameraPath]:
    """A corridor and a smooth camera path flying down it, weaving between the walls."""
    b = _Builder(g, cfg)
    lx, ly, lz = _corridor_planes(b, g)
    x = torch.linspace(-lx / 2 + 1.5, lx / 2 - 3, n_keys)
    y = torch.from_numpy(g.uniform(-0.5, 0.5, n_keys) * (ly - 1.0)).float()
    z = torch.from_numpy(1.0 + g.uniform(0, 1, n_keys) * (lz - 1.6)).float()
    positions = torch.stack([x, y, z], -1)
    jitter = torch.from_numpy(0.3 * g.normal(size=(n_keys, 3))).float()
    targets = positions + torch.tensor([2.0, 0.0, 0.0]) + jitter
    return b.build(), CameraPath(positions, targets, _u(g, *cfg.fov_x_deg))
