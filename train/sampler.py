"""A seeded, resumable, rank-sharded sampler: the data order is a pure function of (seed, epoch, position).

Each epoch is a permutation of all frames drawn from torch.Generator(seed + epoch); rank r of W takes
positions r, r+W, ... of it. The trainer tells the sampler how many samples this rank has consumed, so
a resumed run starts at exactly the next sample the uninterrupted run would have seen (prefetched but
unconsumed batches are not counted).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Infinite stream of frame indices (epoch after epoch) for one rank, starting at `consumed`."""

    def __init__(self, num_frames: int, seed: int, rank: int = 0, world_size: int = 1, consumed: int = 0,
                 shuffle: bool = True) -> None:
        if num_frames < world_size:
            raise ValueError(f"{num_frames} frames cannot be shared by {world_size} ranks")
        self.num_frames = num_frames
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.consumed = consumed
        self.shuffle = shuffle
        self.per_rank = num_frames // world_size  # the tail of each permutation is dropped, as DistributedSampler

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """This rank's frame indices for `epoch`."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.num_frames, generator=g)
        else:
            perm = torch.arange(self.num_frames)
        return perm[self.rank: self.per_rank * self.world_size: self.world_size]

    def position(self, consumed: int) -> tuple[int, int]:
        """(epoch, offset within the epoch) after `consumed` samples on this rank."""
        return divmod(consumed, self.per_rank)

    def __iter__(self) -> Iterator[int]:
        epoch, offset = self.position(self.consumed)
        while True:
            order = self.epoch_order(epoch)
            for i in order[offset:].tolist():
                yield i
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # one epoch; the iterator itself is unbounded
        return self.per_rank
