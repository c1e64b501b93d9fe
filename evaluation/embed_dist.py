"""Embedding under ``torchrun``: each rank embeds a contiguous part of the manifest and writes its own file.

Rank ``r`` of ``W`` takes the batches ``[r·C/W, (r+1)·C/W)`` of the ``C = ceil(N / batch_size)``
batches of the manifest, so every batch holds the same rows as in a single process and the
encoder sees identical inputs: the merged result equals the single-process output bit for bit.
Each rank writes ``OUT.rank{r:05d}-of-{W:05d}.safetensors`` (the same format as ``OUT``); after a
barrier rank 0 concatenates them in rank order (= manifest order) into ``OUT``.
The rank files stay beside ``OUT``: streamed one by one they also fill an out-of-core index
(``medfm index build --embeddings 'OUT.rank*'``).

From shards (:func:`embed_shard_ranks`) the unit is also the manifest batch, so the same holds:
see :mod:`medfm.evaluation.embed_shards`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from medfm.errors import ConfigError

from .embed import Embeddings, embed_manifest, load_embeddings, save_embeddings
from .embed_shards import embed_shards
from medfm.train.distributed import barrier, init_distributed
import torch.distributed as dist


def rank_rows(n: int, batch_size: int, rank: int, world_size: int) -> Tuple[int, int]:
    """``[start, stop)`` manifest rows of ``rank``: a contiguous run of whole batches."""
    chunks = -(-int(n) // int(batch_size))
    a, b = rank * chunks // world_size, (rank + 1) * chunks // world_size
    return min(a * batch_size, n), min(b * batch_size, n)


def part_path(out: Any, rank: int, world_size: int) -> Path:
    p = Path(str(out))
    if p.suffix != ".safetensors":
        raise ConfigError(f"{p}: embeddings are written as .safetensors; name the file *.safetensors")
    return p.with_name(f"{p.stem}.rank{rank:05d}-of-{world_size:05d}.safetensors")


def merge_embeddings(parts: Sequence[Embeddings]) -> Embeddings:
    """Concatenate rank parts (given in rank order) into one :class:`Embeddings`."""
    dims = {e.emb.shape[1] for e in parts if len(e.ids)}
    if len(dims) > 1:
        raise ConfigError(f"embedding parts have different dimensions {sorted(dims)}")
    dim = dims.pop() if dims else (parts[0].emb.shape[1] if parts else 0)
    ids: List[str] = [i for e in parts for i in e.ids]
    emb = np.concatenate([e.emb.reshape(-1, dim) for e in parts]).astype(np.float32) if parts else np.zeros((0, dim))
    return Embeddings(ids, emb, [s for e in parts for s in e.skipped], [a for e in parts for a in e.absent],
                      dict(parts[0].meta) if parts else {})


def embed_ranks(model: Any, df: pd.DataFrame, modality: str, *, out: Any, batch_size: int = 32,
                column: Optional[str] = None, progress: bool = True, model_fingerprint: Optional[str] = None,
                model_dir: Optional[str] = None, root: Optional[Any] = None,
                confine: bool = True, **loading: Any) -> Optional[Embeddings]:
    """Embed this rank's rows, write its part, and on rank 0 return the merged result (``None`` elsewhere).
    ``root``/``confine`` and ``loading`` (``num_workers``, ``threads``, ``cache_dir``) as in
    :func:`~.embed.embed_manifest`.

    Call inside an initialised process group (``torchrun``); a single process embeds everything.
    """
    def part(rank: int, world: int) -> Embeddings:
        a, b = rank_rows(len(df), batch_size, rank, world)
        rows = df.iloc[a:b].reset_index(drop=True)
        rows.attrs.update(df.attrs)
        return embed_manifest(model, rows, modality, batch_size=batch_size, column=column,
                              progress=progress and rank == 0, root=root, confine=confine, **loading)

    return _run_ranks(part, modality, out=out, model_fingerprint=model_fingerprint, model_dir=model_dir)


def embed_shard_ranks(model: Any, index: Any, modality: str, *, out: Any, batch_size: int = 32,
                      progress: bool = True, model_fingerprint: Optional[str] = None,
                      model_dir: Optional[str] = None) -> Optional[Embeddings]:
    """:func:`embed_ranks` for a shard set: rank ``r`` embeds its run of whole manifest batches
    (:func:`medfm.evaluation.embed_shards.rank_batches`), reading only the shards that overlap it."""

    def part(rank: int, world: int) -> Embeddings:
        return embed_shards(model, index, modality, batch_size=batch_size, rank=rank, world_size=world,
                            progress=progress and rank == 0)

    return _run_ranks(part, modality, out=out, model_fingerprint=model_fingerprint, model_dir=model_dir)


def _run_ranks(part: Callable[[int, int], Embeddings], modality: str, *, out: Any,
               model_fingerprint: Optional[str], model_dir: Optional[str]) -> Optional[Embeddings]:
    """Run ``part(rank, world)``, write ``OUT.rankR-of-W``, barrier, merge on rank 0, tear down the group."""

    info = init_distributed("cpu")
    rank, world = info.rank, info.world_size
    emb = part(rank, world)
    save_embeddings(part_path(out, rank, world), emb, modality=modality, model_fingerprint=model_fingerprint,
                    model_dir=model_dir)
    barrier()
    merged = None
    if rank == 0:
        merged = merge_embeddings([load_embeddings(part_path(out, r, world)) for r in range(world)])
    barrier()
    if dist.is_initialized():
        dist.destroy_process_group()
    return merged
