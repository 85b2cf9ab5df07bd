"""Paired "hatched -> textured + fog" renders of plane scenes (the seed's Pix2Pix wall data).

Input: the scene's planes drawn as black line hatching on white, lines following each plane's
UV axes. Target: the same view with coloured procedural textures, lighting, and a separate fog
channel. Item `i` is a pure function of `(seed, i)` (its own random stream), so a data set is
identical across runs, batch sizes and partial re-renders.

    from pilot.data.walls import render_pairs, write_pairs, WallsFolder
    pairs = render_pairs(64, 256, seed=0)  # dict of (64, C, 256, 256) tensors in [0, 1]
    write_pairs("data/walls", 2000, 256, seed=0)  # PNG folders + manifest.json
    ds = WallsFolder("data/walls")  # ds[i] -> {"hatched": (1, S, S), ...} in [-1, 1]

Folder layout written by `write_pairs` (8-bit PNG, value = round(255 * x)):

    manifest.json       {"format": "pilot-walls", "version", "count", "size", "seed", "layouts",
                         "passes": {name: {"channels", "range", "ext"}}, "items": [{"index",
                         "layout", "file"}]}; written last: its presence means the set is complete
    .pairs-unfinished   present while `write_pairs` fills the folder (`PairedImages` refuses it)
    hatched/000000.png  grey, 1 = paper, 0 = ink
    textured/000000.png RGB, lit texture without fog
    fog/000000.png      grey, fog amount 0 (clear) .. 1 (only fog)
    image/, depth/ (.npy float32 metres), normals/ (.npy float32 (3, S, S)) when asked for

`write_pairs` goes into a new or empty folder or one it wrote (a manifest, or its unfinished
marker); any other folder is refused, so nothing of yours is overwritten. Writing over a set
marks the folder unfinished and removes the manifest and every pair file (`000000.png` ...)
first: a smaller or different new set leaves no old pairs, and an interrupted rewrite leaves an
unfinished folder, never the old manifest over new files. Your own pair folders (no manifest)
are still read by `PairedImages`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pilot.data.paired import UNFINISHED
from pilot.scenes import layouts
from pilot.scenes.camera import intrinsics
from pilot.scenes.render import Scene, render, stack_scenes
from pilot.scenes.shot_writer import remove_frames

PAIR_PASSES = ("hatched", "textured", "fog")
PNG_PASSES = ("hatched", "textured", "fog", "image")
NPY_PASSES = ("depth", "normals")
MANIFEST_VERSION = 1


def fog_density_range(
    values: Sequence[float], option: str = "--fog-density"
) -> tuple[float, float]:
    """`LayoutConfig.fog_density` from one value (fixed) or two (LO HI, drawn per scene).

    Raises:
        ValueError: naming `option`, unless 1 or 2 values with 0 <= LO <= HI.
    """
    lo, hi = (values[0], values[-1]) if values else (-1.0, -1.0)
    if not 1 <= len(values) <= 2 or not 0 <= lo <= hi:
        raise ValueError(f"{option} takes D or LO HI with 0 <= LO <= HI, got {list(values)}")
    return float(lo), float(hi)


def check_write_args(n: int, size: int, workers: int = 1) -> None:
    """ValueError naming the values unless `write_pairs` can run with them."""
    if n < 1 or size < 8 or workers < 1:
        raise ValueError(
            f"need n >= 1 pairs, size >= 8 and workers >= 1, got n={n}, size={size}, "
            f"workers={workers}"
        )


def check_pairs_folder(root: str | Path) -> None:
    """ValueError unless `write_pairs` may write into `root`: new, empty, or written by it (a
    pilot-walls manifest, or its unfinished marker). Any other folder may hold your files."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file, not a pairs folder")
    if not root.is_dir() or not any(root.iterdir()) or (root / UNFINISHED).exists():
        return
    try:
        ours = json.loads((root / "manifest.json").read_text()).get("format") == "pilot-walls"
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise ValueError(
            f"{root} is not empty and holds no pairs of write_pairs (no pilot-walls "
            "manifest.json): pass a new or empty folder, so nothing of yours is overwritten"
        )


def _clear(root: Path) -> None:
    """Mark `root` unfinished, then remove its manifest and pair files (other files stay)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / UNFINISHED).touch()
    (root / "manifest.json").unlink(missing_ok=True)
    remove_frames(root / p for p in PNG_PASSES + NPY_PASSES)  # pair files are named as frames


def item_generator(seed: int, index: int) -> np.random.Generator:
    """The random stream of item `index` of the data set `seed` (independent of batching)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index])))


