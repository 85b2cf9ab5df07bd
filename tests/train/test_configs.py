"""The shipped experiment configs parse: every key maps onto a system, data module or callback."""

from pathlib import Path

import pytest

pytest.importorskip("lightning")

from train.cli import run  # noqa: E402

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.mark.parametrize(
    "system, name",
    [
        ("dcgan", "triangles_dcgan.yaml"),
        ("pix2pix", "hatched_walls_pix2pix.yaml"),
        ("pix2pix", "own_pairs_pix2pix.yaml"),
    ],
)
def test_experiment_config_parses(system, name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(system, ["fit", "--config", str(EXPERIMENTS / name), "--print_config"])
    assert exit_info.value.code == 0
    assert "timelapse:" in capsys.readouterr().out
