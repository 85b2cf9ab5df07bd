"""Does an image show one filled, centred triangle? The acceptance check of the triangles DCGAN.

The test is geometric, with OpenCV: estimate the plain background from the border, segment what
differs from it, take the largest outer contour, and require that
1. `approxPolyDP` at 4% of the perimeter reduces it to exactly 3 vertices (a triangle),
2. it is filled: the segmented pixels cover >= 90% of the contour's area and its colour is
   uniform (per-channel standard deviation inside it <= 30 of 255),
3. little else is drawn: foreground outside the contour is <= 10% of its area,
4. it is centred: its centroid is within 8% of the side from the image centre,
5. it is visible: its area is >= 1% of the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class ShapeVerdict:
    """Result of `check_triangle`: accepted or not, and why."""

    accepted: bool
    reason: str  # "ok" or the first failed criterion with its measured value


def _background(image: np.ndarray) -> np.ndarray:
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])  # (4S, 3)
    return np.median(border, axis=0)


def check_triangle(image: np.ndarray, *, threshold: float = 40.0) -> ShapeVerdict:
    """Check one uint8 RGB image (S, S, 3) for a filled, centred triangle (see module doc).

    Args:
        image: uint8 array (S, S, 3), RGB.
        threshold: per-channel difference from the background (0-255) that counts as drawn.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    diff = np.abs(image.astype(np.float32) - _background(image)).max(axis=2)
    mask = (diff > threshold).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return ShapeVerdict(False, "nothing drawn")
    contour = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(contour)
    if area < 0.01 * h * w:
        return ShapeVerdict(False, f"too small: area {area / (h * w):.3f} of the image")
    approx = cv2.approxPolyDP(contour, 0.04 * cv2.arcLength(contour, True), True)
    if len(approx) != 3:
        return ShapeVerdict(False, f"not a triangle: {len(approx)} vertices")
    inside = np.zeros_like(mask)
    cv2.drawContours(inside, [contour], -1, 1, thickness=cv2.FILLED)
    coverage = (mask & inside).sum() / max(inside.sum(), 1)
    if coverage < 0.9:
        return ShapeVerdict(False, f"not filled: {coverage:.2f} of the inside drawn")
    core = cv2.erode(inside, np.ones((3, 3), np.uint8)).astype(bool)  # skip antialiased edges
    spread = image[core].std(axis=0).max() if core.any() else 0.0
    if spread > 30:
        return ShapeVerdict(False, f"not uniform: colour std {spread:.0f}")
    stray = (mask & (1 - inside)).sum() / area
    if stray > 0.1:
        return ShapeVerdict(False, f"clutter: {stray:.2f} of the area drawn outside it")
    m = cv2.moments(contour)
    cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
    offset = max(abs(cx - (w - 1) / 2) / w, abs(cy - (h - 1) / 2) / h)
    if offset > 0.08:
        return ShapeVerdict(False, f"off centre: {offset:.2f} of the side")
    return ShapeVerdict(True, "ok")


def acceptance_rate(images: np.ndarray) -> tuple[float, dict[str, int]]:
    """Fraction of uint8 images (N, S, S, 3) that `check_triangle` accepts, and the reasons
    for rejection counted by their first word(s)."""
    reasons: dict[str, int] = {}
    accepted = 0
    for image in images:
        verdict = check_triangle(image)
        accepted += verdict.accepted
        if not verdict.accepted:
            key = verdict.reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    return accepted / max(len(images), 1), reasons