def sample_item(
    seed: int,
    index: int,
    layout_names: Sequence[str] = layouts.LAYOUTS,
    cfg: layouts.LayoutConfig | None = None,
) -> tuple[Scene, Tensor, float, int]:
    """The scene of item `index` of the data set `seed`, without rendering it.

    Returns:
        (one-scene `Scene`, c2w (4, 4), horizontal fov in degrees, index into `layout_names`):
        exactly what `render_pairs` renders for that item, so a render's parameters (materials,
        fog) can be read back from `(seed, index)` alone.
    """
    g = item_generator(seed, index)
    k = int(g.integers(len(layout_names)))
    scene, pose, fov = layouts.LAYOUT_BUILDERS[layout_names[k]](g, cfg or layouts.LayoutConfig())
    return scene, pose, fov, k


def render_pairs(
    n: int,
    size: int,
    seed: int,
    *,
    start: int = 0,
    layout_names: Sequence[str] = layouts.LAYOUTS,
    batch: int = 16,
    device: torch.device | str | None = None,
    cfg: layouts.LayoutConfig | None = None,
) -> dict[str, Tensor]:
    """Render items `start .. start + n - 1` of the data set `seed` at `size` x `size`.

    Returns:
        dict of (n, C, size, size) float tensors on `device` (default CPU): `hatched` (1),
        `textured` (3), `fog` (1), `image` (3), `depth` (1, metres), `normals` (3, camera
        space), `plane` (1, long), as documented in `pilot.scenes.render.render`, plus `K`
        (n, 3, 3), `c2w` (n, 4, 4) and `layout` (n,) long indices into `layout_names`.
    """
    if n < 1 or size < 8:
        raise ValueError(f"need n >= 1 and size >= 8, got n={n}, size={size}")
    bad = [name for name in layout_names if name not in layouts.LAYOUT_BUILDERS]
    if bad or not layout_names:
        raise ValueError(f"unknown layouts {bad}; choose from {list(layouts.LAYOUT_BUILDERS)}")
    device = torch.device(device or "cpu")
    chunks: list[dict[str, Tensor]] = []
    for lo in range(start, start + n, batch):
        scenes, K, c2w, kind = [], [], [], []
        for i in range(lo, min(lo + batch, start + n)):
            scene, pose, fov, k = sample_item(seed, i, layout_names, cfg)
            scenes.append(scene)
            K.append(intrinsics(fov, size, size))
            c2w.append(pose)
            kind.append(k)
        K_b, c2w_b = torch.stack(K).to(device), torch.stack(c2w).to(device)
        out = render(stack_scenes(scenes).to(device), K_b, c2w_b, size, size)
        out.update(K=K_b, c2w=c2w_b, layout=torch.tensor(kind, device=device))
        chunks.append(out)
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png_bytes(x: Tensor) -> bytes:
    """(C, H, W) in [0, 1] -> PNG bytes (grey or RGB)."""
    a = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if a.shape[2] == 3:
        a = a[:, :, ::-1]  # OpenCV writes BGR
    a = np.ascontiguousarray(a)
    ok, buf = cv2.imencode(".png", a, [cv2.IMWRITE_PNG_COMPRESSION, 1])  # fast, lossless
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _npy_bytes(x: Tensor) -> bytes:
    import io

    f = io.BytesIO()
    np.save(f, x.float().cpu().numpy())
    return f.getvalue()


def _write_range(
    root: Path,
    lo: int,
    hi: int,
    size: int,
    seed: int,
    passes: Sequence[str],
    layout_names: Sequence[str],
    batch: int,
    device: torch.device | str | None,
    cfg: layouts.LayoutConfig | None,
    threads: int | None = None,
) -> list[dict]:
    """Render and write items lo .. hi - 1; returns their manifest entries."""
    if threads is not None:  # worker process
        torch.set_num_threads(threads)
    items = []
    for start in range(lo, hi, batch * 4):
        m = min(batch * 4, hi - start)
        out = render_pairs(
            m,
            size,
            seed,
            start=start,
            layout_names=layout_names,
            batch=batch,
            device=device,
            cfg=cfg,
        )
        for j in range(m):
            name = f"{start + j:06d}"
            for p in passes:
                ext = _PASS_INFO[p]["ext"]
                data = _png_bytes(out[p][j]) if ext == "png" else _npy_bytes(out[p][j])
                _write_atomic(root / p / f"{name}.{ext}", data)
            layout = layout_names[int(out["layout"][j])]
            items.append({"index": start + j, "layout": layout, "file": name})
    return items


