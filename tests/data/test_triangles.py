"""Procedural shapes: deterministic items, value range, centred triangles, config errors."""

import numpy as np
import pytest
import torch

from pilot.data.triangles import ShapesConfig, ShapesDataset, TrianglesDataset


def test_items_are_deterministic_and_in_range():
    ds = TrianglesDataset(ShapesConfig(image_size=32, length=10, seed=3))
    a, b = ds[4], TrianglesDataset(ShapesConfig(image_size=32, length=10, seed=3))[4]
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, ds[5])
    assert a.min() >= -1 and a.max() <= 1


def test_triangle_is_centred_on_the_background():
    cfg = ShapesConfig(image_size=64, length=20)
    for i in range(20):
        image = TrianglesDataset(cfg)[i]
        mask = (image > -0.9).any(0).numpy()  # foreground on the black background
        ys, xs = np.nonzero(mask)
        # a regular triangle's centroid is the centre of its circumcircle: the image centre
        assert abs(xs.mean() - 31.5) < 1.5 and abs(ys.mean() - 31.5) < 1.5
        assert (image[:, 0, 0] == -1).all()  # corners keep the plain background


def test_shapes_set_varies():
    ds = ShapesDataset(ShapesConfig(image_size=32, length=4))
    assert ds[0].shape == (3, 32, 32)
    assert not torch.equal(ds[0], ds[1])
    with pytest.raises(IndexError):
        ds[4]


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="min_radius=0.4, max_radius=0.3"):
        ShapesConfig(min_radius=0.4, max_radius=0.3)
    with pytest.raises(ValueError, match="background"):
        ShapesConfig(background=(0, 0, 300))
