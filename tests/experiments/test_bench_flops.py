"""The benchmark FLOP counter counts what the config implies."""

import pytest
import torch

from experiments.bench import flops
from experiments.bench.flops import count_flops, unet_flops
from pilot.models.unet import UNET_PRESETS, UNet


def test_linear_and_conv_counts_are_exact():
    x = torch.empty(3, 16)
    assert count_flops(lambda: torch.nn.Linear(16, 8), x) == 2 * 3 * 16 * 8
    img = torch.empty(1, 4, 10, 10)
    assert count_flops(lambda: torch.nn.Conv2d(4, 6, 3, padding=1), img) == 2 * 100 * 6 * 4 * 9


def test_unet_flops_grow_with_batch_and_size():
    small, batch2 = unet_flops("tiny", 16, batch=1), unet_flops("tiny", 16, batch=2)
    assert small > 0 and batch2 == 2 * small
    assert 3.5 * small < unet_flops("tiny", 32, batch=1) < 4.5 * small  # attention grows faster


def test_latents_follow_the_vae_factor():
    """The tiny VAE downsamples 2x: a 64 px call is one on 32x32 latents, as the pipeline's."""
    cfg = UNET_PRESETS["tiny"]
    x, t, context = torch.empty(1, 4, 32, 32), torch.empty(1), torch.empty(1, 77, 32)
    assert cfg.cross_attention_dim == 32
    assert unet_flops("tiny", 64, batch=1) == count_flops(lambda: UNet(cfg), x, t, context)


def test_table_in_gflop_and_sizes_checked(capsys):
    flops.main(["--presets", "tiny", "--sizes", "32"])
    row = capsys.readouterr().out.splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["tiny", "32x32", "16x16"]
    assert all(0 < float(c) < 10 for c in cells[3:])  # GFLOP, 3 significant digits: not 0.000
    for bad in (["--presets", "sd15", "--sizes", "60"], ["--presets", "tiny", "--sizes", "0"]):
        with pytest.raises(SystemExit):
            flops.main(bad)
        assert "must be a positive multiple of the" in capsys.readouterr().err
