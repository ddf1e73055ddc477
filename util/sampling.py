"""Sample order and augmentation that depend on (seed, epoch, index) alone.

The sampler hands each DataLoader worker ``(epoch, index)`` rather than ``index``, and the dataset
seeds the augmentation from that pair before reading the sample. So a sample is augmented the same
way whichever worker reads it, whether the workers persist across epochs, and whether the run was
resumed: what resuming exactly needs, without restarting workers every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from util import transform


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
