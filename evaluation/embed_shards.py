"""Embed a modality straight from ``medfm shard`` output (local folder or fsspec URL), in manifest order.

Batches are the manifest's: batch ``k`` holds the stored samples of manifest rows
``[k·B, (k+1)·B)`` that have the modality, exactly the rows :func:`~medfm.evaluation.embed.embed_manifest`
encodes together for that batch. The shards hold the eval-mode preprocessed tensors that the
manifest path computes, so the encoder sees identical inputs and the embeddings equal those of the
manifest bit for bit (tested), whatever the shard size.

Split over ranks (:func:`rank_batches`): the batches that the shards cover are cut into ``W``
contiguous runs of whole batches; a rank reads only the shards that overlap its rows (a run of
whole shards, plus at most the boundary shard it shares with its neighbour; with fewer shards than
ranks, several ranks read the same shard and keep their own samples). Concatenated in rank order
the parts are the single-process output.

Skipped samples: a modality that could not be read at shard time is in the index's ``errors``
(with its manifest row); one that fails when decoded (an inline value) is caught here. Both are
listed in ``skipped`` in manifest order, as the manifest path lists them. ``absent`` lists the
samples without the modality (stored ones, and unreadable ones whose failures were all in other
modalities); rows with no modality at all were not stored and are not named (their number is the
index's ``n_empty``).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from medfm.errors import ConfigError, DataError

from .embed import Embeddings, encode_batches, require_modality
from .embed_loader import inference_threads
from medfm.data.shards import check_adapters, decode_sample, iter_shard, sample_record
from medfm.data import MultiModalCollate
from tqdm.auto import tqdm


log = logging.getLogger("medfm.evaluation")


def covered_batches(index: Any, batch_size: int) -> List[int]:
    """Sorted manifest batch numbers ``k`` (rows ``[k·B, (k+1)·B)``) that overlap a shard of ``index``."""
    ks = set()
    for s in index.shards:
        ks.update(range(int(s["first_row"]) // batch_size, int(s["last_row"]) // batch_size + 1))
    return sorted(ks)


def rank_batches(batches: Sequence[int], rank: int, world_size: int) -> List[int]:
    """Rank ``rank``'s contiguous share of ``batches`` (sizes differ by at most one)."""
    n = len(batches)
    return list(batches[rank * n // world_size:(rank + 1) * n // world_size])


def _shard_samples(index: Any, modality: str, rows: Tuple[int, int]) -> Iterator[Dict[str, Any]]:
    """Raw samples (only their ``json`` and ``<modality>.safetensors`` members) of manifest rows in ``rows``."""

    lo, hi = rows
    want = (".json", f".{modality}.safetensors")
    for s in sorted(index.shards, key=lambda s: int(s["first_row"])):
        if int(s["last_row"]) < lo or int(s["first_row"]) >= hi:
            continue
        for raw in iter_shard(index, s["name"], select=lambda name: name.endswith(want)):
            row = int(raw["__key__"])
            if row >= hi:
                break
            if row >= lo:
                yield raw


def shard_errors(index: Any, modality: str) -> List[Dict[str, Any]]:
    """Shard-time errors of ``modality``: ``{"id", "reason", "row"}`` (row -1 when the index predates rows)."""
    return [{"id": str(e["id"]), "reason": str(e["reason"]), "row": int(e.get("row", -1))}
            for e in index.info.get("errors", []) if e.get("modality") == modality]


def unstored_absent(index: Any, modality: str) -> List[Tuple[int, str]]:
    """``(row, id)`` of samples not stored (nothing readable) that had no ``modality`` to read: their
    other modalities failed, so for ``modality`` they are absent, as the manifest path reports them."""
    bad = set(index.info.get("unreadable", []))
    errs: Dict[str, List[Dict[str, Any]]] = {}
    for e in index.info.get("errors", []):
        if str(e["id"]) in bad:
            errs.setdefault(str(e["id"]), []).append(e)
    return [(int(es[0].get("row", -1)), sid) for sid, es in errs.items()
            if all(e.get("modality") != modality for e in es)]


def embed_shards(model: Any, index: Any, modality: str, *, batch_size: int = 32, rank: int = 0,
                 world_size: int = 1, progress: bool = True, threads: Optional[int] = None) -> Embeddings:
    """Embed ``modality`` of the samples in an opened shard set (:func:`medfm.data.shards.open_index`).

    ``rank``/``world_size`` select this rank's batches (:func:`rank_batches`); the default embeds all.
    ``threads``: the encoder's (:func:`~.embed_loader.inference_threads`, as the manifest path).
    Returns :class:`Embeddings` with ``emb (N, embed_dim)`` float32 in manifest-row order.
    """

    adapter = require_modality(model, modality)
    if modality not in index.modalities:
        raise DataError(f"the shards hold no {modality!r} (they hold: {', '.join(sorted(index.modalities))})",
                        source=index.url("index.json"))
    if batch_size < 1:
        raise ConfigError(f"batch size must be ≥ 1, got {batch_size}")
    check_adapters(index, {modality: adapter})
    mine = rank_batches(covered_batches(index, batch_size), rank, world_size)
    rows = (mine[0] * batch_size, (mine[-1] + 1) * batch_size) if mine else (0, 0)
    adapters = {modality: adapter}
    collate = MultiModalCollate(adapters)
    decode = dict(adapters=adapters, modalities=index.modalities, train=False, seed=0, epoch=0, label_index={})
    late: List[Dict[str, Any]] = []  # decode-time errors, with their rows
    absent: List[Tuple[int, str]] = []  # (row, id)

    def batches() -> Iterator[Dict[str, Any]]:
        items: List[Dict[str, Any]] = []
        current = None
        for raw in (_shard_samples(index, modality, rows) if mine else ()):
            try:
                rec = sample_record(raw)
            except DataError as e:  # a corrupt record: a counted, logged skip naming shard and member
                log.warning("skipping sample %s: %s", raw.get("__key__"), e)
                late.append({"id": str(raw.get("__key__")), "reason": str(e), "row": int(raw["__key__"])})
                continue
            k = int(rec["index"]) // batch_size
            if items and k != current:
                yield collate(items)
                items = []
            current = k
            item = decode_sample(raw, **decode)
            n_before = len(rec.get("errors", []))
            new = [e for e in item.get("errors", [])[n_before:] if e[1] == modality]
            late.extend({"id": str(e[0]), "reason": str(e[2]), "row": int(rec["index"])} for e in new)
            if item.get("skipped"):
                if not new and not any(e[1] == modality for e in rec.get("errors", [])):
                    absent.append((int(rec["index"]), str(rec["id"])))
                continue
            items.append({**item, "errors": []})
        if items:
            yield collate(items)

    total = sum(int(s["counts"].get(modality, 0)) for s in index.shards
                if int(s["last_row"]) >= rows[0] and int(s["first_row"]) < rows[1])
    bar = tqdm(total=total, desc=f"embed {modality} (shards)", unit="sample", disable=not progress)
    with inference_threads(threads):
        emb = encode_batches(model, modality, batches(), bar=bar)
    bar.close()
    lo, hi = rows
    early = [e for e in shard_errors(index, modality)
             if (lo <= e["row"] < hi) or (e["row"] < 0 and rank == 0)]
    skipped = sorted(early + late, key=lambda e: e["row"])
    emb.skipped = [{"id": e["id"], "reason": e["reason"]} for e in skipped]
    emb.absent = [i for _, i in sorted(absent + [a for a in unstored_absent(index, modality) if lo <= a[0] < hi])]
    emb.meta.update(shards=index.url(""), n_empty=int(index.info.get("n_empty", 0)))
    return emb
