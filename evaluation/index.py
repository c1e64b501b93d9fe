"""A persistent faiss vector index that remembers which model made it.

On disk (one directory)::

    index.faiss     faiss.write_index of the index (inner product on L2-normalised vectors)
    index.json      {"format": 1, "kind", "params", "dim", "n", "metric": "inner_product",
                     "model_fingerprint", "model_dir", "modality", "metadata_columns",
                     "files_sha256": {file name: sha256 of index.faiss, metadata.parquet[, index.ivfdata]}}
    metadata.parquet  one row per vector, in index order: "id" plus non-PHI label columns, and two
                      hidden columns for self-exclusion in search: "_patient" (the manifest's salted
                      patient id) and "_sample" (:func:`sample_key` of the cell: a hash, not a path)

The kind is chosen by gallery size (:func:`choose_index`): exact ``IndexFlatIP`` up
to ``flat_max`` vectors (50k), ``IndexIVFFlat`` (inner product) above; ``hnsw``
(``IndexHNSWFlat``, inner product) can be asked for explicitly. Searching with a model whose
:func:`model_fingerprint` differs from the recorded one is refused.

Integrity: an index is saved only with a model fingerprint, and :meth:`VectorIndex.load` checks
every file against the sha256 recorded at build (a changed byte is an error naming the file,
before faiss reads it). An index without checksums or without a fingerprint (made by an older
medfm) is refused with the command that rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import faiss
import numpy as np
import pandas as pd

from medfm.errors import CheckpointError, ConfigError, DataError
from medfm.io import hash_file
from medfm.checkpoint import CONFIG_NAME, WEIGHTS_NAME, weight_files

FORMAT_VERSION = 1
FINGERPRINT_FILES = (CONFIG_NAME, WEIGHTS_NAME)
#: the files of an index directory whose sha256 ``index.json`` records (those present)
INDEX_FILES = ("index.faiss", "index.ivfdata", "metadata.parquet")
REBUILD = "rebuild it with `medfm index build` (or `medfm index build --streaming`)"


def index_checksums(directory: Any) -> Dict[str, str]:
    """``{file name: sha256 hex}`` of the :data:`INDEX_FILES` present in an index directory."""
    d = Path(str(directory))
    return {name: hash_file(d / name).hexdigest() for name in INDEX_FILES if (d / name).is_file()}


def verify_index_files(directory: Any, info: Dict[str, Any]) -> None:
    """Refuse (:class:`CheckpointError`, naming the file) an index directory whose files differ from the
    checksums recorded at build, or that records no checksums or no model fingerprint."""
    d = Path(str(directory))
    recorded = info.get("files_sha256")
    if not isinstance(recorded, dict) or "index.faiss" not in recorded:
        raise CheckpointError(f"{d / 'index.json'}: records no file checksums (made by an older medfm), so "
                              f"its files cannot be verified; {REBUILD}")
    if not info.get("model_fingerprint"):
        raise CheckpointError(f"{d / 'index.json'}: records no model fingerprint, so no query model can be "
                              f"checked against it; {REBUILD} from embeddings of a saved model")
    for name, want in sorted(recorded.items()):
        path = d / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (index.json records it)")
        got = hash_file(path).hexdigest()
        if got != want:
            raise CheckpointError(f"{path}: checksum mismatch (sha256 {got[:16]}…, recorded {want[:16]}…): the "
                                  f"file changed after the index was built; {REBUILD}")


#: metadata columns used by search itself, not shown as metadata
HIDDEN_COLUMNS = ("_patient", "_sample")


def sample_key(value: Any, base_dir: Any) -> Optional[str]:
    """Identity of a sample's file cell: sha256 of its real path (and ``#RECORD``), or None.

    ``value`` is a manifest cell or a query argument (``FILE``, ``FILE#RECORD``); relative paths
    resolve against ``base_dir`` (the manifest's folder for cells, the working directory for a
    query), symlinks are followed, so the same file gives the same key from either side. Inline
    values (a sequence, a report) have no file identity: None.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    path, sep, record = value.partition("#")
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(str(base_dir)) / p
    try:
        if not p.exists():
            return None
    except OSError:  # a long inline value is not a path
        return None
    ref = os.path.realpath(p) + (f"#{record}" if sep else "")
    return hashlib.sha256(ref.encode("utf-8")).hexdigest()[:32]


def model_fingerprint(model_dir: Any) -> str:
    """sha256 over a model directory's ``config.json`` and its weight files (hex, 64 chars).

    A base checkpoint is ``config.json`` + ``model.safetensors``; a fine-tuned one is
    ``config.json`` (which records the base's hash) + its adapter/head files.
    """

    d = Path(str(model_dir))
    config = d / FINGERPRINT_FILES[0]
    if not config.is_file():
        raise CheckpointError(f"{config}: missing; not a medfm model directory")
    files = [config] + weight_files(d)
    if len(files) == 1:
        raise CheckpointError(f"{d}: no weight files; not a medfm model directory")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        hash_file(p, h)
    return h.hexdigest()


def choose_index(n: int, dim: int, *, kind: str = "auto", flat_max: int = 50_000) -> Dict[str, Any]:
    """The index kind and parameters for ``n`` vectors of ``dim`` dimensions.

    ``auto``: exact ``flat`` up to ``flat_max`` vectors, ``ivf`` above.
    ``ivf``: nlist ≈ 4·√n, nprobe = max(16, nlist/250), k-means on ≤ max(50k, 40·nlist) vectors.
    On clustered 512-d data (``benchmarks/bench_index.py``, 2 cores) nprobe 8 already gave
    recall@10 = 1.000 at 74× the exact queries/s for 1M vectors; on data without cluster
    structure IVF needs a larger nprobe — use ``hnsw`` there.
    ``hnsw``: M=32, efConstruction=80, efSearch=128 (recall@10 0.99-1.00 at 100k in the
    benchmark, but ~10× slower to build than IVF on 2 cores).
    """
    if kind == "auto":
        kind = "flat" if n <= flat_max else "ivf"
    if kind == "flat":
        return {"kind": "flat", "params": {}}
    if kind == "hnsw":
        return {"kind": "hnsw", "params": {"M": 32, "efConstruction": 80, "efSearch": 128}}
    if kind == "ivf":
        nlist = int(max(1, min(n // 39, 4 * round(math.sqrt(n)))))
        return {"kind": "ivf", "params": {"nlist": nlist, "nprobe": int(min(nlist, max(16, nlist // 250)))}}
    raise ConfigError(f"unknown index kind {kind!r}; use auto, flat, hnsw or ivf")


def build_faiss(emb: np.ndarray, spec: Dict[str, Any], *, seed: int = 0) -> "faiss.Index":
    """Build and fill the faiss index described by ``spec`` from ``emb (N, D)`` float32."""
    x = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = x.shape
    kind, p = spec["kind"], spec.get("params", {})
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(p.get("M", 32)), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(p.get("efConstruction", 80))
        index.hnsw.efSearch = int(p.get("efSearch", 128))
    elif kind == "ivf":
        quant = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quant, d, int(p["nlist"]), faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = int(p.get("niter", 10))
        train = x
        max_train = int(p.get("max_train", max(50_000, 40 * int(p["nlist"]))))
        if n > max_train:
            train = x[np.random.default_rng(seed).choice(n, max_train, replace=False)]
        index.train(train)
        index.nprobe = int(p.get("nprobe", 8))
    else:
        raise ConfigError(f"unknown index kind {kind!r}")
    index.add(x)
    return index


def set_search_params(index: "faiss.Index", spec: Dict[str, Any]) -> None:
    """Restore search-time parameters (efSearch, nprobe) after :func:`faiss.read_index`."""
    p = spec.get("params", {})
    if spec["kind"] == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = int(p.get("efSearch", 128))
    elif spec["kind"] in ("ivf", "ivfpq", "ivf-ondisk"):
        faiss.extract_index_ivf(index).nprobe = int(p.get("nprobe", 8))
        if p.get("refine"):
            faiss.downcast_index(index).k_factor = float(p["refine"])


class VectorIndex:
    """Vectors + ids + metadata + the identity of the model that embedded them.

    Args:
        index: a filled faiss index.
        metadata: DataFrame, one row per vector in index order, with an ``id`` column.
        info: the ``index.json`` content.
    """

    def __init__(self, index: "faiss.Index", metadata: pd.DataFrame, info: Dict[str, Any]):
        self.index = index
        self.metadata = metadata.reset_index(drop=True)
        self.info = info

    @classmethod
    def build(cls, emb: np.ndarray, ids: Sequence[str], *, metadata: Optional[pd.DataFrame] = None,
              model_fingerprint: Optional[str] = None, model_dir: Optional[str] = None,
              modality: Optional[str] = None, kind: str = "auto", flat_max: int = 50_000,
              spec: Optional[Dict[str, Any]] = None, patients: Optional[Sequence[Any]] = None,
              sample_keys: Optional[Sequence[Optional[str]]] = None) -> "VectorIndex":
        """Build from ``emb (N, D)``; ``metadata`` (N rows, non-PHI columns) is stored beside.

        ``patients`` (N salted patient ids) and ``sample_keys`` (N :func:`sample_key` values) let
        :meth:`search_records` leave out the query's own sample and patient.
        """
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim != 2 or len(emb) == 0:
            raise DataError("empty gallery: no embeddings to index", source=modality or "gallery")
        if len(ids) != len(emb):
            raise DataError(f"{len(ids)} ids for {len(emb)} embeddings", source=modality or "gallery")
        spec = spec or choose_index(len(emb), emb.shape[1], kind=kind, flat_max=flat_max)
        index = build_faiss(emb, spec)
        meta = pd.DataFrame({"id": [str(i) for i in ids]})
        if metadata is not None:
            extra = metadata.reset_index(drop=True).drop(columns=["id"], errors="ignore")
            meta = pd.concat([meta, extra.astype(str).where(extra.notna(), None)], axis=1)
        for name, values in zip(HIDDEN_COLUMNS, (patients, sample_keys)):
            if values is not None:
                if len(values) != len(emb):
                    raise DataError(f"{len(values)} {name[1:]} keys for {len(emb)} embeddings",
                                    source=modality or "gallery")
                meta[name] = [None if v is None else str(v) for v in values]
        info = {"format": FORMAT_VERSION, "kind": spec["kind"], "params": spec.get("params", {}),
                "dim": int(emb.shape[1]), "n": int(len(emb)), "metric": "inner_product",
                "model_fingerprint": model_fingerprint, "model_dir": model_dir, "modality": modality,
                "metadata_columns": [c for c in meta.columns if c != "id" and c not in HIDDEN_COLUMNS]}
        return cls(index, meta, info)

    # ------------------------------------------------------------------ disk
    def save(self, directory: Any) -> Path:
        """Write the directory; ``index.json`` last, with the files' checksums. Needs a model fingerprint."""
        if not self.info.get("model_fingerprint"):
            raise ConfigError("an index is saved only with the fingerprint of the model that embedded it "
                              "(VectorIndex.build(..., model_fingerprint=model_fingerprint(model_dir)))")
        d = Path(str(directory))
        d.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(d / "index.faiss"))
        self.metadata.to_parquet(d / "metadata.parquet", index=False)
        self.info["files_sha256"] = index_checksums(d)
        (d / "index.json").write_text(json.dumps(self.info, indent=2))
        return d

    @classmethod
    def load(cls, directory: Any) -> "VectorIndex":
        d = Path(str(directory))
        for name in ("index.json", "index.faiss", "metadata.parquet"):
            if not (d / name).is_file():
                raise CheckpointError(f"{d / name}: missing; not a medfm index directory")
        info = json.loads((d / "index.json").read_text())
        if info.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{d}: index format {info.get('format')!r} not supported")
        verify_index_files(d, info)  # before faiss reads a byte of it
        # on-disk inverted lists (evaluation.index_stream) live in index.ivfdata beside index.faiss
        # and a refined IVF-PQ's exact vectors are memory-mapped, not read into RAM
        flags = (faiss.IO_FLAG_ONDISK_SAME_DIR if info.get("kind") == "ivf-ondisk"
                 else faiss.IO_FLAG_MMAP_IFC if info.get("params", {}).get("refine") else 0)
        index = faiss.read_index(str(d / "index.faiss"), flags)
        set_search_params(index, info)
        meta = pd.read_parquet(d / "metadata.parquet")
        if len(meta) != index.ntotal:
            raise CheckpointError(f"{d}: {len(meta)} metadata rows for {index.ntotal} vectors")
        return cls(index, meta, info)

    # ---------------------------------------------------------------- search
    def check_model(self, fingerprint: str, model_dir: Any = None) -> None:
        """Refuse a model other than the one that built the index (:class:`CheckpointError`)."""
        mine = self.info.get("model_fingerprint")
        if not mine:
            raise CheckpointError("the index records no model fingerprint, so the query model cannot be checked; "
                                  f"{REBUILD} from embeddings of a saved model")
        if fingerprint != mine:
            raise CheckpointError(
                f"index was built by model {mine[:16]}… ({self.info.get('model_dir')}) but the query "
                f"model {model_dir or ''} has fingerprint {fingerprint[:16]}…; rebuild the index with this model"
            )

    def search(self, queries: np.ndarray, k: int = 10):
        """``queries (Q, D)`` → ``scores (Q, k')``, ``positions (Q, k')`` with k' = min(k, n)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.info["dim"]:
            raise DataError(f"query has dimension {q.shape[1]}, index has {self.info['dim']}", source="query")
        k = min(int(k), self.index.ntotal)
        scores, pos = self.index.search(q, k)
        return scores, pos

    def self_positions(self, query_sample_key: Optional[str]) -> Dict[str, List[int]]:
        """Index positions of the query's own sample and of the other samples of its patient.

        Returns ``{"sample": [...], "patient": [...]}`` (both empty when the query's file is not
        in the index, or the index was built without the hidden columns).
        """
        meta = self.metadata
        if query_sample_key is None or "_sample" not in meta.columns:
            return {"sample": [], "patient": []}
        own = np.flatnonzero(meta["_sample"].to_numpy() == query_sample_key)
        patient: List[int] = []
        if len(own) and "_patient" in meta.columns:
            pids = set(meta["_patient"].iloc[own].dropna())
            patient = [int(i) for i in np.flatnonzero(meta["_patient"].isin(pids).to_numpy()) if i not in set(own)]
        return {"sample": [int(i) for i in own], "patient": patient}

    def search_records(self, queries: np.ndarray, k: int = 10,
                       exclude: Sequence[int] = ()) -> List[List[Dict[str, Any]]]:
        """Like :meth:`search` but returns, per query, ``[{"rank", "id", "score", **metadata}]``.

        ``exclude``: index positions left out of every query's hits (ranks count the rest).
        """
        drop = {int(e) for e in exclude}
        scores, pos = self.search(queries, k + len(drop))
        shown = [c for c in self.metadata.columns if c not in HIDDEN_COLUMNS]
        out = []
        for srow, prow in zip(scores, pos):
            hits = []
            for s, p in zip(srow, prow):
                if p < 0 or int(p) in drop or len(hits) == k:
                    continue
                rec = {"rank": len(hits) + 1, "score": float(s)}
                row = self.metadata.iloc[int(p)]
                rec.update({k2: (None if v is None or (isinstance(v, float) and np.isnan(v)) else v)
                            for k2, v in row[shown].items()})
                hits.append(rec)
            out.append(hits)
        return out

    def __len__(self) -> int:
        return int(self.index.ntotal)
