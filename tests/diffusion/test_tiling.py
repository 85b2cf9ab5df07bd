"""Tiled application: exact for local maps, seamless, and exact when one tile covers all.
Sliced application: the batch in slices of the given size, the same output."""

import pytest
import torch
import torch.nn.functional as F

from pilot.diffusion.tiling import sliced, tiled


def upsample(z):  # a decoder-like local map, x8
    return F.interpolate(z, scale_factor=8, mode="nearest") * 2 + 1


def downsample(x):  # an encoder-like local map, /8
    return F.avg_pool2d(x, 8)


@pytest.mark.parametrize(
    "shape, tile", [((2, 4, 20, 28), 8), ((1, 4, 17, 9), 6), ((1, 4, 8, 8), 8)]
)
def test_tiled_upsample_is_exact(shape, tile):
    z = torch.randn(shape)
    assert torch.allclose(tiled(upsample, z, tile, 8), upsample(z), atol=1e-6)


def test_tiled_downsample_is_exact():
    x = torch.randn(1, 3, 160, 96)
    assert torch.allclose(tiled(downsample, x, 64, 1 / 8), downsample(x), atol=1e-6)


def test_tiles_blend_smoothly():
    """A map with a per-tile offset (like per-tile norm statistics) leaves no hard seam."""

    def offset(z):
        return upsample(z) + 10 * z.mean()

    z = torch.randn(1, 1, 32, 32)
    out = tiled(offset, z, 16, 8, overlap=8)
    jumps = (out[..., 1:] - out[..., :-1]).abs() - (
        upsample(z)[..., 1:] - upsample(z)[..., :-1]
    ).abs()
    # tile offsets differ by ~1; without ramps a seam would jump by that much
    assert jumps.max() < 0.1


def test_overlap_must_be_smaller_than_tile():
    with pytest.raises(ValueError, match="overlap"):
        tiled(upsample, torch.randn(1, 1, 32, 32), 8, 8, overlap=8)


@pytest.mark.parametrize(
    "size, calls", [(2, [2, 2, 1]), (1, [1] * 5), (5, [5]), (9, [5]), (None, [5])]
)
def test_sliced_calls_the_map_on_slices_of_the_batch(size, calls):
    seen = []

    def decode(z):
        seen.append(len(z))
        return upsample(z).to(memory_format=torch.channels_last)

    z = torch.randn(5, 4, 3, 2)
    out = sliced(decode, z, size)
    assert seen == calls
    assert torch.equal(out, upsample(z))  # every item from its own slice, in order


def test_slice_size_is_checked():
    with pytest.raises(ValueError, match=r"a slice must hold >= 1 item of the batch .*got 0"):
        sliced(upsample, torch.randn(2, 1, 4, 4), 0)