def write_pairs(
    root: str | Path,
    n: int,
    size: int,
    seed: int,
    *,
    passes: Sequence[str] = PAIR_PASSES,
    layout_names: Sequence[str] = layouts.LAYOUTS,
    batch: int = 16,
    device: torch.device | str | None = None,
    workers: int = 1,
    cfg: layouts.LayoutConfig | None = None,
) -> Path:
    """Render `n` pairs and write them under `root` with a manifest; returns the manifest path.

    `cfg` sets the ranges scenes are drawn from (default `layouts.LayoutConfig()`); e.g. a fixed
    `fog_density=(0.1, 0.1)` makes the fog a function of the geometry alone, which a
    conditioner can learn from the hatched input (a random density per scene is invisible there).
    The manifest records the fog density range. The folder is checked (`check_pairs_folder`)
    and an earlier set in it removed first (module doc).

    `workers` > 1 splits the items over that many processes with one torch thread each: on a
    small, shared CPU this beats one process with several intra-op threads, whose OpenMP
    barriers stall whenever another program holds a core. Files are identical either way.
    """
    root = Path(root)
    bad = [p for p in passes if p not in PNG_PASSES + NPY_PASSES]
    if bad:
        raise ValueError(f"unknown passes {bad}; choose from {list(PNG_PASSES + NPY_PASSES)}")
    check_write_args(n, size, workers)
    check_pairs_folder(root)
    _clear(root)
    for p in passes:
        (root / p).mkdir(parents=True, exist_ok=True)
    args = (size, seed, tuple(passes), tuple(layout_names), batch, device, cfg)
    if workers == 1:
        items = _write_range(root, 0, n, *args)
    else:
        import multiprocessing as mp

        bounds = [round(n * k / workers) for k in range(workers + 1)]
        jobs = [(root, lo, hi, *args, 1) for lo, hi in pairwise(bounds) if hi > lo]
        with mp.get_context("spawn").Pool(len(jobs)) as pool:
            items = [it for part in pool.starmap(_write_range, jobs) for it in part]
    manifest = {
        "format": "pilot-walls",
        "version": MANIFEST_VERSION,
        "count": n,
        "size": size,
        "seed": seed,
        "layouts": list(layout_names),
        "fog_density": list((cfg or layouts.LayoutConfig()).fog_density),
        "passes": {p: _PASS_INFO[p] for p in passes},
        "items": items,
    }
    path = root / "manifest.json"
    _write_atomic(path, json.dumps(manifest, indent=1).encode())
    (root / UNFINISHED).unlink()
    return path


_PASS_INFO = {
    "hatched": {"channels": 1, "range": [0, 1], "ext": "png"},
    "textured": {"channels": 3, "range": [0, 1], "ext": "png"},
    "fog": {"channels": 1, "range": [0, 1], "ext": "png"},
    "image": {"channels": 3, "range": [0, 1], "ext": "png"},
    "depth": {"channels": 1, "range": "metres", "ext": "npy"},
    "normals": {"channels": 3, "range": [-1, 1], "ext": "npy"},
}


class WallsFolder(Dataset):
    """A folder written by `write_pairs`: item i -> dict of (C, S, S) float tensors.

    PNG passes are mapped to [-1, 1] (the GAN convention of `pilot.data`); .npy passes are
    returned as stored. Raises FileNotFoundError / ValueError naming the file on bad data.
    """

    def __init__(self, root: str | Path, passes: Sequence[str] = PAIR_PASSES):
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no manifest (not a write_pairs folder, or unfinished)"
            )
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != "pilot-walls":
            raise ValueError(f"{path}: format is {self.manifest.get('format')!r}, not pilot-walls")
        missing = [p for p in passes if p not in self.manifest["passes"]]
        if missing:
            raise ValueError(f"{path}: passes {missing} were not written")
        self.passes = tuple(passes)

    def __len__(self) -> int:
        return len(self.manifest["items"])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        name = self.manifest["items"][i]["file"]
        out = {}
        for p in self.passes:
            info = self.manifest["passes"][p]
            path = self.root / p / f"{name}.{info['ext']}"
            if info["ext"] == "npy":
                out[p] = torch.from_numpy(np.load(path))
                continue
            a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if a is None:
                raise FileNotFoundError(f"{path}: missing or unreadable")
            a = a[:, :, None] if a.ndim == 2 else a[:, :, ::-1]
            if a.shape[2] != info["channels"]:
                raise ValueError(f"{path}: {a.shape[2]} channels, expected {info['channels']}")
            out[p] = torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 127.5 - 1
        return out
