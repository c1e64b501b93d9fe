"""Training from WebDataset shards: shuffled, split by rank and worker, resumable at the same next sample.

The order of one epoch is a pure function of ``(seed, epoch, world_size, num_workers)`` and the
shard index:

1. the shards are permuted with ``seed + epoch``;
2. there are ``S = world_size × max(1, num_workers)`` streams; stream ``s = rank·W + w`` reads
   shards ``perm[s::S]`` (when there are fewer shards than streams, every stream reads all
   shards and keeps every S-th sample);
3. each stream passes its samples through a shuffle buffer seeded with ``(seed, epoch, s)``
   and cuts them into batches of ``batch_size``;
4. every rank yields the same number of batches per epoch (the smallest rank's count of full
   batches, from the index's per-shard counts), so DDP/FSDP collectives stay in step;
5. the DataLoader takes batches from its workers round-robin (a worker that has run out is
   skipped).

So the first ``k`` batches of an epoch are known without reading anything: resuming at batch
``k`` (:meth:`ShardStream.set_epoch`) makes each stream skip the batches it had already given
(replaying its buffer on the raw bytes, without decoding) and rotates the workers so that the
one due next serves first. Resume needs the same world size and worker count.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import ConfigError
from .dataset import MultiModalCollate
from .shards import ShardIndex, decode_sample, iter_shard

log = logging.getLogger("medfm.data")


def stream_plan(index: ShardIndex, epoch: int, seed: int, n_streams: int) -> List[Tuple[List[int], int, int]]:
    """Per stream: ``(shard positions in read order, keep modulus, n_samples)``.

    A modulus of 1 keeps every sample; ``m > 1`` keeps the samples whose position in the
    concatenated epoch order is ``≡ stream (mod m)``.
    """
    shards = index.shards
    g = torch.Generator().manual_seed(int(seed) + int(epoch))
    perm = torch.randperm(len(shards), generator=g).tolist()
    if len(shards) >= n_streams:
        return [(perm[s::n_streams], 1, sum(shards[i]["n_samples"] for i in perm[s::n_streams]))
                for s in range(n_streams)]
    total = sum(s["n_samples"] for s in shards)
    return [(perm, n_streams, len(range(s, total, n_streams))) for s in range(n_streams)]


def batches_per_worker(index: ShardIndex, epoch: int, seed: int, world_size: int, num_workers: int,
                       batch_size: int) -> List[List[int]]:
    """``[rank][worker]`` → number of batches that worker yields this epoch (equal total per rank)."""
    W = max(1, int(num_workers))
    plan = stream_plan(index, epoch, seed, world_size * W)
    per = [[plan[r * W + w][2] // batch_size for w in range(W)] for r in range(world_size)]
    target = min(sum(p) for p in per)
    for p in per:  # trim the fullest workers until every rank has `target` batches
        while sum(p) > target:
            p[int(np.argmax(p))] -= 1
    return per


def round_robin_consumed(counts: Sequence[int], k: int) -> Tuple[List[int], int]:
    """After ``k`` batches taken round-robin from workers with ``counts`` batches each (a finished
    worker skipped): ``(batches taken from each worker, the worker due next)``."""
    W = len(counts)
    taken = [0] * W
    w = 0
    for _ in range(int(k)):
        for _ in range(W):
            if taken[w] < counts[w]:
                break
            w = (w + 1) % W
        else:
            break
        taken[w] += 1
        w = (w + 1) % W
    return taken, w


class ShardStream(IterableDataset):
    """Collated batches of one rank from a shard set (use with ``DataLoader(batch_size=None)``).

    Args:
        index: an opened shard set (:func:`medfm.data.shards.open_index`).
        adapters: ``{modality: adapter}``; modalities the shards lack are absent everywhere.
        batch_size: samples per batch (per rank). shuffle_buffer: samples held by each stream's buffer.
        train: apply the adapters' ``augment()`` (seeded by ``(seed, epoch, manifest row)``).
        label_columns: turned into integer labels with the index's vocabularies.
        rank / world_size / num_workers: the split; ``num_workers`` must equal the DataLoader's.
    Batches are :class:`~medfm.data.MultiModalCollate` dicts.
    """

    def __init__(self, index: ShardIndex, adapters: Mapping[str, Any], *, batch_size: int, seed: int = 0,
                 shuffle_buffer: int = 1000, train: bool = True, label_columns: Sequence[str] = (),
                 rank: int = 0, world_size: int = 1, num_workers: int = 0):
        self.index, self.adapters = index, dict(adapters)
        self.batch_size, self.seed, self.buffer = int(batch_size), int(seed), max(1, int(shuffle_buffer))
        self.train, self.rank, self.world_size, self.num_workers = train, int(rank), int(world_size), int(num_workers)
        vocab = index.info.get("label_vocab", {})
        missing = [c for c in label_columns if c not in vocab]
        if missing:
            raise ConfigError(f"label column(s) {missing} not recorded in the shard index of {index.root} "
                              f"(re-shard with --label-columns)")
        self.label_index = {c: {v: i for i, v in enumerate(vocab[c])} for c in label_columns}
        self.collate = MultiModalCollate(self.adapters)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip its first ``start`` batches of this rank."""
        self.epoch, self.start = int(epoch), int(start)

    def counts(self) -> List[int]:
        return batches_per_worker(self.index, self.epoch, self.seed, self.world_size, self.num_workers,
                                  self.batch_size)[self.rank]

    def __len__(self) -> int:
        return max(0, sum(self.counts()) - self.start)

    def _raw(self, stream: int) -> Iterator[Dict[str, Any]]:
        W = max(1, self.num_workers)
        shards, mod, _ = stream_plan(self.index, self.epoch, self.seed, self.world_size * W)[stream]
        pos = 0
        for i in shards:
            for raw in iter_shard(self.index, self.index.shards[i]["name"]):
                if mod == 1 or pos % mod == stream:
                    yield raw
                pos += 1

    def _shuffled(self, stream: int) -> Iterator[Dict[str, Any]]:
        rng = np.random.default_rng([self.seed, self.epoch, stream, 7])
        buf: List[Dict[str, Any]] = []
        for raw in self._raw(stream):
            if len(buf) < self.buffer:
                buf.append(raw)
                continue
            j = int(rng.integers(len(buf)))
            buf[j], raw = raw, buf[j]
            yield raw
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        W = max(1, self.num_workers)
        info = get_worker_info()
        physical = info.id if info is not None else 0
        if (info.num_workers if info is not None else 1) != W:
            raise ConfigError(f"ShardStream built for {self.num_workers} workers runs in "
                              f"{info.num_workers if info else 0}")
        counts = self.counts()
        taken, due = round_robin_consumed(counts, self.start)
        w = (due + physical) % W
        n_batches, skip = counts[w], taken[w]
        bs = self.batch_size
        decode = dict(adapters=self.adapters, modalities=self.index.modalities, train=self.train, seed=self.seed,
                      epoch=self.epoch, label_index=self.label_index)
        items: List[Dict[str, Any]] = []
        done = 0
        for n, raw in enumerate(self._shuffled(self.rank * W + w)):
            if done >= n_batches:
                return
            if n < skip * bs:
                if (n + 1) % bs == 0:
                    done += 1
                continue
            items.append(decode_sample(raw, **decode))
            if len(items) == bs:
                yield self.collate(items)
                items, done = [], done + 1


def shard_loader(stream: ShardStream, *, pin_memory: bool = False) -> DataLoader:
    """The DataLoader that runs ``stream`` with its ``num_workers`` (batches come collated)."""
    nw = stream.num_workers
    return DataLoader(stream, batch_size=None, num_workers=nw, pin_memory=pin_memory,
                      prefetch_factor=4 if nw else None, persistent_workers=False)
