"""Smoke tests of the training systems: one fast_dev_run step each, resume keeps the timelapse,
W&B offline and W&B absent, bad configs rejected."""

import shutil
import sys
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

from tests.train.helpers import dcgan_config, pix2pix_config, write_pairs, write_yaml  # noqa: E402
from train.cli import run  # noqa: E402


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])  # bf16-mixed: CPU AMP
def test_dcgan_fast_dev_run(tmp_path, precision):
    config = dcgan_config(tmp_path, fast_dev_run=True, precision=precision)
    cli = run("dcgan", ["fit", "--config", str(write_yaml(tmp_path / "c.yaml", config))])
    assert cli.trainer.global_step == 2  # one D and one G update
    assert cli.trainer.callbacks[0].last_frame is not None  # rendered, not written


def test_pix2pix_fast_dev_run_with_validation_metrics(tmp_path):
    data = write_pairs(tmp_path / "pairs")
    cfg = pix2pix_config(tmp_path, data, fast_dev_run=True)
    cli = run("pix2pix", ["fit", "--config", str(write_yaml(tmp_path / "c.yaml", cfg))])
    metrics = cli.trainer.callback_metrics
    assert {"val/texture_l1", "val/texture_psnr", "val/fog_corr", "l1_fog"} <= set(metrics)
    frame = cli.trainer.callbacks[0].last_frame
    assert frame is not None and frame.shape[2] == 3, "no timelapse frame"
    assert not (tmp_path / "timelapse").exists() and not (tmp_path / "ckpt").exists()


def test_resume_keeps_timelapse_frames(tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=10))
    run("dcgan", ["fit", "--config", str(cfg)])
    frames = tmp_path / "timelapse" / "frames"
    first = sorted(p.name for p in frames.glob("*.png"))
    assert first[0] == "00000000.png" and first[-1] == "00000010.png"  # 0: the untrained model
    # a run killed after step 8: its last checkpoint is step 8 and frame 10 is newer than that
    ckpt = tmp_path / "ckpt" / "epoch=0-step=8.ckpt"
    assert ckpt.is_file()
    cli = run(
        "dcgan",
        ["fit", "--config", str(cfg), "--trainer.max_steps", "14", "--ckpt_path", str(ckpt)],
    )
    assert cli.trainer.global_step == 14
    names = sorted(p.name for p in frames.glob("*.png"))
    assert names[: len(first)] == first  # earlier frames kept (10 remade after the resume)
    assert names[-1] == "00000014.png"
    steps = [s for s, _ in next(iter(cli.trainer.callbacks[0].history.values()))]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # no duplicated history
    import numpy as np
    from PIL import Image

    with Image.open(tmp_path / "timelapse" / "timelapse.gif") as gif:
        assert gif.n_frames == len(names)
    assert np.asarray(Image.open(frames / names[0])).shape[2] == 3


def test_resume_ignores_files_a_kill_left_in_the_timelapse(tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=4))
    run("dcgan", ["fit", "--config", str(cfg)])
    timelapse = tmp_path / "timelapse"
    left = [timelapse / "frames" / ".00000006.k3j2x1z_.png", timelapse / ".timelapse.ab12cd34.mp4"]
    for path in left:  # temp files of writes a kill -9 interrupted
        path.touch()
    (timelapse / "frames" / "favourite.png").write_bytes(b"")  # a file the user put there
    cli = run(
        "dcgan", ["fit", "--config", str(cfg), "--trainer.max_steps", "6", "--ckpt_path", "last"]
    )
    assert cli.trainer.global_step == 6
    assert not any(path.exists() for path in left)
    assert (timelapse / "frames" / "favourite.png").exists()
    assert [p.stem for p in cli.trainer.callbacks[0].frame_paths()][-1] == "00000006"


