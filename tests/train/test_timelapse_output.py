"""What a training tells the artist about its timelapse and checkpoint, and the frames it makes."""

import logging

import pytest

pytest.importorskip("lightning")

from tests.train.helpers import dcgan_config, write_yaml  # noqa: E402
from train.cli import run  # noqa: E402


def test_a_training_says_where_its_timelapse_and_checkpoint_are(tmp_path, caplog):
    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=4))
    timelapse = tmp_path / "timelapse"
    with caplog.at_level(logging.INFO):
        run("dcgan", ["fit", "--config", str(cfg)])
    assert (
        f"Timelapse: a frame every 2 global steps in {timelapse / 'frames'}; videos "
        f"{timelapse / 'timelapse.mp4'} and .gif"
    ) in caplog.text
    assert (
        f"Timelapse: 2 frames (steps 2-4) in {timelapse / 'frames'}; videos "
        f"{timelapse / 'timelapse.mp4'}, {timelapse / 'timelapse.gif'}"
    ) in caplog.text
    assert f"Checkpoint: {tmp_path / 'ckpt' / 'last.ckpt'} (step 4; --ckpt_path last)" in (
        caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run("dcgan", ["fit", "--config", str(cfg), "--trainer.max_steps", "6", "--ckpt_path",
                      "last"])  # fmt: skip
    assert f"in {timelapse / 'frames'} (2 kept); videos" in caplog.text
    assert "Timelapse: 3 frames (steps 2-6)" in caplog.text
