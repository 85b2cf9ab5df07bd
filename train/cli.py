"""LightningCLI entry points of the training systems: `python -m train.cli dcgan fit --config ...`.

The YAML files under `experiments/` map onto the systems' `__init__` arguments and the config
dataclasses they take (unknown keys are errors). Beyond Lightning's own `trainer`, `model`,
`data` and `ckpt_path`, each config has:

- `timelapse`: the `train.timelapse.Timelapse` callback (always attached);
- `checkpoint`: Lightning's `ModelCheckpoint` (attached unless `fast_dev_run`; set
  `every_n_train_steps` and `save_last` so a killed run resumes with `--ckpt_path last`). Its
  `dirpath` defaults to `<default_root_dir>/checkpoints`, not the logger's versioned folder, so
  a resumed run finds and writes the same checkpoints;
- `wandb`: "auto" (log to W&B online when logged in, offline otherwise, CSV files only when
  wandb is not installed), "online", "offline" or "disabled"; `wandb_project` names the project.
  The W&B run id is recorded in every checkpoint (`WANDB_RUN_KEY`), so a resumed training goes
  on logging into the same W&B run.

`--ckpt_path last` is resolved here, as Lightning would (`find_last_checkpoint`; it and the
rest of what a resume reads and checks live in `train.resume`), so a corrupt
`last.ckpt` is a one-line error naming it; runs from before the default folder kept their
checkpoints in the logger's versioned folder (`old_checkpoint_dirs`), and `last` looks there too.
With no last checkpoint a fresh training starts, which `RunFolderGuard` refuses when it would
overwrite an earlier run.

A fresh training (no `ckpt_path`) refuses to start over the checkpoints or timelapse frames of
an earlier run (`RunFolderGuard`), and `fast_dev_run` writes no checkpoint, timelapse or log, so
neither overwrites a run. While a training runs, its checkpoint and timelapse folders are locked
(`.NAME.lock` beside each, `pilot.locks`): a second training into them stops at once.

Multi-GPU and multi-node runs are Lightning's: `--trainer.devices 4 --trainer.strategy ddp`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import netrc
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from pilot.locks import folder_lock
from train.cli_errors import section_error, settings_error
from train.resume import (  # noqa: F401 (checkpoint_dir... are train.cli's names too)
    SETTINGS_KEY,
    SYSTEM_KEY,
    WANDB_RUN_KEY,
    ConfigOptimiserSettings,
    RunRecord,
    changed_settings,
    check_checkpoint_fits,
    checkpoint_dir,
    find_last_checkpoint,
    flat_settings,
    last_checkpoints,
    old_checkpoint_dirs,
    read_training_checkpoint,
    recorded_settings,
)
from train.timelapse import Timelapse

WandbMode = Literal["auto", "online", "offline", "disabled"]


def wandb_logged_in() -> bool:
    """Whether W&B credentials exist (WANDB_API_KEY or a netrc entry for api.wandb.ai)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def make_logger(
    mode: WandbMode, project: str, save_dir: str, wandb_run: str | None = None
) -> list[Logger]:
    """A CSV logger (`<save_dir>/csv/version_*/metrics.csv`, always: the model cards and
    figures are read from it) and, with wandb installed and not disabled (by `mode`, or for
    "auto" by `WANDB_MODE=disabled`; `WANDB_MODE=offline` keeps "auto" offline), a W&B logger
    (online only when asked for or logged in) that goes on with the run of id `wandb_run` when given
    (a resumed training's, `WANDB_RUN_KEY`; Lightning's WandbLogger resumes with "allow").

    Raises:
        ValueError: mode "online"/"offline" was asked for but wandb is not installed, or
            "online" without W&B credentials (`wandb_logged_in`).
    """
    has_wandb = importlib.util.find_spec("wandb") is not None
    env = os.environ.get("WANDB_MODE", "").strip().lower()  # W&B's own switch, for "auto"
    if mode == "auto" and env == "disabled":
        mode = "disabled"
    elif mode == "auto" and env in ("offline", "dryrun") and has_wandb:
        mode = "offline"
    if mode in ("online", "offline") and not has_wandb:
        raise ValueError(f"wandb={mode!r} needs the wandb package (pip install wandb)")
    if mode == "online" and not wandb_logged_in():
        raise ValueError(
            "wandb='online' needs W&B credentials (no WANDB_API_KEY, no api.wandb.ai entry in "
            "~/.netrc): run `wandb login`, or pass --wandb offline, auto or disabled"
        )
    csv = CSVLogger(save_dir=save_dir, name="csv")
    if mode == "disabled" or not has_wandb:
        return [csv]
    offline = mode == "offline" or (mode == "auto" and not wandb_logged_in())
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    wandb = WandbLogger(project=project, save_dir=save_dir, offline=offline, id=wandb_run)
    return [wandb, csv]