def test_pix2pix_with_two_input_folders_draws_a_panel_each(tmp_path):
    data = write_pairs(tmp_path / "pairs")
    cfg = pix2pix_config(tmp_path, data, max_steps=2)
    cfg["data"]["data"].update(
        inputs=["hatched", "fog"], input_channels=[1, 1], targets=["textured"], target_channels=[3]
    )
    cfg["model"]["generator"].update(in_channels=2, head_names=["texture"], head_channels=[3])
    cli = run("pix2pix", ["fit", "--config", str(write_yaml(tmp_path / "c.yaml", cfg))])
    names = [name for name, _ in cli.model.timelapse_panels()]
    assert names == ["hatched", "fog", "texture", "true texture"]
    assert (tmp_path / "timelapse" / "frames" / "00000002.png").is_file()


def test_image_grid_shows_any_channel_count():
    from train.timelapse import image_grid

    images = torch.rand(3, 2, 4, 5) * 2 - 1
    grid = image_grid(images, 2)
    assert grid.shape == (2 * 6, 2 * 7, 3)
    first = image_grid(images[:, :1], 2)
    assert (grid == first).all()  # two channels: the first one, grey
    assert image_grid(torch.zeros(1, 4, 4, 5), 1).shape == (6, 7, 3)


def test_frame_without_panels_shows_the_curves():
    from train.timelapse import render_frame

    history = {"l1": [(1, 1.0), (2, 0.5), (3, 0.4)]}
    frame = render_frame([], history, 3)  # Pix2Pix with timelapse_inputs: 0
    assert frame.shape == (20 + 110, 400, 3) and frame.dtype == np.uint8


def test_frame_names_every_curve_and_panel_in_full():
    from train.timelapse import _CURVE_COLOURS, _name_lines, render_frame

    history = {k: [(2, 1.0), (4, 0.5)] for k in ("d_loss", "g_adv", "l1")}  # Pix2Pix's three
    frame = render_frame([("samples", torch.zeros(4, 3, 32, 32))], history, 4)  # 4 x 32 px
    legend = frame[-110:][:17].reshape(-1, 3)  # the line above the plot box
    for colour in _CURVE_COLOURS[:3]:
        assert (legend == colour).all(axis=1).any(), f"no legend in {colour}"
    assert _name_lines("true texture", 65, 4) == ["true", "texture"]  # not "true text"
    assert _name_lines("true texture", 65, 1) == ["true"]


def test_long_timelapse_rebuilds_its_videos_rarely_one_frame_at_a_time(tmp_path, monkeypatch):
    """Rebuilds wait for the frames to grow by a quarter (not every 5: 16 rebuilds of up to 80
    frames), and read the frames from disk as the writers go (not all in memory)."""
    import weakref
    from types import SimpleNamespace

    from PIL import Image

    import train.timelapse as tl

    alive, peak, rebuilds = [0], [0], []

    def fit(frame, shape):  # count the frames alive at once
        out = tl_fit(frame, shape)
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(out, lambda: alive.__setitem__(0, alive[0] - 1))
        return out

    tl_fit, write_gif = tl._fit, tl.write_gif
    monkeypatch.setattr(tl, "_fit", fit)
    monkeypatch.setattr(tl, "write_gif", lambda *a, **k: rebuilds.append(1) or write_gif(*a, **k))
    timelapse = tl.Timelapse(every_n_steps=1, dirpath=str(tmp_path), video_every_n_frames=5)
    module = SimpleNamespace(timelapse_panels=lambda: [("samples", torch.zeros(1, 3, 4, 4))])
    for step in range(1, 81):
        trainer = SimpleNamespace(global_step=step, fast_dev_run=False, loggers=[])
        timelapse.make_frame(trainer, module)
    assert 7 <= len(rebuilds) <= 9  # at 5, 10, 15, 20 frames, then every quarter more
    timelapse.write_videos()  # as at the end of the training
    assert peak[0] <= 4
    with Image.open(tmp_path / "timelapse.gif") as gif:
        assert gif.n_frames == 80


