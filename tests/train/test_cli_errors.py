"""A setting a config class refuses is one line naming its place in the config."""

import pytest

pytest.importorskip("lightning")

from tests.train.helpers import dcgan_config, write_yaml  # noqa: E402


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("model.generator.image_size", "48", "model.generator.image_size=48 must be 32, 64 or 128"),
        ("timelapse.every_n_steps", "0", "timelapse: need every_n_steps >= 1, "),
        ("checkpoint.every_n_train_steps", "-3", "checkpoint: Invalid value for every_n_train_"),
    ],
)
def test_a_refused_setting_names_its_section(tmp_path, capsys, flag, value, message):
    from pilot.cli import main

    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=2))
    assert main(["train", "dcgan", "--config", str(cfg), f"--{flag}", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pilot train: error: {message}") and "Traceback" not in err
    assert not (tmp_path / "ckpt").exists()
