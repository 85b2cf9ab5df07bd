"""A resume with changed settings: the model's refused in one line naming them, the others
reported and applied (the optimisers' learning rate too, which Lightning's restore brought
back from the checkpoint)."""

import logging
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lightning")

from tests.train.helpers import dcgan_config, write_yaml  # noqa: E402
from train.cli import run  # noqa: E402


def _resume(cfg, *flags):
    return run("dcgan", ["fit", "--config", str(cfg), "--trainer.max_steps", "4",
                         "--ckpt_path", "last", *flags])  # fmt: skip


def test_a_resume_trains_at_the_configs_learning_rate_and_names_the_change(tmp_path, caplog):
    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=2))
    run("dcgan", ["fit", "--config", str(cfg)])
    with caplog.at_level(logging.INFO):
        cli = _resume(cfg, "--model.lr_g", "0.01", "--model.betas", "[0.9, 0.99]")
    assert [g["lr"] for g in cli.trainer.optimizers[0].param_groups] == [0.01]
    assert cli.trainer.optimizers[0].param_groups[0]["betas"] == (0.9, 0.99)
    assert [g["lr"] for g in cli.trainer.optimizers[1].param_groups] == [2e-4]  # lr_d as it was
    assert cli.trainer.optimizers[0].state  # Adam's moments were restored, not reset
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == 0.01
    assert "settings changed since this checkpoint, the new values apply: model.betas " in (
        caplog.text
    )
    assert "model.lr_g 0.0002 -> 0.01" in caplog.text


def test_a_resume_with_other_model_shapes_is_one_line_naming_the_setting(tmp_path, capsys):
    from pilot.cli import main

    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=2))
    run("dcgan", ["fit", "--config", str(cfg)])
    args = ["train", "dcgan", "--config", str(cfg), "--ckpt_path", "last"]
    assert main([*args, "--model.generator.g_channels", "8"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "size mismatch" not in err
    assert err.strip().splitlines()[-1] == (
        f"pilot train: error: ckpt_path={tmp_path / 'ckpt' / 'last.ckpt'} does not fit: its "
        "model settings changed (model.generator.g_channels 4 -> 8); resume with the settings "
        "it was trained with, or start a fresh training in another folder"
    )
    # a checkpoint from before settings were recorded: the first tensor that does not fit
    last = tmp_path / "ckpt" / "last.ckpt"
    old = torch.load(last, weights_only=True)
    del old["pilot_settings"]
    torch.save(old, last)
    assert main([*args, "--model.generator.g_channels", "8"]) == 2
    assert "the model this config builds differs (generator." in capsys.readouterr().err


def test_a_learning_rate_under_a_schedule_scales_the_scheduled_rate():
    from train.resume import ConfigOptimiserSettings

    weight = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([weight], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)  # as configured: 5e-4
    trainer = SimpleNamespace(
        optimizers=[opt],
        lr_scheduler_configs=[SimpleNamespace(scheduler=sched)],
        ckpt_path="last.ckpt",
    )
    callback = ConfigOptimiserSettings()
    callback.on_fit_start(trainer, None)
    opt.param_groups[0].update(lr=1e-4, initial_lr=2e-4)  # restored: 2e-4 scheduled to half
    sched.base_lrs = [2e-4]
    callback.on_train_start(trainer, None)
    assert opt.param_groups[0]["initial_lr"] == 1e-3 and sched.base_lrs == [1e-3]
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)  # the schedule's place kept
