"""Sample order and augmentation that depend on (seed, epoch, index) alone.

The sampler hands each DataLoader worker ``(epoch, index)`` rather than ``index``, and the dataset
seeds the augmentation from that pair before reading the sample. So a sample is augmented the same
way whichever worker reads it, whether the workers persist across epochs, and whether the run was
resumed: what resuming exactly needs, without restarting workers every epoch. ``seed_epoch``
seeds the rest (dropout, Python, numpy) from (seed, epoch); ``make_loader`` puts it together.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from semseg.data import transform
from semseg.training.distributed import Processes


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 1_000_000_007 + index


class EpochSampler(Sampler):
    """A ``DistributedSampler`` (this process's share, shuffled per epoch) that yields ``(epoch, index)``."""

    def __init__(self, dataset: Dataset, world_size: int, rank: int, shuffle: bool, seed: int, drop_last: bool):
        self.inner = DistributedSampler(dataset, world_size, rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


class SeededSamples(Dataset):
    """``dataset[index]`` with the augmentation seeded from (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        transform.seed(sample_seed(self.seed, epoch, index))
        return self.dataset[index]


def seed_epoch(seed: int | None, epoch: int) -> None:
    """Seed torch, numpy, Python and the augmentation from (seed, epoch); no-op when unseeded."""
    if seed is None:
        return
    value = seed * 100_003 + epoch
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value % 2**32)
    transform.seed(value)


def per_process_batch(batch_size: int, processes: Processes, key: str) -> int:
    if batch_size % processes.world_size:
        raise ValueError(
            f"{key} {batch_size} is the global batch and must divide evenly over {processes.world_size} processes"
        )
    return batch_size // processes.world_size


def make_loader(
    dataset: Dataset, batch_size: int, workers: int, processes: Processes, train: bool, seed: int
) -> tuple[DataLoader, EpochSampler]:
    """This process's share of ``dataset``, shuffled and augmented as ``seed`` and the epoch decide."""
    sampler = EpochSampler(dataset, processes.world_size, processes.rank, shuffle=train, seed=seed, drop_last=train)
    loader = DataLoader(
        SeededSamples(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=processes.device.type == "cuda",
        drop_last=train,
        persistent_workers=workers > 0,
    )
    return loader, sampler
