"""`experiments.walls_eval` and `walls_hatch_sources`: the conditioner's tables."""

import json
import sys
from dataclasses import replace

import pytest

from experiments import walls_eval
from pilot.data.walls import write_pairs
from pilot.models.pix2pix import PIX2PIX_PRESETS, Pix2PixConfig, UNetGenerator
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


def test_walls_hatch_sources_reports_both_sources(tmp_path, monkeypatch, capsys):
    from experiments import walls_hatch_sources

    walls = PIX2PIX_PRESETS["walls128"]
    cfg = replace(walls, image_size=64, base_channels=2, max_mult=2)
    export_generator("pix2pix", UNetGenerator(cfg), tmp_path / "g.safetensors")
    argv = ["x", "--checkpoint", str(tmp_path / "g.safetensors"), "--frames", "2", "--size", "64"]
    monkeypatch.setattr(sys, "argv", argv)
    walls_hatch_sources.main()
    report = json.loads(capsys.readouterr().out)
    rows = [k for k in report if k.startswith(str(tmp_path))]
    assert [r.rsplit(" | ", 1)[1] for r in rows] == ["renderer", "drawn"]
    assert all(set(report[r]) == {"texture_psnr", "fog_corr", "fog_corr_per_image", "fog_l1"}
               for r in rows)  # fmt: skip


def test_walls_scripts_refuse_a_model_without_the_walls_heads(tmp_path, monkeypatch, capsys):
    from experiments import walls_hatch_sources

    cfg = Pix2PixConfig(image_size=64, in_channels=1, base_channels=2, max_mult=2)  # one head
    export_generator("pix2pix", UNetGenerator(cfg), tmp_path / "own.safetensors")
    for script in (walls_eval, walls_hatch_sources):
        argv = ["x", "--checkpoint", str(tmp_path / "own.safetensors"), "--frames", "2"]
        monkeypatch.setattr(sys, "argv", argv[:3] if script is walls_eval else argv)
        with pytest.raises(SystemExit):
            script.main()
        err = capsys.readouterr().err
        assert "own.safetensors: not a walls conditioner" in err
        assert "heads {'image': 3}; expected 1 (hatched) and {'texture': 3, 'fog': 1}" in err


def test_walls_eval_runs_at_the_models_size(tmp_path, monkeypatch, capsys):
    write_pairs(tmp_path / "train", 2, 64, seed=0)
    write_pairs(tmp_path / "val", 2, 64, seed=1)
    walls = PIX2PIX_PRESETS["walls128"]
    cfg = replace(walls, image_size=64, base_channels=2, max_mult=2)
    export_generator("pix2pix", UNetGenerator(cfg), tmp_path / "g.safetensors")
    argv = ["walls_eval", "--checkpoint", str(tmp_path / "g.safetensors")]
    argv += ["--root", str(tmp_path / "train"), "--val-root", str(tmp_path / "val")]
    monkeypatch.setattr(sys, "argv", argv)
    walls_eval.main()
    assert json.loads(capsys.readouterr().out)["size"] == 64
    monkeypatch.setattr(sys, "argv", [*argv, "--size", "96"])
    with pytest.raises(SystemExit):
        walls_eval.main()
    assert "--size=96 must be a multiple of the model's side" in capsys.readouterr().err


def test_no_nan_in_the_json():
    assert walls_eval.finite({"a": float("nan"), "b": {"c": float("inf"), "d": 0.5}}) == {
        "a": None,
        "b": {"c": None, "d": 0.5},
    }
