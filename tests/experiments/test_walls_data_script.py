"""`experiments.walls_data`: arguments and folders checked before any pair is written."""

import sys

import pytest

from experiments import walls_data


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fog-density", "0.3", "0.1"], "--fog-density takes D or LO HI"),
        (["--fog-density", "0.1", "0.2", "0.3"], "--fog-density takes D or LO HI"),
        (["--fog-density", "-0.1"], "--fog-density takes D or LO HI"),
        (["--val-count", "0"], "n=0"),
        (["--count", "0"], "n=0"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path, monkeypatch, capsys, args, message):
    out = tmp_path / "walls"
    argv = ["x", "--out", str(out), "--count", "2", "--size", "16", "--workers", "1", *args]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        walls_data.main()
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "walls_val").exists()


def test_a_held_out_folder_of_yours_is_refused_before_the_training_set(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "walls_val").mkdir()
    (tmp_path / "walls_val" / "mine.png").write_bytes(b"")
    argv = ["x", "--out", str(tmp_path / "walls"), "--count", "1", "--val-count", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--size", "16", "--workers", "1"])
    with pytest.raises(SystemExit):
        walls_data.main()
    assert "walls_val is not empty and holds no pairs" in capsys.readouterr().err
    assert not (tmp_path / "walls").exists()
