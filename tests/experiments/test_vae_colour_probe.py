"""experiments.tiny_sd.vae_colour_probe: the colour-spread measure and a two-step run."""

import sys

import pytest
import torch

pytest.importorskip("lightning")

from experiments.tiny_sd.vae_colour_probe import colour_spread, main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_colour_spread_is_zero_for_grey_and_two_for_pure_red():
    grey = torch.full((2, 3, 4, 4), 0.3)
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert colour_spread(grey) == 0 and colour_spread(red) == 2
    assert colour_spread(torch.cat([grey, red])) == 1  # a mean over images


def test_probe_runs_and_reports(monkeypatch, capsys):
    argv = [
        "probe",
        "--steps",
        "1",
        "--every",
        "1",
        "--count",
        "4",
        "--batch",
        "2",
        "--loss",
        "mse",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    out = capsys.readouterr().out
    assert "renders' colour spread" in out and out.count("colour spread") == 3  # 1 + steps 0, 1