@pytest.mark.parametrize("val_count", [0, -1])
def test_val_count_below_one_is_rejected(tmp_path, val_count):
    from pilot.data.paired import PairedConfig
    from train.pix2pix import PairedDataModule

    data = write_pairs(tmp_path / "pairs")
    cfg = PairedConfig(
        inputs=("hatched",), input_channels=(1,), targets=("fog",), target_channels=(1,)
    )
    dm = PairedDataModule(str(data), cfg, val_count=val_count)
    with pytest.raises(ValueError, match=f"data.val_count={val_count} must be >= 1"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "target_channels",
            [1],
            r"model.generator.head_channels \[3, 1\] != data.data.target_channels \[1\]",
        ),
        ("input_channels", [3], r"model.generator.in_channels 1 != data.data.input_channels \[3\]"),
        ("image_size", 32, "model.generator.image_size 64 != data.data.image_size 32"),
    ],
)
def test_data_and_model_must_agree(tmp_path, key, value, message):
    data = write_pairs(tmp_path / "pairs")
    cfg = pix2pix_config(tmp_path, data, fast_dev_run=True)
    cfg["data"]["data"][key] = value
    if key == "target_channels":
        cfg["data"]["data"]["targets"] = ["fog"]
    with pytest.raises(ValueError, match=message):
        run("pix2pix", ["fit", "--config", str(write_yaml(tmp_path / "c.yaml", cfg))])


def test_resume_from_a_corrupt_checkpoint_names_the_file(tmp_path, capsys):
    from pilot.cli import main

    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=2))
    run("dcgan", ["fit", "--config", str(cfg)])
    last = tmp_path / "ckpt" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as a full disk leaves it
    assert main(["train", "dcgan", "--config", str(cfg), "--ckpt_path", str(last)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"pilot train: error: {last}: not a readable torch checkpoint")


def _listing(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_fresh_run_over_a_run_folder_is_refused(tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=4))
    run("dcgan", ["fit", "--config", str(cfg)])
    before = _listing(tmp_path)
    with pytest.raises(ValueError, match="ckpt holds last.ckpt.* resume it with --ckpt_path last"):
        run("dcgan", ["fit", "--config", str(cfg)])
    after = _listing(tmp_path)
    assert {k: v for k, v in after.items() if k.name != "config.yaml"} == {
        k: v for k, v in before.items() if k.name != "config.yaml"
    }  # checkpoints and frames untouched (config.yaml is rewritten in setup, as on resume)
    (tmp_path / "ckpt" / "last.ckpt").unlink()
    (step_ckpt,) = (tmp_path / "ckpt").glob("*.ckpt")
    with pytest.raises(ValueError, match=f"frames holds 3 timelapse frames.* {step_ckpt} "):
        run("dcgan", ["fit", "--config", str(cfg)])
    step_ckpt.unlink()  # as a run killed before its first checkpoint leaves it
    timelapse = tmp_path / "timelapse"
    with pytest.raises(ValueError, match=f"no checkpoint to resume from: delete {timelapse} to"):
        run("dcgan", ["fit", "--config", str(cfg)])
    shutil.rmtree(timelapse)
    assert run("dcgan", ["fit", "--config", str(cfg)]).trainer.global_step == 4


def test_default_timelapse_folder_survives_a_resume(tmp_path):
    config = dcgan_config(tmp_path, max_steps=4)
    del config["timelapse"]["dirpath"]  # default: <default_root_dir>/timelapse, not csv/version_N
    cfg = write_yaml(tmp_path / "c.yaml", config)
    run("dcgan", ["fit", "--config", str(cfg)])
    run("dcgan", ["fit", "--config", str(cfg), "--trainer.max_steps", "8", "--ckpt_path", "last"])
    names = sorted(p.name for p in (tmp_path / "timelapse" / "frames").glob("*.png"))
    assert names == [f"{step:08d}.png" for step in (0, 2, 4, 6, 8)]
    assert not list(tmp_path.glob("csv/*/timelapse"))
    with pytest.raises(ValueError, match="holds 5 timelapse frames"):  # the guard sees them
        run("dcgan", ["fit", "--config", str(cfg), "--checkpoint.dirpath", str(tmp_path / "c2")])


def test_fast_dev_run_leaves_a_run_folder_alone(tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=4))
    run("dcgan", ["fit", "--config", str(cfg)])
    before = _listing(tmp_path)
    cli = run("dcgan", ["fit", "--config", str(cfg), "--trainer.fast_dev_run", "true"])
    assert cli.trainer.callbacks[0].last_frame is not None  # the panels were still drawn
    assert _listing(tmp_path) == before
    resumed = run(
        "dcgan", ["fit", "--config", str(cfg), "--trainer.max_steps", "6", "--ckpt_path", "last"]
    )
    assert resumed.trainer.global_step == 6  # from the step 4 last.ckpt


