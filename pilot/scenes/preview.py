"""Pass visualisation: colourised depth, normals and flow, labelled contact sheets of shots."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor


def colorize_depth(depth: Tensor, far: float | None = None) -> Tensor:
    """Depth (B, 1, H, W) metres -> (B, 3, H, W) in [0, 1], turbo colour map of inverse depth.

    Each image is normalised between its 1st and 99th inverse-depth percentiles (near = warm);
    pixels at or beyond `far` (sky) are black.
    """
    inv = 1 / depth.clamp_min(1e-6)
    lo = torch.quantile(inv.flatten(1), 0.01, dim=1)[:, None, None, None]
    hi = torch.quantile(inv.flatten(1), 0.99, dim=1)[:, None, None, None]
    x = ((inv - lo) / (hi - lo).clamp_min(1e-9)).clamp(0, 1)
    a = (x[:, 0] * 255).round().to(torch.uint8).cpu().numpy()
    rgb = np.stack([cv2.applyColorMap(im, cv2.COLORMAP_TURBO)[:, :, ::-1] for im in a])
    out = torch.from_numpy(rgb.copy()).permute(0, 3, 1, 2).float().div(255).to(depth.device)
    if far is not None:
        out = out * (depth < far)
    return out


def normals_rgb(normals: Tensor) -> Tensor:
    """Unit normals (B, 3, H, W) -> (B, 3, H, W) in [0, 1] as n / 2 + 1 / 2; zero normals black."""
    valid = normals.norm(dim=1, keepdim=True) > 0
    return (normals * 0.5 + 0.5) * valid


def flow_rgb(flow: Tensor, max_norm: float | None = None) -> Tensor:
    """Flow (B, 2, H, W) pixels -> (B, 3, H, W) in [0, 1]: hue = direction, saturation = speed."""
    mag = flow.norm(dim=1)  # (B, H, W)
    scale = max_norm or float(mag.max().clamp_min(1e-6))
    hue = (torch.atan2(flow[:, 1], flow[:, 0]) / (2 * np.pi) % 1.0) * 179
    hsv = torch.stack([hue, (mag / scale).clamp(0, 1) * 255, torch.full_like(mag, 255)], -1)
    hsv = hsv.round().to(torch.uint8).cpu().numpy()
    rgb = np.stack([cv2.cvtColor(im, cv2.COLOR_HSV2RGB) for im in hsv])
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div(255).to(flow.device)


def contact_sheet(columns: dict[str, Tensor], pad: int = 2, label_height: int = 18) -> np.ndarray:
    """Grid image (H', W', 3) uint8 RGB: one labelled column per entry, one row per batch item.

    Args:
        columns: name -> (B, 1 or 3, H, W) tensors in [0, 1], all with the same B, H, W.
        pad: pixels between tiles.
        label_height: height of the label band on top (0 for none).
    """
    shapes = {k: (v.shape[0], *v.shape[2:]) for k, v in columns.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"contact_sheet: columns differ in batch or size: {shapes}")
    B, H, W = next(iter(shapes.values()))
    n = len(columns)
    sheet = np.full((label_height + B * (H + pad), n * (W + pad), 3), 255, np.uint8)
    for j, (name, x) in enumerate(columns.items()):
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        tiles = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        x0 = j * (W + pad)
        for i in range(B):
            y0 = label_height + i * (H + pad)
            sheet[y0 : y0 + H, x0 : x0 + W] = tiles[i]
        if label_height:
            org = (x0 + 3, label_height - 5)
            cv2.putText(sheet, name, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return sheet


def pass_columns(frames: list, far: float) -> dict[str, Tensor]:
    """Visualised passes of shot frames (`pilot.scenes.shot.Frame`), one column per pass.

    Returns name -> (B, 3, H, W) in [0, 1]: image, hatched, turbo depth, normals, motion to
    next frame (the passes the frames have).
    """
    columns = {}
    if frames[0].image is not None:
        columns["image"] = torch.stack([f.image for f in frames])
    if frames[0].hatched is not None:
        columns["hatched"] = torch.stack([f.hatched for f in frames]).expand(-1, 3, -1, -1)
    columns["depth"] = colorize_depth(torch.stack([f.depth for f in frames]), far=far)
    if frames[0].normals is not None:
        columns["normals"] = normals_rgb(torch.stack([f.normals for f in frames]))
    if frames[0].motion is not None:
        columns["motion to next"] = flow_rgb(torch.stack([f.motion[2:] for f in frames]))
    return columns
