"""DataLoader settings shared by the data modules of `train/`."""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, *, train: bool) -> DataLoader:
    """Shuffled batches without a ragged last one for training; all items in order otherwise.

    A training set smaller than one batch keeps its single short batch rather than none.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) >= batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
