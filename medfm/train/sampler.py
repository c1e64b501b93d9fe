"""A shuffling, sharding sampler that can start mid-epoch (for exact resume)."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Epoch-seeded permutation, split across ranks, optionally starting at an offset.

    Args:
        n: dataset length. shuffle: permute each epoch with seed ``seed + epoch``.
        rank / world_size: this rank's shard is ``perm[rank::world_size]`` (the permutation
            is padded by wrapping so every rank gets the same number of samples).
    """

    def __init__(self, n: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.n, self.shuffle, self.seed = int(n), bool(shuffle), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip the first ``start`` indices of this rank's shard."""
        self.epoch, self.start = int(epoch), int(start)

    def shard(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(self.n, generator=g)
        else:
            perm = torch.arange(self.n)
        per_rank = -(-self.n // self.world_size)
        total = per_rank * self.world_size
        if total > self.n:
            perm = torch.cat([perm, perm[: total - self.n]])
        return perm[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard()[self.start:].tolist())

    def __len__(self) -> int:
        return max(0, -(-self.n // self.world_size) - self.start)
