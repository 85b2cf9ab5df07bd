"""Which loggers `pilot train --wandb auto` attaches, W&B's own `WANDB_MODE` included."""

import pytest

pytest.importorskip("lightning")

from lightning.pytorch.loggers import CSVLogger, WandbLogger  # noqa: E402

from train.cli import make_logger  # noqa: E402


@pytest.mark.parametrize(
    "env, kinds", [("disabled", [CSVLogger]), ("offline", [WandbLogger, CSVLogger])]
)
def test_auto_follows_wandb_mode(tmp_path, monkeypatch, env, kinds):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", env)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # logged in: "auto" alone would go online
    loggers = make_logger("auto", "p", str(tmp_path))
    assert [type(lg) for lg in loggers] == kinds
    if env == "offline":
        assert loggers[0]._offline
    assert not (tmp_path / "wandb").exists()  # nothing started yet


def test_wandb_mode_offline_without_wandb_is_csv_only(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert [type(lg) for lg in make_logger("auto", "p", str(tmp_path))] == [CSVLogger]