def test_checkpoint_loads_without_lightning(tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=4))
    run("dcgan", ["fit", "--config", str(cfg)])
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)  # no pickled code
    assert ckpt["pilot_kind"] == "dcgan"
    import pilot
    from pilot.weights.io import WeightsError

    with pytest.raises(WeightsError, match="a Diffusion Pilot dcgan training checkpoint, not a"):
        pilot.load_pipeline(tmp_path / "ckpt" / "last.ckpt")  # `pilot inspect` describes it


def test_wandb_offline_logs_frames(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = dcgan_config(tmp_path, max_steps=4, log_every_n_steps=1)
    cfg["wandb"] = "auto"  # not logged in: offline
    cli = run("dcgan", ["fit", "--config", str(write_yaml(tmp_path / "c.yaml", cfg))])
    from lightning.pytorch.loggers import WandbLogger

    assert isinstance(cli.trainer.logger, WandbLogger)
    cli.trainer.logger.experiment.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs, "no offline W&B run written"
    media = list(runs[0].rglob("*.png"))
    assert media, "timelapse frames were not logged to W&B"
    assert list(tmp_path.glob("csv/version_*/metrics.csv")), "no CSV log next to W&B"


def test_wandb_frames_share_the_losses_step(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []  # (step, metrics) of every W&B log call
    log_metrics = WandbLogger.log_metrics

    def record(self, metrics, step=None):
        logged.append((step, dict(metrics)))
        log_metrics(self, metrics, step)

    monkeypatch.setattr(WandbLogger, "log_metrics", record)
    cfg = dcgan_config(tmp_path, max_steps=8, log_every_n_steps=1)  # 4 GAN steps
    cfg["timelapse"]["every_n_steps"] = 4  # frames at global steps 0 (untrained), 4 and 8
    cfg["wandb"] = "offline"
    cli = run("dcgan", ["fit", "--config", str(write_yaml(tmp_path / "c.yaml", cfg))])
    cli.trainer.logger.experiment.finish()
    losses = [step for step, m in logged if "g_loss" in m]
    frames = [(step, m["timelapse/global_step"]) for step, m in logged if "timelapse/frame" in m]
    assert losses == [0, 1, 2, 3]  # one per GAN step
    assert frames == [(0, 0), (1, 4), (3, 8)]  # the frame files keep the global step
    assert [step for step, m in logged if "timelapse/video" in m] == [3]
    names = sorted(p.name for p in (tmp_path / "timelapse" / "frames").glob("*.png"))
    assert names == ["00000000.png", "00000004.png", "00000008.png"]


def test_without_wandb_installed_logs_csv(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    cfg = dcgan_config(tmp_path, max_steps=2)
    cfg["wandb"] = "auto"
    cli = run("dcgan", ["fit", "--config", str(write_yaml(tmp_path / "c.yaml", cfg))])
    from lightning.pytorch.loggers import CSVLogger

    assert isinstance(cli.trainer.logger, CSVLogger)
    assert (tmp_path / "timelapse" / "timelapse.mp4").is_file()
    cfg["wandb"] = "offline"
    with pytest.raises(ValueError, match="needs the wandb package"):
        run("dcgan", ["fit", "--config", str(write_yaml(tmp_path / "c.yaml", cfg))])


def test_unknown_config_key_is_one_line_naming_the_file_and_the_key_meant(tmp_path, capsys):
    from pilot.cli import main

    cfg = dcgan_config(tmp_path, fast_dev_run=True)
    cfg["model"]["generator"]["image_sise"] = 32
    path = write_yaml(tmp_path / "c.yaml", cfg)
    assert main(["train", "dcgan", "--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"pilot train: error: {path}: Subcommand 'fit' does not accept option "
        "'model.generator.image_sise' (did you mean model.generator.image_size?); `pilot train "
        "dcgan --help` lists the settings\n"
    )  # not jsonargparse's 100-line usage above it
    del cfg["model"]["generator"]["image_sise"]
    path = write_yaml(tmp_path / "c.yaml", cfg)
    with pytest.raises(ValueError, match=r'^Parser key "model.loss": Expected a .* Got value: '
                       r"hinj; `pilot train dcgan --help`"):  # fmt: skip
        run("dcgan", ["fit", "--config", str(path), "--model.loss", "hinj"])  # not the file's


def test_discriminator_channels_must_fit(tmp_path):
    from pilot.models.pix2pix import PatchGANConfig, Pix2PixConfig
    from train.pix2pix import Pix2PixSystem

    with pytest.raises(ValueError, match="in_channels=6 must be generator in_channels"):
        Pix2PixSystem(Pix2PixConfig(in_channels=1), PatchGANConfig(in_channels=6))


def test_resume_last_from_a_corrupt_last_checkpoint_names_the_file(tmp_path, capsys):
    from pilot.cli import main

    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=2))
    run("dcgan", ["fit", "--config", str(cfg)])
    last = tmp_path / "ckpt" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as a full disk leaves it
    assert main(["train", "dcgan", "--config", str(cfg), "--ckpt_path", "last"]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"pilot train: error: {last}: not a readable torch checkpoint")
    )
    assert "Traceback" not in err


def test_resume_last_picks_the_newest_last_checkpoint(tmp_path):
    import os

    from train.cli import find_last_checkpoint

    assert find_last_checkpoint(tmp_path) is None
    for age, name in enumerate(["last-v1.ckpt", "last.ckpt", "epoch=0-step=4.ckpt"]):
        (tmp_path / name).touch()
        os.utime(tmp_path / name, (1000 - age, 1000 - age))
    assert find_last_checkpoint(tmp_path) == tmp_path / "last-v1.ckpt"  # as Lightning's "last"


def test_resume_last_without_a_last_checkpoint(tmp_path):
    """Nothing there: a fresh training (a script may always pass it); an earlier run's frames
    or step checkpoints there: refused as a fresh training over them is."""
    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=4))
    args = ["fit", "--config", str(cfg), "--ckpt_path", "last"]
    assert run("dcgan", args).trainer.global_step == 4
    (tmp_path / "ckpt" / "last.ckpt").unlink()
    frames = sorted((tmp_path / "timelapse" / "frames").glob("*.png"))
    with pytest.raises(ValueError, match="an earlier run is there .* resume it with --ckpt_path"):
        run("dcgan", args)
    assert sorted((tmp_path / "timelapse" / "frames").glob("*.png")) == frames  # not deleted


