"""The triangle shape check accepts the training data and rejects other pictures."""

import cv2
import numpy as np
import torch

from pilot.animation.video import to_uint8
from pilot.data.shape_check import acceptance_rate, check_triangle
from pilot.data.triangles import ShapesConfig, TrianglesDataset


def _images(dataset, n):
    return to_uint8(torch.stack([dataset[i] for i in range(n)]).permute(0, 2, 3, 1).numpy())


def test_accepts_the_triangles_data():
    rate, reasons = acceptance_rate(_images(TrianglesDataset(ShapesConfig(length=64)), 64))
    assert rate == 1.0, reasons


def _canvas():
    return np.zeros((64, 64, 3), np.uint8)


def test_rejects_squares_circles_noise_and_empty():
    square = cv2.rectangle(_canvas(), (20, 20), (44, 44), (255, 0, 0), -1)
    circle = cv2.circle(_canvas(), (32, 32), 14, (0, 255, 0), -1)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert check_triangle(square).reason == "not a triangle: 4 vertices"
    assert not check_triangle(circle).accepted
    assert not check_triangle(noise).accepted
    assert check_triangle(_canvas()).reason == "nothing drawn"


def test_rejects_off_centre_hollow_and_textured_triangles():
    pts = np.array([[32, 12], [52, 48], [12, 48]], np.int32)
    assert check_triangle(cv2.fillPoly(_canvas(), [pts], (0, 0, 255))).accepted
    moved = cv2.fillPoly(_canvas(), [pts - [10, 8]], (0, 0, 255))
    assert check_triangle(moved).reason.startswith("off centre")
    hollow = cv2.polylines(_canvas(), [pts], True, (0, 0, 255), 2)
    assert check_triangle(hollow).reason.startswith("not filled")
    striped = cv2.fillPoly(_canvas(), [pts], (0, 0, 255))
    striped[::2] = np.where(striped[::2] > 0, 80, 0)  # every other row darker: not one colour
    assert not check_triangle(striped).accepted
