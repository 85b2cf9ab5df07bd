"""`experiments.walls_fly_through`: a shot folder with the shot's frame names, replaced on rerun."""

import sys
from dataclasses import replace

import pytest
from PIL import Image

from experiments import walls_fly_through
from pilot.cli import main as pilot
from pilot.models.pix2pix import PIX2PIX_PRESETS, UNetGenerator
from pilot.scenes.shot import UNFINISHED, Shot
from pilot.weights.gan import export_generator


def run(monkeypatch, out, *args):
    monkeypatch.setattr(sys, "argv", ["x", "--out", str(out), "--size", "32", *args])
    walls_fly_through.main()


def names(folder):
    return sorted(f.name for f in folder.iterdir())


def test_writes_the_shot_of_pilot_shot_render(tmp_path, monkeypatch, capsys):
    out = tmp_path / "fly"
    assert (
        pilot(["shot", "render", str(out), "--seed", "3", "--frames", "4", "--size", "32", "32"])
        == 0
    )
    rendered = (out / "hatched" / "000001.png").read_bytes()
    run(monkeypatch, out, "--frames", "4")  # the README's order: into the rendered shot
    shot = Shot(out)
    assert len(shot) == 4 and (out / "hatched" / "000001.png").read_bytes() == rendered
    for name in ("hatched", "textured", "fog"):  # one file per frame, the shot's names
        assert names(out / name) == [f"{k:06d}.png" for k in range(4)]
    run(monkeypatch, out, "--frames", "2", "--seed", "5")  # a shorter rerun leaves nothing old
    assert len(Shot(out)) == 2
    for name in ("hatched", "textured", "fog", "depth"):
        assert len(names(out / name)) == 2
    assert pilot(["shot", "render", str(out), "--frames", "3", "--size", "32", "32"]) == 0


def test_interrupted_run_is_unfinished(tmp_path, monkeypatch):
    out = tmp_path / "fly"
    run(monkeypatch, out, "--frames", "3")

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(walls_fly_through, "write_frame", killed)
    with pytest.raises(KeyboardInterrupt):
        run(monkeypatch, out, "--frames", "3")
    assert (out / UNFINISHED).is_file()
    with pytest.raises(FileNotFoundError, match="unfinished"):
        Shot(out)


def test_checkpoints_are_checked_before_rendering(tmp_path, monkeypatch, capsys):
    out, figure = tmp_path / "fly", tmp_path / "figure.png"
    args = ["--frames", "3", "--rows", "0,2", "--figure", str(figure), "--checkpoint"]
    with pytest.raises(SystemExit):
        run(monkeypatch, out, *args, str(tmp_path / "nope.ckpt"))
    assert "nope.ckpt" in capsys.readouterr().err
    assert not out.exists()
    walls = PIX2PIX_PRESETS["walls128"]
    cfg = replace(walls, image_size=64, base_channels=2, max_mult=2)
    export_generator("pix2pix", UNetGenerator(cfg), tmp_path / "g.safetensors")
    run(monkeypatch, out, *args, str(tmp_path / "g.safetensors"))
    with Image.open(figure) as image:  # 2 rows of input | texture | fog | true texture | fog
        assert image.size == (5 * 64, 2 * 64)
