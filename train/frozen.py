"""Frozen models of a training system: loaded from their source on every run, kept out of
its checkpoints, and checked on resume.

A system that trains one model against others it does not train (the UNet stage's VAE, the
ControlNet stage's pipeline, a preview decoder's teacher VAE) holds them as submodules, so
Lightning would save them in every checkpoint and restore the *old* weights on resume, whatever
the source holds now: the system would go on training against, and export, a stale model.
`FrozenModels` leaves them out of the checkpoint, records the SHA-256 of their weights, and
refuses to resume when the source now holds other weights (what was trained fits the old ones).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

FROZEN_SHA256 = "pilot_frozen_sha256"  # checkpoint entry: the frozen models' `state_sha256`


def state_sha256(state: Mapping[str, Tensor]) -> str:
    """SHA-256 over the sorted keys, dtypes, shapes and bytes of a state dict."""
    digest = hashlib.sha256()
    for key, value in sorted(state.items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"{key} {value.dtype} {tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy())  # the buffer, no copy
    return digest.hexdigest()


class FrozenModels:
    """LightningModule mixin (list it before `L.LightningModule`) for the models a system does
    not train: `frozen_models()` names them, `frozen_source()` says where they are loaded from."""

    def frozen_models(self) -> dict[str, nn.Module]:
        """The models this system does not train, by attribute name."""
        raise NotImplementedError

    def frozen_source(self) -> str:
        """The argument the frozen models are loaded from, e.g. "model.vae=runs/.../vae"."""
        raise NotImplementedError

    def on_train_epoch_start(self) -> None:
        for model in self.frozen_models().values():  # Lightning put the whole system in train mode
            model.eval()

    def frozen_state(self) -> dict[str, Tensor]:
        """The frozen models' weights under their keys in this system's state dict."""
        return {
            f"{name}.{key}": value
            for name, model in self.frozen_models().items()
            for key, value in model.state_dict().items()
        }

    def frozen_sha256(self) -> str:
        """`state_sha256` of `frozen_state()`, computed once per run (the weights are frozen)."""
        if getattr(self, "_frozen_sha256", None) is None:
            self._frozen_sha256 = state_sha256(self.frozen_state())
        return self._frozen_sha256

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen models out of the checkpoint (each run loads them from their
        source) and record the SHA-256 of their weights under `FROZEN_SHA256`."""
        frozen = tuple(f"{name}." for name in self.frozen_models())
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith(frozen)}
        checkpoint[FROZEN_SHA256] = self.frozen_sha256()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume with the frozen models loaded now, refusing a checkpoint trained against
        other frozen weights (what it trained was fit to those). A checkpoint written before
        `FROZEN_SHA256` holds the frozen weights themselves: they are compared instead."""
        current = self.frozen_state()
        frozen = tuple(f"{name}." for name in self.frozen_models())
        state = checkpoint["state_dict"]
        recorded = checkpoint.get(FROZEN_SHA256)
        if recorded is None:
            recorded = state_sha256({k: v for k, v in state.items() if k.startswith(frozen)})
        if recorded != self.frozen_sha256():
            trainer = getattr(self, "_trainer", None)
            run = getattr(trainer, "default_root_dir", "this stage's run folder")
            raise ValueError(
                f"ckpt_path={getattr(trainer, 'ckpt_path', None)} was trained against "
                f"other frozen weights than {self.frozen_source()} holds now (an earlier stage "
                "was trained on and exported again since?); what it trained fits the old ones, "
                f"so it cannot resume on these: delete {run} to train this stage afresh, or "
                "restore the export it was trained against"
            )
        checkpoint["state_dict"] = {**state, **current}
