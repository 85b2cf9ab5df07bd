"""DataLoader settings shared by the data modules of `train/`, and a training loader that a
training resumed mid-epoch goes on with where it stopped.

Lightning saves the state of a loader that has `state_dict` / `load_state_dict` in every
checkpoint and restores it on a resume. `ResumableLoader` shuffles each epoch by a permutation
drawn from (a seed kept in that state, the epoch), and its state counts the batches given out
in the epoch, so a resume draws the rest of the interrupted epoch, not a fresh shuffle of all
of it (which showed some items twice in that epoch and others never): a run stopped and resumed
sees the batches an unstopped run would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochOrder(Sampler[int]):
    """Indices 0..n-1 in the order of a permutation drawn from (`seed`, `epoch`), `epoch` counting
    the passes (one per training epoch). `skip` items at the start of the next pass are left out
    once (the part of the epoch a resumed training already saw).

    No `set_epoch`: the epoch Lightning would set is one behind after some resumes (a session
    resumed from the last batch of an epoch, in a run resumed before), which would draw an
    epoch's order twice.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.skip = n, seed, 0, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        rng = torch.Generator().manual_seed((self.seed + self.epoch) % 2**63)
        order = torch.randperm(self.n, generator=rng)[self.skip :].tolist()
        self.epoch, self.skip = self.epoch + 1, 0
        return iter(order)


class ResumableLoader(DataLoader):
    """A DataLoader over an `EpochOrder` whose state (Lightning's stateful-loader interface)
    is the seed, the epoch and the batches given out in it; `load_state_dict` makes the next
    pass give the rest of that epoch. Any other sampler (Lightning's distributed one) keeps no
    state: a resume then draws a fresh order."""

    def __iter__(self) -> Iterator[Any]:
        order = self.sampler if isinstance(self.sampler, EpochOrder) else None
        self._epoch = order.epoch if order is not None else 0  # the pass about to start
        self._given = order.skip // self.batch_size if order is not None and self.batch_size else 0
        for batch in super().__iter__():
            self._given += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        if not isinstance(self.sampler, EpochOrder):
            return {}
        return {
            "seed": self.sampler.seed,
            "epoch": getattr(self, "_epoch", self.sampler.epoch),
            "batches": getattr(self, "_given", 0),
            "items": self.sampler.n,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        order = self.sampler
        if not isinstance(order, EpochOrder) or not state:
            return
        order.seed, order.epoch = int(state["seed"]), int(state["epoch"])
        if state["items"] != order.n or state["batch_size"] != self.batch_size:
            return  # other data or batches: the epoch's order from its start, as Lightning counts
        order.skip = int(state["batches"]) * self.batch_size
        if order.skip >= len(self) * self.batch_size:  # stopped at the epoch's end
            order.epoch, order.skip = order.epoch + 1, 0


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, *, train: bool) -> DataLoader:
    """Shuffled batches without a ragged last one for training (`ResumableLoader`, its seed
    drawn from torch's generator, which `seed_everything` seeds); all items in order otherwise.

    A training set smaller than one batch keeps its single short batch rather than none.
    """
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "drop_last": train and len(dataset) >= batch_size,
        "num_workers": num_workers,
        "persistent_workers": num_workers > 0,
    }
    if not train:
        return DataLoader(dataset, shuffle=False, **kwargs)
    seed = int(torch.randint(0, 2**62, ()))
    return ResumableLoader(dataset, sampler=EpochOrder(len(dataset), seed), **kwargs)
