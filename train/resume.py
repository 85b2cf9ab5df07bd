"""Resuming a training: which checkpoint `--ckpt_path last` names, what every checkpoint
records of its run, what a resume checks against it, and what it takes from its config rather
than from the checkpoint.

Every checkpoint of `pilot train` records (`RunRecord`) the system's name, the W&B run's id and
the run's `model` and `data` settings (`SETTINGS_KEY`, a JSON string, so
`torch.load(weights_only=True)` reads it). On a resume:

- a config that builds a model the checkpoint's weights do not fit (`model.generator.
  base_channels` changed, say) is refused in one line naming the changed settings, else the
  first tensor that differs (`check_checkpoint_fits`), before Lightning lists every key;
- other changed settings (`model.lr`, `model.l1_weight`, `data.batch_size`...) are reported
  (`changed_settings`) and take effect: `ConfigOptimiserSettings` sets the optimisers'
  learning rate, betas, eps and weight decay from the config once Lightning has restored their
  state, which would otherwise silently bring back the checkpoint's.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from pilot.weights.io import Checkpoint, WeightsError, read_checkpoint

SYSTEM_KEY = "pilot_system"  # checkpoint entry: the `SYSTEMS` name of the system that wrote it
WANDB_RUN_KEY = "pilot_wandb_run"  # checkpoint entry: the id of the W&B run it logged to
SETTINGS_KEY = "pilot_settings"  # checkpoint entry: JSON of the run's model and data settings
_SECTIONS = ("model", "data")


def checkpoint_dir(config: Any) -> Path:
    """The checkpoint folder of a parsed `fit` config: `checkpoint.dirpath`, else
    `<trainer.default_root_dir>/checkpoints` (what `PilotCLI` gives ModelCheckpoint)."""
    if dirpath := config.get("checkpoint", {}).get("dirpath"):
        return Path(dirpath)
    return Path(config["trainer"].get("default_root_dir") or os.getcwd()) / "checkpoints"


def last_checkpoints(folder: Path) -> list[Path]:
    """The `last*.ckpt` files of a ModelCheckpoint folder (`last.ckpt`, `last-v1.ckpt`...)."""
    last = ModelCheckpoint.CHECKPOINT_NAME_LAST
    return sorted(p for p in folder.glob("*.ckpt") if p.name.startswith(last) and p.is_file())


def old_checkpoint_dirs(config: Any) -> list[Path]:
    """Where runs made before checkpoints had one folder kept them, for a parsed `fit` config
    without `checkpoint.dirpath`: the first logger's versioned folder under
    `default_root_dir`, `csv/version_*/checkpoints` (CSV logger) or
    `<wandb_project>/*/checkpoints` (W&B logger, first when wandb was installed). With a
    `checkpoint.dirpath` the old runs wrote there too: none."""
    if config.get("checkpoint", {}).get("dirpath"):
        return []
    root = Path(config["trainer"].get("default_root_dir") or os.getcwd())
    project = config.get("wandb_project") or "diffusion-pilot"
    patterns = ("csv/version_*/checkpoints", f"{glob.escape(project)}/*/checkpoints")
    return sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_dir()})


def find_last_checkpoint(folder: Path, old_folders: Sequence[Path] = ()) -> Path | None:
    """The file `ckpt_path="last"` names, as Lightning picks it: the newest (modification time)
    of the `last_checkpoints` of `folder` and of `old_folders` (`old_checkpoint_dirs`, whose
    runs a resume goes on in `folder`); None if none.

    Raises:
        ValueError: the newest are equally new in different folders, listing them.
    """
    found = [p for f in (folder, *old_folders) for p in last_checkpoints(f)]
    if not found:
        return None
    times = {p: p.stat().st_mtime for p in found}
    tied = [p for p in found if times[p] == max(times.values())]
    if len({p.parent for p in tied}) > 1:
        raise ValueError(
            f"ckpt_path=last: {', '.join(map(str, tied))} are equally new: pass the one to "
            "resume as --ckpt_path FILE"
        )
    return tied[0]


class RunRecord(L.Callback):
    """Records in every checkpoint the system's name (one of `SYSTEMS`, under `SYSTEM_KEY`), the
    run's model and data settings (`train.resume.SETTINGS_KEY`, JSON of `flat_settings`: a
    resume names what changed) and the id of the attached W&B run (`WANDB_RUN_KEY`), else the
    one the resumed checkpoint had, so a session without W&B does not lose the run a later
    resume goes on with."""

    def __init__(
        self, system: str, wandb_run: str | None = None, settings: dict[str, Any] | None = None
    ) -> None:
        self.system, self.wandb_run = system, wandb_run
        self.settings = None if settings is None else json.dumps(settings)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[SYSTEM_KEY] = self.system
        if self.settings is not None:
            checkpoint[SETTINGS_KEY] = self.settings
        wandb = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if wandb is not None and wandb.version:
            self.wandb_run = str(wandb.version)
        if self.wandb_run is not None:
            checkpoint[WANDB_RUN_KEY] = self.wandb_run


def read_training_checkpoint(path: str, system: str) -> Checkpoint:
    """A `ckpt_path` file, read once: a Lightning checkpoint of `system` or a one-line error.

    Raises:
        WeightsError: unreadable, not a Lightning checkpoint (a `.safetensors` export, say),
            or recorded as another system's.
    """
    ckpt = read_checkpoint(path)  # WeightsError naming the file when truncated or corrupt
    if not {"pytorch-lightning_version", "global_step"} <= set(ckpt.metadata):
        raise WeightsError(
            f"ckpt_path={path}: not a Lightning training checkpoint (no global_step); it takes "
            f"a .ckpt of a {system} run (its checkpoints folder), or 'last'"
        )
    found = ckpt.metadata.get(SYSTEM_KEY)
    if found is not None and found != system:
        raise WeightsError(f"ckpt_path={path} is a {found} checkpoint, not {system}")
    return ckpt


def flat_settings(config: Any) -> dict[str, Any]:
    """The `model` and `data` sections of a parsed `fit` config (a jsonargparse Namespace or a
    dict) as `{"model.generator.base_channels": 64, ...}`, values as JSON gives them back."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        else:
            flat[prefix] = value

    for section in _SECTIONS:
        if (value := config.get(section)) is not None:
            walk(section, value.as_dict() if hasattr(value, "as_dict") else value)
    return json.loads(json.dumps(flat, default=str))  # tuples -> lists, paths -> strings