class RunFolderGuard(L.Callback):
    """Refuses a fresh training (no `ckpt_path`, not `fast_dev_run`) whose checkpoint folder
    holds a `last*.ckpt` or whose timelapse holds frames: starting at step 0 there would overwrite
    `last.ckpt` and delete the timelapse frames of the earlier run.

    `PilotCLI.before_fit` checks the folders the config names before anything is written (the
    config copy and logs under `default_root_dir` included); `on_fit_start` checks again once
    ModelCheckpoint's folder is resolved and before the timelapse deletes anything
    (`on_train_start`).

    Args:
        set_dirpaths: the options whose folders the config fixed (e.g. `{"checkpoint.dirpath":
            "runs/x/checkpoints"}`): `--trainer.default_root_dir` does not move those, so the
            advice names them.
    """

    def __init__(self, set_dirpaths: dict[str, str] | None = None) -> None:
        self.set_dirpaths = dict(set_dirpaths or {})

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer, trainer.ckpt_path)

    def check(self, trainer: L.Trainer, ckpt_path: str | None) -> None:
        """ValueError with advice when a fresh training would overwrite an earlier run in the
        folders known so far (unresolved ones are skipped)."""
        if trainer.fast_dev_run or ckpt_path is not None:
            return
        found, lasts, ckpts = [], [], []
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath and Path(ckpt.dirpath).is_dir():
            ckpts = sorted(Path(ckpt.dirpath).glob("*.ckpt"))
            lasts = last_checkpoints(Path(ckpt.dirpath))
            if lasts:
                found.append(f"{ckpt.dirpath} holds {', '.join(p.name for p in lasts)}")
        timelapses = [c for c in trainer.callbacks if isinstance(c, Timelapse) and c.dirpath]
        for callback in timelapses:
            if frames := callback.frame_paths():
                found.append(f"{callback.frames_dir} holds {len(frames)} timelapse frames")
        if not found:
            return
        if lasts:
            advice = "resume it with --ckpt_path last"
        elif ckpts:
            advice = f"resume it with --ckpt_path {ckpts[-1]} (or another of {ckpt.dirpath})"
        else:  # frames only: stopped before its first checkpoint, so no steps can be resumed
            folders = " and ".join(str(c.dirpath) for c in timelapses)
            advice = f"it left no checkpoint to resume from: delete {folders} to start over"
        raise ValueError(
            f"an earlier run is there ({'; '.join(found)}) and a fresh training would "
            f"overwrite it: {advice}, or {self.move_advice()}"
        )

    def move_advice(self) -> str:
        """How to run elsewhere: another default_root_dir, plus the folders the config fixed."""
        if not self.set_dirpaths:
            return "pick another --trainer.default_root_dir"
        options = " ".join(f"--{k} DIR/{Path(v).name}" for k, v in self.set_dirpaths.items())
        return (
            f"run elsewhere with --trainer.default_root_dir DIR {options} (the config sets "
            f"{' and '.join(self.set_dirpaths)}, which --trainer.default_root_dir alone does not "
            "move)"
        )


