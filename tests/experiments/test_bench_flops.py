"""The benchmark FLOP counter counts what the config implies."""

import torch

from experiments.bench.flops import count_flops, unet_flops


def test_linear_and_conv_counts_are_exact():
    x = torch.empty(3, 16)
    assert count_flops(lambda: torch.nn.Linear(16, 8), x) == 2 * 3 * 16 * 8
    img = torch.empty(1, 4, 10, 10)
    assert count_flops(lambda: torch.nn.Conv2d(4, 6, 3, padding=1), img) == 2 * 100 * 6 * 4 * 9


def test_unet_flops_grow_with_batch_and_size():
    small, batch2 = unet_flops("tiny", 64, batch=1), unet_flops("tiny", 64, batch=2)
    assert small > 0 and batch2 == 2 * small
    assert 3.5 * small < unet_flops("tiny", 128, batch=1) < 4.5 * small  # attention grows faster
