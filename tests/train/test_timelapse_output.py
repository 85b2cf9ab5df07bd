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
        f"Timelapse: 3 frames (steps 0-4) in {timelapse / 'frames'}; videos "
        f"{timelapse / 'timelapse.mp4'}, {timelapse / 'timelapse.gif'}"
    ) in caplog.text
    assert f"Checkpoint: {tmp_path / 'ckpt' / 'last.ckpt'} (step 4; --ckpt_path last)" in (
        caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run("dcgan", ["fit", "--config", str(cfg), "--trainer.max_steps", "6", "--ckpt_path",
                      "last"])  # fmt: skip
    assert f"in {timelapse / 'frames'} (3 kept); videos" in caplog.text
    assert "Timelapse: 4 frames (steps 0-6)" in caplog.text


def test_the_first_frame_is_the_untrained_model(tmp_path):
    """Frame 0 is drawn before the first update, from the weights the training starts with."""
    import numpy as np
    import torch
    from PIL import Image

    from train.timelapse import render_frame

    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=2))
    cli = run("dcgan", ["fit", "--config", str(cfg)])
    frames = tmp_path / "timelapse" / "frames"
    assert sorted(p.name for p in frames.glob("*.png")) == ["00000000.png", "00000002.png"]
    torch.manual_seed(0)  # the config's seed_everything: the weights the training started from
    untrained = type(cli.model)(cli.model.cfg, timelapse_samples=4)
    with torch.no_grad():
        expected = render_frame(untrained.timelapse_panels(), {}, 0)
    assert np.array_equal(np.asarray(Image.open(frames / "00000000.png")), expected)
