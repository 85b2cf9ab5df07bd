"""Image-to-image metrics for held-out pairs: L1, PSNR, Pearson correlation, and the baselines a
conditioner must beat (copying its input, predicting the mean training image).

Images are in [-1, 1]; PSNR is computed on [0, 1] (peak 1), L1 on [-1, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def l1(pred: Tensor, target: Tensor) -> float:
    """Mean absolute error in [-1, 1] units."""
    return (pred.float() - target.float()).abs().mean().item()


def psnr(pred: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images mapped to [0, 1], over the whole batch."""
    mse = ((pred.float() - target.float()) / 2).square().mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def colour_spread(images: Tensor) -> float:
    """How saturated pictures are overall: the mean over images (B, 3, H, W) of max - min of
    their mean R, G, B (in the images' units)."""
    rgb = images.float().mean((2, 3))
    return (rgb.max(1).values - rgb.min(1).values).mean().item()


def pearson(pred: Tensor, target: Tensor) -> float:
    """Pearson correlation of all pixel values (0 when either side is constant)."""
    x, y = pred.float().flatten(), target.float().flatten()
    x, y = x - x.mean(), y - y.mean()
    denom = (x.norm() * y.norm()).item()
    return 0.0 if denom == 0 else (x @ y).item() / denom


def pearson_per_image(pred: Tensor, target: Tensor) -> float:
    """Mean over images (dim 0) of the Pearson correlation within each image: whether the
    spatial structure is right, whatever the per-image scale (e.g. a scene's fog density)."""
    return sum(pearson(p, t) for p, t in zip(pred, target, strict=True)) / len(pred)


def checkerboard(images: Tensor, period: int = 2) -> float:
    """Amplitude of a pattern that repeats every `period` pixels across whole images, in the
    images' units: the RMS over images, channels and the period x period pixel phases of each
    phase's mean minus the image's mean.

    Transposed convolutions whose kernel is not a multiple of their stride leave such a pattern
    (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts"); in pictures of the world it
    averages out (about noise / sqrt(H * W / period^2)). Compare a model's figure with its
    targets'.
    """
    B, C, H, W = images.shape
    h, w = H - H % period, W - W % period
    phases = images[..., :h, :w].float().reshape(B, C, h // period, period, w // period, period)
    means = phases.mean((2, 4))  # (B, C, period, period)
    return (means - means.mean((2, 3), keepdim=True)).square().mean().sqrt().item()


def head_metrics(pred: Tensor, target: Tensor, prefix: str = "") -> dict[str, float]:
    """L1, PSNR and correlation of one head's prediction against its target, and the
    prediction's period-2 checkerboard amplitude."""
    return {
        f"{prefix}l1": l1(pred, target),
        f"{prefix}psnr": psnr(pred, target),
        f"{prefix}corr": pearson(pred, target),
        f"{prefix}corr_per_image": pearson_per_image(pred, target),
        f"{prefix}checkerboard": checkerboard(pred),
    }


def input_copy(condition: Tensor, channels: int) -> Tensor:
    """The input-copy baseline: the condition itself, grey repeated or RGB cut to `channels`."""
    if condition.shape[1] == channels:
        return condition
    if condition.shape[1] == 1:
        return condition.repeat(1, channels, 1, 1)
    return condition.mean(1, keepdim=True).repeat(1, channels, 1, 1)[:, :channels]


def mean_image(targets: Tensor, n: int) -> Tensor:
    """The mean-image baseline: the per-pixel mean of training targets, repeated n times."""
    return targets.float().mean(0, keepdim=True).expand(n, -1, -1, -1)


def split(x: Tensor, channels: tuple[int, ...]) -> list[Tensor]:
    """Channel blocks of sizes `channels` (the heads of a multi-head target)."""
    return list(torch.split(x, list(channels), dim=1))