def recorded_settings(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The settings a checkpoint's run recorded (`SETTINGS_KEY`); None in older checkpoints."""
    text = metadata.get(SETTINGS_KEY)
    if not isinstance(text, str):
        return None
    try:
        settings = json.loads(text)
    except json.JSONDecodeError:
        return None
    return settings if isinstance(settings, dict) else None


def changed_settings(before: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """`"model.lr 0.0002 -> 0.01"` for every setting that differs (a key one side lacks reads
    as unset); none when the checkpoint recorded no settings."""
    if before is None:
        return []
    unset = "(unset)"
    return [
        f"{key} {json.dumps(before.get(key, unset))} -> {json.dumps(now.get(key, unset))}"
        for key in sorted(before.keys() | now.keys())
        if before.get(key, unset) != now.get(key, unset)
    ]


def _first_misfit(ckpt: Checkpoint, model: nn.Module) -> str | None:
    """The first tensor of the checkpoint that the model's state dict lacks or holds in another
    shape, or of the model's trained modules that the checkpoint lacks; None if all fit."""
    state = model.state_dict()
    for key, tensor in ckpt.tensors.items():
        if key not in state:
            return f"{key} is in the checkpoint, not in this model"
        if tuple(state[key].shape) != tuple(tensor.shape):
            return (
                f"{key} is {list(tensor.shape)} in the checkpoint, {list(state[key].shape)} in "
                "this model"
            )
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    for key in state:
        if key.split(".")[0] in trained and key not in ckpt.tensors:
            return f"{key} of this model is not in the checkpoint"
    return None


def check_checkpoint_fits(
    ckpt: Checkpoint, path: str, model: L.LightningModule, changes: list[str] | None = None
) -> None:
    """Refuse a checkpoint whose weights do not fit `model`: another system's (its top-level
    names, `vae`, `unet`..., lack the models `model` trains or hold models it lacks; older
    checkpoints record no system name), or this system's trained with other model settings.

    Args:
        changes: `changed_settings` since the checkpoint, named in the error.

    Raises:
        WeightsError: one line naming the file and the changed settings (else the first tensor
            that does not fit).
    """
    found = {key.split(".")[0] for key in ckpt.tensors}
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    known = {key.split(".")[0] for key in model.state_dict()}
    if not trained <= found <= known:
        raise WeightsError(
            f"ckpt_path={path} is not a checkpoint of this system: it holds "
            f"{', '.join(sorted(found))} weights, {type(model).__name__} trains "
            f"{', '.join(sorted(trained))}"
        )
    misfit = _first_misfit(ckpt, model)
    if misfit is None:
        return
    model_changes = [c for c in changes or [] if c.startswith("model.")]
    why = (
        f"its model settings changed ({', '.join(model_changes)})"
        if model_changes
        else f"the model this config builds differs ({misfit})"
    )
    raise WeightsError(
        f"ckpt_path={path} does not fit: {why}; resume with the settings it was trained with, "
        "or start a fresh training in another folder"
    )


_HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "momentum")


class ConfigOptimiserSettings(L.Callback):
    """A resumed training runs with its config's optimiser settings, not the checkpoint's.

    Lightning restores each optimiser's state dict, learning rate and betas included, so a
    resume with another `model.lr` would silently go on at the old rate. The settings
    `configure_optimizers` gave (`on_fit_start`, before the restore) are put back once the state
    is restored (`on_train_start`); the moments (Adam's averages) stay. Under a learning rate
    schedule the scheduled rate is scaled by new / old base rate, and the scheduler's base rates
    follow.
    """

    def __init__(self) -> None:
        self.fresh: list[list[dict[str, Any]]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fresh = [
            [{k: g[k] for k in (*_HYPERPARAMETERS, "initial_lr") if k in g} for g in o.param_groups]
            for o in trainer.optimizers
        ]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        for optimiser, fresh_groups in zip(trainer.optimizers, self.fresh, strict=True):
            groups = optimiser.param_groups
            if len(groups) != len(fresh_groups):
                continue  # another grouping than the config's: leave the checkpoint's
            for i, (group, fresh) in enumerate(zip(groups, fresh_groups, strict=True)):
                for key in _HYPERPARAMETERS[1:]:
                    if key in fresh and key in group:
                        group[key] = fresh[key]
                self._set_lr(trainer, optimiser, i, fresh.get("initial_lr", fresh["lr"]))

    @staticmethod
    def _set_lr(trainer: L.Trainer, optimiser: Any, index: int, lr: float) -> None:
        group = optimiser.param_groups[index]
        if "initial_lr" not in group:  # no schedule
            group["lr"] = lr
            return
        old = group["initial_lr"]
        if old == lr:
            return
        group["lr"] = group["lr"] * lr / old if old else lr
        group["initial_lr"] = lr
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if getattr(scheduler, "optimizer", None) is optimiser:
                scheduler.base_lrs[index] = lr
