"""Cross-modal retrieval metrics with many-to-many ground truth, and the BIOSCAN protocol.

Ground truth
------------
A query ``i`` and a gallery item ``j`` match when their *keys* share a value.
Keys come from the manifest (see :func:`keys_from_manifest`):

* ``"id"`` — the manifest row id: a query matches the gallery item of its own row
  (paired data: an X-ray and its report).
* ``"patient"`` — the ``patient_id`` column: every item of the same patient matches.
* ``"label:<column>"`` — a label column: items with the same label match. A cell may
  hold several labels separated by ``|`` or ``;`` (multi-label); one shared label is a match.

Each key is a hashable value or a collection of them, so ground truth is many-to-many.
Queries without any matching gallery item are left out of the metrics and counted
(``{q}_to_{g}_n_no_match``).

Metrics (open_clip naming, ``{query}_to_{gallery}_<metric>``): ``R@1``, ``R@5``,
``R@10`` (a match within the top k), ``MRR`` (mean reciprocal rank of the first
match), ``mAP`` (mean average precision over all matches), ``median_rank`` and
``mean_rank`` (1-based rank of the first match). Ties in similarity are broken by
gallery order (stable sort).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from medfm.errors import DataError

KEY_SEPARATORS = ("|", ";")


def _as_set(key: Any) -> frozenset:
    if key is None or (isinstance(key, float) and np.isnan(key)):
        return frozenset()
    if isinstance(key, (list, tuple, set, frozenset, np.ndarray)):
        return frozenset(str(k) for k in key)
    return frozenset([str(key)])


def split_multi(value: Any) -> frozenset:
    """A label cell → set of labels (``"a|b"`` or ``"a;b"`` hold two labels; empty → none)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return frozenset()
    s = str(value).strip()
    for sep in KEY_SEPARATORS[1:]:
        s = s.replace(sep, KEY_SEPARATORS[0])
    return frozenset(p.strip() for p in s.split(KEY_SEPARATORS[0]) if p.strip())


def keys_from_manifest(df: pd.DataFrame, match: str, source: str = "manifest") -> List[frozenset]:
    """Ground-truth keys of each row for ``match`` in ``"id" | "patient" | "label:<col>"``."""
    if match == "id":
        return [frozenset([str(v)]) for v in df["id"]]
    if match == "patient":
        return [frozenset([str(v)]) for v in df["patient_id"]]
    if match.startswith("label:"):
        col = match.split(":", 1)[1]
        if col not in df.columns:
            raise DataError(f"label column {col!r} not in manifest (columns: {list(df.columns)})",
                            source=source, field=col)
        return [split_multi(v) for v in df[col]]
    raise DataError(f"unknown ground truth {match!r}; use 'id', 'patient' or 'label:<column>'",
                    source=source, field="match")


def _multi_hot(keys: Sequence[Any], vocab: Dict[str, int]) -> sparse.csr_matrix:
    rows, cols = [], []
    for i, k in enumerate(keys):
        for v in _as_set(k):
            if v in vocab:
                rows.append(i)
                cols.append(vocab[v])
    data = np.ones(len(rows), dtype=np.float32)
    return sparse.csr_matrix((data, (rows, cols)), shape=(len(keys), len(vocab)))


def ground_truth(query_keys: Sequence[Any], gallery_keys: Sequence[Any]) -> sparse.csr_matrix:
    """Sparse boolean ``(Q, G)`` relevance: query i matches gallery j when their keys intersect."""
    vocab: Dict[str, int] = {}
    for k in list(query_keys) + list(gallery_keys):
        for v in _as_set(k):
            vocab.setdefault(v, len(vocab))
    q = _multi_hot(query_keys, vocab)
    g = _multi_hot(gallery_keys, vocab)
    return ((q @ g.T) > 0).tocsr()


