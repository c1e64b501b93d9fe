"""How inference reads and encodes: data-loader workers, the encoder's thread count, inference mode.

One owner for the three settings every inference command shares (``medfm embed``, ``zeroshot``,
``evaluate``, ``index build``, ``search``; ``--workers`` and ``--threads``):

- ``workers``: DataLoader processes that read and preprocess samples while the main process
  encodes the previous batch. ``None`` chooses :func:`default_workers`: one per core (at most
  :data:`MAX_DEFAULT_WORKERS`), and none for a manifest that fits in one batch (starting a worker
  costs more than it saves there). Measured on the shared CinC ECGs (``benchmarks/bench_embed.py``,
  2 cores, interleaved): 2 workers 1.26× (1.14–1.65) the samples/s of none, 1 worker 1.07×
  (0.99–1.61): preprocessing, not the encoder, is the work, so every core should preprocess.
- ``threads``: the encoder's intra-op threads in the main process (``torch.set_num_threads``,
  restored afterwards). ``None``: the process's current torch thread count (torch's default: one per
  physical core, or ``OMP_NUM_THREADS``). Workers run one thread each (torch's DataLoader default), so preprocessing and encoding overlap instead of fighting over OpenMP threads.

Workers are forked with the parent's input limits (:mod:`medfm.limits`) set again in each one,
so a ``--limit`` given on the command line holds in workers started with ``spawn`` too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing as mp
import os
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from medfm.errors import ConfigError
from medfm.limits import get_limits, set_limits


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


#: the most workers chosen by default (each holds up to two batches of preprocessed samples)
MAX_DEFAULT_WORKERS = 8


def default_workers(n_samples: int, batch_size: int, cores: Optional[int] = None) -> int:
    """Workers for ``n_samples`` in batches of ``batch_size``: 0 for a single batch or inside a daemonic
    process (which may not start children), else one per core (at most :data:`MAX_DEFAULT_WORKERS`)."""
    if n_samples <= batch_size or mp.current_process().daemon:
        return 0
    c = usable_cores() if cores is None else int(cores)
    return max(1, min(c, MAX_DEFAULT_WORKERS))


def default_threads() -> int:
    """The encoder's threads when ``--threads`` is not given: the process's current torch setting
    (torch's own default is one per physical core, or ``OMP_NUM_THREADS``), so a caller's
    ``torch.set_num_threads`` holds and a result does not depend on the machine's core count."""
    return torch.get_num_threads()


def check_count(name: str, value: Optional[int]) -> Optional[int]:
    """``value`` when ``None`` or ≥ 0 (``threads`` ≥ 1), else a :class:`ConfigError` naming the flag."""
    if value is None:
        return None
    lo = 1 if name == "threads" else 0
    if isinstance(value, bool) or int(value) != value or value < lo:
        raise ConfigError(f"--{name} must be an integer ≥ {lo}, got {value!r}")
    return int(value)


class ValueDataset(Dataset):
    """Raw cells (queries, prompts) loaded by ``adapter`` in eval mode; item ``i`` is labelled ``labels[i]``
    in errors. A value that cannot be read raises (no skip: a query must not change silently)."""

    def __init__(self, adapter: Any, values: list, labels: list):
        self.adapter, self.values, self.labels = adapter, values, labels

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> Any:
        return self.adapter.load(self.values[i], train=False, sample_id=str(self.labels[i]))


def _worker_init(limit_values: dict, _worker_id: int) -> None:
    set_limits(**limit_values)
    torch.set_num_threads(1)


def inference_loader(ds: Dataset, collate: Callable, *, batch_size: int, workers: Optional[int]) -> DataLoader:
    """An in-order DataLoader over ``ds`` with ``workers`` processes (``None``: :func:`default_workers`)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be ≥ 1, got {batch_size}")
    nw = default_workers(len(ds), batch_size) if workers is None else check_count("workers", workers)
    extra = {}
    if nw > 0:
        extra = dict(prefetch_factor=2, worker_init_fn=functools.partial(
            _worker_init, dataclasses.asdict(get_limits())))
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=nw, collate_fn=collate, **extra)


@contextlib.contextmanager
def inference_threads(threads: Optional[int] = None) -> Iterator[int]:
    """``with inference_threads(n):`` encode under ``torch.inference_mode`` with ``n`` intra-op threads
    (``None``: :func:`default_threads`); the previous thread count is restored on exit."""
    n = default_threads() if threads is None else check_count("threads", threads)
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with torch.inference_mode():
            yield n
    finally:
        torch.set_num_threads(old)