class FinalCheckpoint(L.Callback):
    """Writes the `last.ckpt` of `checkpoint` when a training stops between two periodic
    checkpoints, so it loses no steps: at the end of the batch it stops after (`max_steps`,
    `max_time`, a stop request) or, stopped at the end of an epoch (`max_epochs`), when the
    training ends.

    At that batch, as ModelCheckpoint saves, not once the fit is over: by then Lightning counts
    the interrupted epoch as finished, and a run resumed from such a checkpoint numbers every
    later epoch (checkpoint names, logged `epoch`) one too high, one more per resume.
    """

    def __init__(self, checkpoint: ModelCheckpoint) -> None:
        self.checkpoint, self.start_step = checkpoint, -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step  # the resumed checkpoint's: nothing new yet

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        max_steps = trainer.max_steps
        if trainer.should_stop or 0 <= max_steps <= trainer.global_step:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self.start_step:
            self.save(trainer)
        if last := self.checkpoint.last_model_path:  # where `pilot conditioner` and a resume read
            rank_zero_info(f"Checkpoint: {last} (step {trainer.global_step}; --ckpt_path last)")

    def save(self, trainer: L.Trainer) -> None:
        """Save `last.ckpt` through the checkpoint callback (Lightning's private API, there since
        2.0), so it knows: no second write at a step it saved itself (this callback runs after
        it), no `last-v1.ckpt` of its own when the fit ends."""
        ckpt = self.checkpoint
        if ckpt._last_global_step_saved != trainer.global_step:
            ckpt._save_last_checkpoint(trainer, ckpt._monitor_candidates(trainer))


class StopOnInterrupt(L.Callback):
    """Ctrl-C (SIGINT) during training stops it at the end of the step it is in, so
    `FinalCheckpoint` writes `last.ckpt` and `--ckpt_path last` goes on from that step; a second
    Ctrl-C stops at once (Lightning's shutdown: no checkpoint, the steps since the last periodic
    one are lost). A GAN step updates two networks: a stop inside it could not be saved."""

    def __init__(self) -> None:
        self.previous: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set signal handlers

        def stop(signum: int, frame: Any) -> None:
            self.restore()  # the next Ctrl-C interrupts at once
            trainer.should_stop = True
            print(
                "Ctrl-C: stopping after this step and writing last.ckpt (Ctrl-C again to stop now)",
                file=sys.stderr,
            )

        self.previous = signal.signal(signal.SIGINT, stop)

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, err: Any) -> None:
        self.restore()