def test_checkpoints_default_to_one_folder_that_last_resumes_from(tmp_path):
    config = dcgan_config(tmp_path, max_steps=4)
    del config["checkpoint"]["dirpath"]  # default: <default_root_dir>/checkpoints
    cfg = write_yaml(tmp_path / "c.yaml", config)
    run("dcgan", ["fit", "--config", str(cfg)])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = ["fit", "--config", str(cfg), "--trainer.max_steps", "8", "--ckpt_path", "last"]
        cli = run("dcgan", args)
    assert not [w for w in caught if "is not empty" in str(w.message)]  # its own checkpoints
    assert cli.trainer.ckpt_path == str(tmp_path / "checkpoints" / "last.ckpt")
    assert cli.trainer.global_step == 8
    with pytest.raises(ValueError, match="checkpoints holds last.ckpt"):  # the guard sees it
        run("dcgan", ["fit", "--config", str(cfg)])


def test_resume_last_finds_runs_that_kept_checkpoints_in_the_loggers_versioned_folder(tmp_path):
    """Before checkpoints had one folder, they went to the first logger's versioned folder (the
    CSV logger's `csv/version_N`, W&B's `<project>/<run id>`): `last` looks there too, and the
    resumed run goes on in `<default_root_dir>/checkpoints`."""
    config = dcgan_config(tmp_path, max_steps=4)
    del config["checkpoint"]["dirpath"]
    cfg = write_yaml(tmp_path / "c.yaml", config)
    run("dcgan", ["fit", "--config", str(cfg)])
    old = tmp_path / "csv" / "version_0" / "checkpoints"
    (tmp_path / "checkpoints").rename(old)  # where the old default kept them
    args = ["fit", "--config", str(cfg), "--trainer.max_steps", "6", "--ckpt_path", "last"]
    cli = run("dcgan", args)
    assert cli.trainer.ckpt_path == str(old / "last.ckpt")
    assert cli.trainer.global_step == 6
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    cli = run("dcgan", [*args[:3], "--trainer.max_steps", "8", "--ckpt_path", "last"])
    assert cli.trainer.ckpt_path == str(tmp_path / "checkpoints" / "last.ckpt")  # the newest


