"""`experiments.walls_eval`: the conditioner's held-out table, baselines and checkerboard rows."""

import json
import sys
from dataclasses import replace

from experiments import walls_eval
from pilot.data.walls import write_pairs
from pilot.models.pix2pix import PIX2PIX_PRESETS, UNetGenerator
from pilot.weights.gan import export_generator


def test_walls_eval_reports_every_row(tmp_path, monkeypatch, capsys):
    write_pairs(tmp_path / "train", 3, 128, seed=0)
    write_pairs(tmp_path / "val", 2, 128, seed=1)
    walls = PIX2PIX_PRESETS["walls128"]  # hatched in; texture and fog out
    cfg = replace(walls, image_size=64, base_channels=2, max_mult=2, upsample="resize")
    export_generator("pix2pix", UNetGenerator(cfg), tmp_path / "g.safetensors")
    argv = ["walls_eval", "--checkpoint", str(tmp_path / "g.safetensors")]
    argv += ["--root", str(tmp_path / "train"), "--val-root", str(tmp_path / "val")]
    monkeypatch.setattr(sys, "argv", argv)
    walls_eval.main()
    report = json.loads(capsys.readouterr().out)
    assert report["held_out_pairs"] == 2
    rows = ("model", "input_copy", "mean_image", "colour_blind_oracle", "targets")
    assert all(row in report for row in rows)
    assert set(report["model"]) >= {"texture_psnr", "fog_corr", "texture_checkerboard"}
    assert report["targets"]["texture_checkerboard"] < 0.05  # renders have no pixel pattern