class PilotCLI(LightningCLI):
    """LightningCLI with the timelapse, checkpoint and W&B settings of Diffusion Pilot.

    Args:
        system: The `SYSTEMS` name, recorded in its checkpoints and checked in `ckpt_path`.
        locks: Where `before_fit` enters the folder locks (`lock_run_folders`); the caller
            closes it when the training ends (`run`). None: a stack of its own, held until the
            process ends.
        *args, **kwargs: LightningCLI's.
    """

    def __init__(
        self, *args: Any, system: str, locks: contextlib.ExitStack | None = None, **kwargs: Any
    ) -> None:
        self.system, self.checkpoint = system, None
        self.locks = locks if locks is not None else contextlib.ExitStack()
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(Timelapse, "timelapse")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_argument("--wandb", type=WandbMode, default="auto", help="W&B logging mode")
        parser.add_argument("--wandb_project", type=str, default="diffusion-pilot")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, resolve `ckpt_path` "last" to its file (`find_last_checkpoint`; none there: a
        fresh training), then read a `ckpt_path` file (Lightning loads it next for its
        hyperparameters) so a corrupt one, or one that is no Lightning checkpoint of this system,
        is a one-line error naming it (`read_training_checkpoint`).
        """
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as e:  # the parser's `exit_on_error=False` (`run`)
            raise settings_error(e, self._subcommand_parsers.get("fit", parser), args) from None
        config = self.config.get(self.config.get("subcommand") or "", self.config)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            folder, old = checkpoint_dir(config), old_checkpoint_dirs(config)
            last = find_last_checkpoint(folder, old)
            ckpt_path = config["ckpt_path"] = None if last is None else str(last)
            if last is None:
                rank_zero_info(f"ckpt_path=last: no last*.ckpt in {folder}: a fresh training")
            elif last.parent != folder:
                rank_zero_info(
                    f"ckpt_path=last: {last} (an older run's folder); goes on in {folder}"
                )
        if ckpt_path and Path(ckpt_path).is_file():
            self.checkpoint = (ckpt_path, read_training_checkpoint(ckpt_path, self.system))

    def before_fit(self) -> None:
        """Check that the `ckpt_path` file holds this system's models in the shapes this config
        builds (`check_checkpoint_fits`, naming the settings changed since) before Lightning lists
        every mismatched key, and report other changed settings (they take effect); check that a
        fresh training does not start over an earlier run in the folders the config names
        (`RunFolderGuard`), before the config copy or a log is written. A resumed training is
        reseeded with `seed_everything` plus its global step. First the run's folders are locked
        (`lock_run_folders`)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.lock_run_folders()
        if self.checkpoint is not None:
            path, ckpt = self.checkpoint
            changes = changed_settings(recorded_settings(ckpt.metadata), flat_settings(config))
            check_checkpoint_fits(ckpt, path, self.model, changes)
            if changes:
                rank_zero_info(
                    f"ckpt_path={path}: settings changed since this checkpoint, the new values "
                    f"apply: {', '.join(changes)}"
                )
            # the resumed run's own checkpoints are there (`run` scopes the filter)
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
            seed = config.get("seed_everything")
            if isinstance(seed, int) and not isinstance(seed, bool):
                # Lightning saves no random state: reseeded with the seed alone, a resumed run
                # would draw the crops and noise of step 0 again (the batch order is the
                # training loader's state: `train.loaders.ResumableLoader`).
                L.seed_everything((seed + int(ckpt.metadata["global_step"])) % 2**32, workers=True)
        for guard in (c for c in self.trainer.callbacks if isinstance(c, RunFolderGuard)):
            guard.check(self.trainer, config.get("ckpt_path"))

    def lock_run_folders(self) -> None:
        """Lock the checkpoint and timelapse folders (`pilot.locks.folder_lock`, `.NAME.lock`
        beside each, so nothing inside them changes) until the training ends: a second `pilot
        train` into them, started while this one runs, stops at once naming this one's pid.
        `fast_dev_run` writes nothing there and locks nothing; other ranks than 0 neither."""
        trainer = self.trainer
        if trainer.fast_dev_run or not trainer.is_global_zero:
            return
        checkpoints = (c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))
        folders = [Path(c.dirpath) for c in checkpoints if c.dirpath]
        for callback in (c for c in trainer.callbacks if isinstance(c, Timelapse)):
            folders.append(callback.folder(trainer))
        for folder in dict.fromkeys(Path(os.path.realpath(f)) for f in folders):
            self.locks.enter_context(folder_lock(folder, beside=True))

    def instantiate_classes(self) -> None:
        """LightningCLI's, with an error a config class raises prefixed by its section
        (`train.cli_errors.section_error`: `model.generator.image_size=48 must be...`)."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, MisconfigurationException) as e:
            sections = {
                self.model_class: "model",
                self.datamodule_class: "data",
                Timelapse: "timelapse",
                ModelCheckpoint: "checkpoint",
            }
            if (error := section_error(e, sections)) is e:
                raise
            raise error from e

    def instantiate_trainer(self, **kwargs: Any):
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer_cfg = config["trainer"]
        resumed = {} if self.checkpoint is None else self.checkpoint[1].metadata
        wandb_run = resumed.get(WANDB_RUN_KEY)  # go on logging into the resumed run's
        if trainer_cfg.get("logger") in (None, True) and not trainer_cfg.get("fast_dev_run"):
            root = trainer_cfg.get("default_root_dir") or os.getcwd()
            project = config["wandb_project"]
            kwargs["logger"] = make_logger(config["wandb"], project, root, wandb_run)
        trainer = super().instantiate_trainer(**kwargs)
        if trainer.fast_dev_run:  # Lightning's ModelCheckpoint would still save last-v1.ckpt
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
        for ckpt in (c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)):
            if ckpt.dirpath is None:  # not the logger's versioned folder: "last" finds it again
                ckpt.dirpath = os.path.realpath(checkpoint_dir(config))
        fixed = {
            f"{group}.dirpath": str(config[group]["dirpath"])
            for group in ("checkpoint", "timelapse")
            if config.get(group, {}).get("dirpath")
        }
        record = RunRecord(self.system, wandb_run, flat_settings(config))
        trainer.callbacks += [RunFolderGuard(fixed), record, ConfigOptimiserSettings()]
        if isinstance(trainer.checkpoint_callback, ModelCheckpoint):
            trainer.callbacks += [FinalCheckpoint(trainer.checkpoint_callback), StopOnInterrupt()]
        return trainer


SYSTEMS = (
    "dcgan", "pix2pix", "tiny_sd_vae", "tiny_sd_unet", "tiny_sd_controlnet", "preview_decoder"
)  # fmt: skip


def _system_classes(system: str) -> tuple[type, type]:
    if system == "dcgan":
        from train.dcgan import DCGANSystem, ShapesDataModule

        return DCGANSystem, ShapesDataModule
    if system == "preview_decoder":  # distilled from a VAE on the tiny SD's renders
        from train.preview import PreviewDecoderSystem
        from train.tiny_sd import CaptionedDataModule

        return PreviewDecoderSystem, CaptionedDataModule
    if system.startswith("tiny_sd"):  # the three stages of experiments/tiny_sd/train.sh
        from train.tiny_sd import CaptionedDataModule, VAESystem
        from train.tiny_sd_diffusion import DepthControlNetSystem, TextToImageSystem

        stages = {
            "tiny_sd_vae": VAESystem,
            "tiny_sd_unet": TextToImageSystem,
            "tiny_sd_controlnet": DepthControlNetSystem,
        }
        return stages[system], CaptionedDataModule
    from train.pix2pix import PairedDataModule, Pix2PixSystem

    return Pix2PixSystem, PairedDataModule


def run(system: str, args: Sequence[str]) -> PilotCLI:
    """Run the LightningCLI of `system` (one of `SYSTEMS`) on command-line style `args`.

    Raises:
        ValueError: unknown system name, or a bad setting (Lightning's MisconfigurationException
            too), in one line.
    """
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; expected one of {SYSTEMS}")
    model_class, data_class = _system_classes(system)
    with warnings.catch_warnings(), contextlib.ExitStack() as locks:  # released when it ends
        for message in QUIET:
            warnings.filterwarnings("ignore", message=message)
        try:
            return PilotCLI(
                model_class,
                data_class,
                args=list(args),
                save_config_kwargs={"overwrite": True},  # a resumed run rewrites its config.yaml
                parser_kwargs={"prog": f"pilot train {system}", "exit_on_error": False},
                system=system,
                locks=locks,
            )
        except MisconfigurationException as e:  # Lightning's one-line complaint about a setting
            raise ValueError(str(e).strip()) from e


# Lightning warnings that say nothing to a `pilot train` user (regexes of their start):
QUIET = (
    # `pilot train` passes its own arguments on, by design;
    r"LightningCLI's args parameter is intended",
    # the GAN systems step their optimisers themselves (manual optimisation): a checkpoint
    # holds the weights after the step of its global step, which is what resuming needs;
    r"Using ModelCheckpoint with manual optimization",
    # Lightning's own use of a torch API (one line per run, nothing to act on).
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m train.cli SYSTEM SUBCOMMAND ...`, e.g. `dcgan fit --config x.yaml`; errors in
    the settings, weights or files are one line and exit status 2, as in `pilot train`."""
    from pilot.cli import report_errors

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        raise SystemExit(f"usage: python -m train.cli {{{','.join(SYSTEMS)}}} {{fit,validate}} ...")

    def command() -> int:
        run(argv[0], argv[1:])
        return 0

    return report_errors(f"train.cli {argv[0]}", command)


if __name__ == "__main__":
    sys.exit(main())