def test_resume_last_picks_the_newest_across_old_and_new_folders_or_names_a_tie(tmp_path):
    import os

    from train.cli import find_last_checkpoint, old_checkpoint_dirs

    config = {"trainer": {"default_root_dir": str(tmp_path)}, "wandb_project": "p"}
    new, csv, wandb = (tmp_path / d for d in ("checkpoints", "csv/version_1", "p/ab12"))
    for folder, mtime in [(new, 1000), (csv, 3000), (wandb, 2000)]:
        last = folder / "checkpoints" / "last.ckpt" if folder != new else folder / "last.ckpt"
        last.parent.mkdir(parents=True)
        last.touch()
        os.utime(last, (mtime, mtime))
    old = old_checkpoint_dirs(config)
    assert old == [csv / "checkpoints", wandb / "checkpoints"]
    assert old_checkpoint_dirs({**config, "checkpoint": {"dirpath": str(new)}}) == []
    assert find_last_checkpoint(new, old) == csv / "checkpoints" / "last.ckpt"
    os.utime(new / "last.ckpt", (3000, 3000))
    with pytest.raises(ValueError, match=r"version_1/checkpoints/last.ckpt are equally new"):
        find_last_checkpoint(new, old)


def test_resumed_training_logs_into_the_same_wandb_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = dcgan_config(tmp_path, max_steps=4)
    cfg["wandb"] = "offline"
    cfg = write_yaml(tmp_path / "c.yaml", cfg)
    first = run("dcgan", ["fit", "--config", str(cfg)])
    first.trainer.logger.experiment.finish()
    run_id = first.trainer.logger.version
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["pilot_wandb_run"] == run_id
    args = ["fit", "--config", str(cfg), "--trainer.max_steps", "6", "--ckpt_path", "last"]
    resumed = run("dcgan", args)
    resumed.trainer.logger.experiment.finish()
    assert resumed.trainer.logger.version == run_id
    # a session without W&B keeps the id for the next one
    run(
        "dcgan",
        [*args[:3], "--trainer.max_steps", "8", "--ckpt_path", "last", "--wandb", "disabled"],
    )
    assert torch.load(last, weights_only=True)["pilot_wandb_run"] == run_id


