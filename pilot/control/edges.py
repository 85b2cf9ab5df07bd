"""Edge control images from pictures: Canny (OpenCV), soft edges and line art.

All line-type ControlNets (canny, softedge/HED, lineart, scribble, mlsd) were trained on white
lines on a black background; every function here returns that, (B, 3, H, W) in [0, 1], from
RGB images (B, 3, H, W) in [0, 1]. `soft_edges` and `line_art` are classical, network-free
stand-ins for the HED/PiDiNet and lineart annotators: soft edges are a smoothed gradient
magnitude (grey levels as HED gives), line art is a soft-thresholded difference of Gaussians (after
XDoG, Winnemoeller et al. 2012, "XDoG: an eXtended difference-of-Gaussians compendium").
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R BT.601 luma weights, as OpenCV's RGB2GRAY
_LUMA = (0.299, 0.587, 0.114)


def _check(image: Tensor) -> None:
    if image.ndim != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"image of shape {tuple(image.shape)}: expected (B, 3 or 1, H, W)")


def _to_uint8(image: Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, C) uint8, rounded as PIL / OpenCV do."""
    return (
        (image.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    )


def luma(image: Tensor) -> Tensor:
    """(B, 1, H, W) luma of RGB (or already grey) images."""
    _check(image)
    if image.shape[1] == 1:
        return image
    weights = torch.tensor(_LUMA, device=image.device, dtype=image.dtype)
    return (image * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)


def canny(image: Tensor, low: int = 100, high: int = 200) -> Tensor:
    """Canny edges (Canny 1986) with OpenCV, as ControlNet's `apply_canny` (thresholds 100/200).

    OpenCV runs on the 8-bit RGB image (per pixel the channel with the strongest gradient), like
    the annotator the canny models were trained with.

    Returns:
        (B, 3, H, W), 1 on edges, 0 elsewhere.
    """
    _check(image)
    if not 0 <= low <= high:
        raise ValueError(f"canny thresholds low={low}, high={high}: need 0 <= low <= high")
    pixels = _to_uint8(image)  # (B, H, W, C)
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    edges = np.stack([cv2.Canny(np.ascontiguousarray(p), low, high) for p in pixels])
    out = torch.from_numpy(edges).to(image.device, torch.float32) / 255  # (B, H, W)
    return out[:, None].expand(-1, 3, -1, -1).to(image.dtype).contiguous()


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, 1, H, W), reflect padding (edge replication along a side
    shorter than the kernel's radius, which reflection cannot pad)."""
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    mode = "reflect" if radius < x.shape[-1] else "replicate"
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    mode = "reflect" if radius < x.shape[-2] else "replicate"
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode), k.view(1, 1, -1, 1))


def soft_edges(image: Tensor, sigma: float = 1.5, gamma: float = 0.5) -> Tensor:
    """Soft edge map: gradient magnitude of the blurred luma, normalised per image.

    Args:
        image: (B, 3, H, W) in [0, 1].
        sigma: Gaussian blur in pixels before the gradient (wider, softer edges).
        gamma: Tone curve on the normalised magnitude (< 1 lifts faint edges, as HED's soft
            grey lines look).

    Returns:
        (B, 3, H, W) in [0, 1], bright on edges.
    """
    if min(image.shape[-2:]) < 2:
        H, W = image.shape[-2:]
        raise ValueError(f"image {W}x{H} (WxH): soft edges need 2 pixels a side or more")
    y = _blur(luma(image).float(), sigma)
    gy, gx = torch.gradient(y, dim=(2, 3))
    magnitude = (gx**2 + gy**2).sqrt()
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
    out = (magnitude / peak) ** gamma
    return out.expand(-1, 3, -1, -1).to(image.dtype).contiguous()


def line_art(
    image: Tensor, sigma: float = 0.8, k: float = 1.6, eps: float = 0.01, phi: float = 100.0
) -> Tensor:
    """Line art by a difference of Gaussians of the luma, soft-thresholded as in XDoG.

    `D = G_sigma - G_(k sigma)` is negative on the dark side of every edge and zero on flat
    areas of any brightness; ink is `tanh(phi * (-D - eps))` where `-D > eps` (Winnemoeller et
    al. 2012 with tau = 1 and the ramp applied to the ink side, so dark areas stay blank).

    Returns:
        (B, 3, H, W) in [0, 1], 1 on lines.
    """
    y = luma(image).float()
    d = _blur(y, sigma) - _blur(y, k * sigma)
    ink = torch.tanh(phi * (-d - eps)).clamp_min(0)
    return ink.expand(-1, 3, -1, -1).to(image.dtype).contiguous()