def ranking_stats(sim: np.ndarray, relevant: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-query first-match rank and average precision.

    Args:
        sim: ``(B, G)`` similarities (higher is closer).
        relevant: ``(B, G)`` bool ground truth; every row has at least one True.
    Returns:
        ``{"first_rank": (B,) int, 1-based, "ap": (B,) float}``.
    """
    order = np.argsort(-sim, axis=1, kind="stable")
    rel = np.take_along_axis(relevant, order, axis=1)
    first = rel.argmax(1) + 1
    cum = np.cumsum(rel, axis=1, dtype=np.float64)
    prec = cum / np.arange(1, rel.shape[1] + 1)
    ap = (prec * rel).sum(1) / rel.sum(1)
    return {"first_rank": first, "ap": ap}


def rank_arrays(query: np.ndarray, gallery: np.ndarray, gt: sparse.spmatrix, *,
                block: int = 512, source: str = "gallery") -> Dict[str, np.ndarray]:
    """Per-query first-match rank and AP for the queries that have a match.

    Args:
        query: ``(Q, D)``; gallery: ``(G, D)``; gt: ``(Q, G)`` sparse bool relevance.
    Returns:
        ``{"query_index": (Q',) int, "first_rank": (Q',) int, "ap": (Q',) float,
        "n_no_match": int}`` where Q' counts the queries with at least one match.
    """
    if len(gallery) == 0:
        raise DataError("empty gallery: nothing to retrieve", source=source)
    gt = sparse.csr_matrix(gt)
    has = np.asarray(gt.sum(1)).ravel() > 0
    qidx = np.flatnonzero(has)
    firsts, aps = [np.zeros(0, np.int64)], [np.zeros(0)]
    g = np.asarray(gallery, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    for s in range(0, len(qidx), block):
        idx = qidx[s:s + block]
        st = ranking_stats(q[idx] @ g.T, gt[idx].toarray().astype(bool))
        firsts.append(st["first_rank"])
        aps.append(st["ap"])
    return {"query_index": qidx, "first_rank": np.concatenate(firsts), "ap": np.concatenate(aps),
            "n_no_match": int((~has).sum())}


def recall_chance(n_relevant: np.ndarray, n_gallery: int, k: int) -> float:
    """Expected R@k of a random ranking: mean over queries of ``1 − C(G−r, k) / C(G, k)``.

    Args:
        n_relevant: ``(Q,)`` relevant gallery items per query; n_gallery: ``G``.
    """
    r = np.asarray(n_relevant, dtype=np.int64)
    out = []
    for ri in r:
        if n_gallery - ri < k:
            out.append(1.0)
        else:
            out.append(1.0 - math.exp(math.lgamma(n_gallery - ri + 1) - math.lgamma(n_gallery - ri - k + 1)
                                      - math.lgamma(n_gallery + 1) + math.lgamma(n_gallery - k + 1)))
    return float(np.mean(out)) if out else float("nan")


def metrics_from_ranks(first_rank: np.ndarray, ap: np.ndarray, *, ks: Iterable[int] = (1, 5, 10),
                       prefix: str = "") -> Dict[str, float]:
    """R@k, MRR, mAP, median and mean rank from per-query ``first_rank (Q,)`` and ``ap (Q,)``."""
    first = np.asarray(first_rank)
    nan = float("nan")
    out: Dict[str, float] = {}
    for k in ks:
        out[f"{prefix}R@{k}"] = float(np.mean(first <= k)) if first.size else nan
    out[f"{prefix}MRR"] = float(np.mean(1.0 / first)) if first.size else nan
    out[f"{prefix}mAP"] = float(np.mean(ap)) if first.size else nan
    out[f"{prefix}median_rank"] = float(np.median(first)) if first.size else nan
    out[f"{prefix}mean_rank"] = float(np.mean(first)) if first.size else nan
    return out


def retrieval_metrics(query: np.ndarray, gallery: np.ndarray, gt: sparse.spmatrix, *,
                      ks: Iterable[int] = (1, 5, 10), prefix: str = "",
                      block: int = 512) -> Dict[str, float]:
    """Retrieval metrics of one direction.

    Args:
        query: ``(Q, D)`` embeddings (L2-normalised: inner product = cosine).
        gallery: ``(G, D)`` embeddings.
        gt: ``(Q, G)`` sparse bool relevance (:func:`ground_truth`).
        prefix: prepended to every name, e.g. ``"xray_to_text_"``.
    Returns:
        the metrics plus ``{prefix}n_queries`` and ``{prefix}n_no_match``.
    """
    r = rank_arrays(query, gallery, gt, block=block, source=prefix.rstrip("_") or "gallery")
    out = metrics_from_ranks(r["first_rank"], r["ap"], ks=ks, prefix=prefix)
    out[f"{prefix}n_queries"] = int(r["first_rank"].size)
    out[f"{prefix}n_no_match"] = r["n_no_match"]
    return out


def cross_modal_retrieval(emb_a: np.ndarray, emb_b: np.ndarray, keys_a: Sequence[Any],
                          keys_b: Sequence[Any], name_a: str, name_b: str,
                          ks: Iterable[int] = (1, 5, 10)) -> Dict[str, float]:
    """Both directions, ``{a}_to_{b}_*`` and ``{b}_to_{a}_*``.

    Args:
        emb_a: ``(Na, D)``; emb_b: ``(Nb, D)``; keys_a/keys_b: ground-truth keys per row.
    """
    gt = ground_truth(keys_a, keys_b)
    out = retrieval_metrics(emb_a, emb_b, gt, ks=ks, prefix=f"{name_a}_to_{name_b}_")
    out.update(retrieval_metrics(emb_b, emb_a, gt.T, ks=ks, prefix=f"{name_b}_to_{name_a}_"))
    return out


# ------------------------------------------------------------------- BIOSCAN
def nearest_key(query: np.ndarray, keys: np.ndarray, block: int = 1024) -> np.ndarray:
    """Index of each query's nearest key by inner product: ``(Q, D), (K, D) -> (Q,)``."""
    nearest = np.empty(len(query), dtype=np.int64)
    k = np.asarray(keys, dtype=np.float32)
    for s in range(0, len(query), block):
        nearest[s:s + block] = (np.asarray(query[s:s + block], dtype=np.float32) @ k.T).argmax(1)
    return nearest


def bioscan_accuracy(query: np.ndarray, query_labels: pd.DataFrame, keys: np.ndarray,
                     key_labels: pd.DataFrame, ranks: Sequence[str], *,
                     seen: Optional[np.ndarray] = None, species_rank: Optional[str] = None,
                     train_species: Optional[Iterable[str]] = None) -> Dict[str, float]:
    """BIOSCAN-CLIP protocol: top-1 accuracy per taxonomic rank, seen vs unseen species.

    Each query takes the labels of its nearest key (inner product). Accuracy at a rank
    is micro (over queries, ``accuracy_score``) and macro (mean per-class recall,
    ``balanced_accuracy_score``), reported separately for queries of seen and unseen
    species.

    Args:
        query: ``(Q, D)`` embeddings; query_labels: Q rows with one column per rank.
        keys: ``(K, D)`` key-set embeddings; key_labels: K rows, same columns.
        ranks: the columns, coarse to fine, e.g. ``["order", "family", "genus", "species"]``.
        seen: ``(Q,)`` bool, True where the query's species was seen in training. Default:
            species in ``train_species`` (when given), else species present in the key set.
        species_rank: column holding the species (default: the last of ``ranks``).
    Returns:
        ``{"<split>/<rank>/<micro|macro>": acc, "<split>/n": count}``, split in seen/unseen.
    """
    if len(keys) == 0:
        raise DataError("empty key set: nothing to retrieve", source="keys")
    for r in ranks:
        for name, df in (("query", query_labels), ("key", key_labels)):
            if r not in df.columns:
                raise DataError(f"rank column {r!r} missing from {name} labels", source=name, field=r)
    species_rank = species_rank or ranks[-1]
    if seen is None:
        pool = set(map(str, train_species)) if train_species is not None else set(key_labels[species_rank].astype(str))
        seen = query_labels[species_rank].astype(str).isin(pool).to_numpy()
    seen = np.asarray(seen, dtype=bool)
    nearest = nearest_key(query, keys)
    out: Dict[str, float] = {}
    for split, mask in (("seen", seen), ("unseen", ~seen)):
        out[f"{split}/n"] = int(mask.sum())
        for r in ranks:
            y = query_labels[r].astype(str).to_numpy()[mask]
            p = key_labels[r].astype(str).to_numpy()[nearest[mask]]
            if y.size == 0:
                out[f"{split}/{r}/micro"] = out[f"{split}/{r}/macro"] = float("nan")
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[f"{split}/{r}/micro"] = float(accuracy_score(y, p))
                out[f"{split}/{r}/macro"] = float(balanced_accuracy_score(y, p))
    return out