def test_run_stopped_mid_epoch_resumes_with_the_rest_of_that_epoch(tmp_path, monkeypatch):
    """8 batches (16 global steps) an epoch; stopped at steps 6 and 10 (two stops inside the
    first epoch), 16 and 32 (the last batches of epochs 0 and 1, the second in a resumed run,
    where Lightning's own epoch count for samplers falls one behind) and resumed to 40: every
    epoch has the batches an unstopped run draws, none twice and none left out."""
    from train.dcgan import DCGANSystem

    seen = []  # (epoch, batch_idx, pixel sum) of every training batch
    training_step = DCGANSystem.training_step

    def record(self, batch, batch_idx):
        seen.append((self.current_epoch, batch_idx, float(batch.sum())))
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(DCGANSystem, "training_step", record)
    unstopped = dcgan_config(tmp_path / "unstopped", max_steps=40)
    run("dcgan", ["fit", "--config", str(write_yaml(tmp_path / "u.yaml", unstopped))])
    whole = list(seen)
    seen.clear()
    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=6))
    run("dcgan", ["fit", "--config", str(cfg)])
    for steps in ("10", "16", "32", "40"):
        run("dcgan", ["fit", "--config", str(cfg), "--trainer.max_steps", steps, "--ckpt_path",
                      "last"])  # fmt: skip
    assert [(e, i) for e, i, _ in seen[3:8]] == [(0, 3), (0, 4), (0, 5), (0, 6), (0, 7)]
    assert seen == whole
    assert len({b for e, _, b in seen if e == 1}) == 8  # the epoch's 8 batches, each once
    assert (tmp_path / "ckpt" / "epoch=2-step=40.ckpt").is_file()


def test_ctrl_c_stops_after_the_step_and_saves_it(tmp_path, monkeypatch):
    """The first Ctrl-C finishes the step it came in and writes last.ckpt at that step."""
    import signal

    from train.dcgan import DCGANSystem

    training_step = DCGANSystem.training_step

    def ctrl_c_in_batch_4(self, batch, batch_idx):
        if self.global_step == 6:  # 3 batches of 2 steps (two optimisers) done
            signal.raise_signal(signal.SIGINT)  # its handler runs here, inside the step
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(DCGANSystem, "training_step", ctrl_c_in_batch_4)
    cfg = dcgan_config(tmp_path, max_steps=40)
    cfg["checkpoint"]["every_n_train_steps"] = 100  # no periodic checkpoint to fall back on
    cli = run("dcgan", ["fit", "--config", str(write_yaml(tmp_path / "c.yaml", cfg))])
    assert cli.trainer.global_step == 8
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 8


def test_ctrl_c_through_the_pilot_command_still_saves_the_step(tmp_path, monkeypatch, capsys):
    """`pilot train`'s first Ctrl-C is the training's (step finished, last.ckpt, exit 0), not
    the `pilot` command's "interrupted"."""
    import signal

    from pilot.cli import main
    from train.dcgan import DCGANSystem

    training_step = DCGANSystem.training_step

    def ctrl_c_in_batch_2(self, batch, batch_idx):
        if self.global_step == 2:
            signal.raise_signal(signal.SIGINT)
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(DCGANSystem, "training_step", ctrl_c_in_batch_2)
    cfg = dcgan_config(tmp_path, max_steps=40)
    cfg["checkpoint"]["every_n_train_steps"] = 100
    assert main(["train", "dcgan", "--config", str(write_yaml(tmp_path / "c.yaml", cfg))]) == 0
    assert "interrupted" not in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 4
    # saved through the callback: it writes no `last-v1.ckpt` of its own when the fit ends,
    # which `--ckpt_path last` (the newest) would resume from
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["last.ckpt"]


def test_timelapse_frames_stay_on_multiples_of_n_across_a_resume(tmp_path):
    """Step 0, then every multiple of N: a stop's own frame (6) shifts nothing."""
    cfg = write_yaml(tmp_path / "c.yaml", dcgan_config(tmp_path, max_steps=6))  # 3 GAN steps
    run("dcgan", ["fit", "--config", str(cfg), "--timelapse.every_n_steps", "4"])
    run("dcgan", ["fit", "--config", str(cfg), "--timelapse.every_n_steps", "4",
                  "--trainer.max_steps", "12", "--ckpt_path", "last"])  # fmt: skip
    names = sorted(p.stem for p in (tmp_path / "timelapse" / "frames").glob("*.png"))
    assert [int(n) for n in names] == [0, 4, 6, 8, 12]
