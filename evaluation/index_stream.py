"""Indexes for galleries that do not fit in RAM, filled by streaming embedding files.

Two kinds (faiss, inner product on L2-normalised vectors):

``ivfpq``      ``IndexIVFPQ``: a coarse k-means quantizer with ``nlist`` lists and product-quantised
               residuals, ``m`` bytes per vector (+ 8 bytes of id). For ``d = 256`` and ``m = 64``
               that is 72 bytes per vector against 1,024 for the exact flat index. With
               ``refine = r`` (faiss ``IndexRefineFlat``, factory ``...,RFlat``) the ``r·k`` PQ
               candidates are re-ranked with the exact vectors, which stay in the index file and
               are memory-mapped at load (``IO_FLAG_MMAP_IFC``): RAM holds the PQ codes, the disk
               the vectors, and only the candidates' pages are read per query.
``ivf-ondisk`` ``IndexIVFFlat`` whose inverted lists live in ``index.ivfdata`` beside the index
               (faiss ``OnDiskInvertedLists``, memory-mapped): only the quantizer is resident and
               the answers are exact within the probed lists. Filled as one block per chunk and
               merged with ``faiss.contrib.ondisk.merge_ondisk``.

Building reads the embedding files (``medfm embed`` outputs, e.g. the per-rank parts) twice in
chunks and never holds the gallery: pass 1 draws the training sample (k-means, PQ codebooks)
and ``n_queries`` held-out queries; pass 2 adds every chunk and, on the same chunks, runs the
exact search of the queries (``faiss.knn`` + ``faiss.ResultHeap``). The recall@k of the index at
its search settings against that exact search is written into ``index.json``; a query's own
vector is left out of both lists (leave-one-out), so it cannot inflate the number.
"""
from __future__ import annotations

import glob
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from faiss.contrib.ivf_tools import add_preassigned
from faiss.contrib.ondisk import merge_ondisk
from safetensors import safe_open
from tqdm.auto import tqdm

from medfm.errors import ConfigError, DataError

from .index import FORMAT_VERSION, index_checksums

KINDS = ("ivfpq", "ivf-ondisk")


def gallery_files(patterns: Sequence[str]) -> List[Path]:
    """Embedding files named or matched by ``patterns`` (globs), in sorted order per pattern."""
    files: List[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(str(pat))) or ([str(pat)] if Path(str(pat)).is_file() else [])
        if not hits:
            raise DataError("no embeddings file matches", source=str(pat))
        files.extend(Path(h) for h in hits)
    return files


class Gallery:
    """The embedding files as one ``(N, D)`` matrix read in row chunks (never loaded whole)."""

    def __init__(self, files: Sequence[Path]):
        self.files = list(files)
        self.sizes: List[int] = []
        self.meta: Dict[str, Any] = {}
        dims = set()
        for f in self.files:
            try:
                with safe_open(str(f), framework="numpy") as h:
                    meta = h.metadata() or {}
                    shape = h.get_slice("embeddings").get_shape()
            except Exception as e:
                raise DataError(f"not a medfm embeddings file: {e}", source=str(f)) from None
            if meta.get("format") != "medfm-embeddings":
                raise DataError("not a medfm embeddings file (format tag missing)", source=str(f))
            for key in ("model_fingerprint", "modality"):
                if self.meta.get(key, meta.get(key)) != meta.get(key):
                    raise DataError(f"{key} {meta.get(key)!r} differs from the other files' {self.meta[key]!r}",
                                    source=str(f))
            self.meta = {k: meta.get(k) for k in ("model_fingerprint", "modality", "model_dir")}
            self.sizes.append(int(shape[0]))
            dims.add(int(shape[1]))
        if len(dims) != 1:
            raise DataError(f"embedding files of different dimensions {sorted(dims)}", source=str(self.files[0]))
        self.dim = dims.pop()
        self.n = sum(self.sizes)
        if self.n == 0:
            raise DataError("empty gallery: no embeddings to index", source=str(self.files[0]))

    def chunks(self, chunk: int = 262_144) -> Iterator[Tuple[int, np.ndarray, Optional[List[str]]]]:
        """``(first global row, rows (m, D) float32, ids of those rows or None)`` in gallery order."""
        start = 0
        for f, n in zip(self.files, self.sizes):
            with safe_open(str(f), framework="numpy") as h:
                ids = json.loads((h.metadata() or {})["ids"])
                sl = h.get_slice("embeddings")
                for s in range(0, n, chunk):
                    x = np.ascontiguousarray(sl[s:min(n, s + chunk)], dtype=np.float32)
                    yield start + s, x, ids[s:s + len(x)]
            start += n


def plan(n: int, dim: int, kind: str, *, nlist: Optional[int] = None, m: Optional[int] = None,
         nprobe: Optional[int] = None, train_size: Optional[int] = None, refine: int = 0) -> Dict[str, Any]:
    """Parameters of a streamed index: nlist ≈ 4·√n (a power of two), nprobe ≈ nlist/8,
    m = dim/4 sub-quantizers of 8 bits (72 B per 256-d vector with its id: 0.07 of flat)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown streamed index kind {kind!r}; use one of {KINDS}")
    nlist = int(nlist or max(1, min(n // 39, 2 ** round(math.log2(4 * math.sqrt(n))))))
    # default nprobe ≈ nlist/8 (≥ 32, ≤ 512): recall@10 ≈ 0.9 on clustered 256-d galleries in
    # benchmarks/bench_index_stream.py; the recall actually reached is measured and recorded
    p: Dict[str, Any] = {"nlist": nlist, "nprobe": int(nprobe or min(nlist, max(32, min(512, nlist // 8)))),
                         "train_size": int(min(n, train_size or max(50_000, 40 * nlist)))}
    if kind == "ivfpq":
        m = int(m or max(1, dim // 4))
        if dim % m:
            raise ConfigError(f"--pq-m {m} must divide the embedding dimension {dim}")
        p.update(m=m, nbits=8, refine=int(refine or 0))
    return {"kind": kind, "params": p}


def _empty_index(dim: int, spec: Dict[str, Any]) -> "faiss.Index":
    p = spec["params"]
    desc = f"IVF{p['nlist']},PQ{p['m']}x{p['nbits']}" if spec["kind"] == "ivfpq" else f"IVF{p['nlist']},Flat"
    if p.get("refine"):
        desc += ",RFlat"
    index = faiss.index_factory(dim, desc, faiss.METRIC_INNER_PRODUCT)
    if spec["kind"] == "ivfpq":  # the factory turns on polysemous training: minutes of annealing, unused here
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    set_refine(index, p)
    return index


def set_refine(index: "faiss.Index", params: Dict[str, Any]) -> None:
    """The re-ranking depth ``k_factor`` of an ``IndexRefineFlat`` (no-op for other indexes)."""
    if params.get("refine"):
        faiss.downcast_index(index).k_factor = float(params["refine"])


def exact_topk(queries: np.ndarray, x: np.ndarray, k: int, block: int = 65_536) -> Tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` of ``queries (q, D)`` among the rows of ``x (m, D)``: ``(D, I)`` of shape
    ``(q, min(k, m))``, best first. torch GEMM in row blocks (faiss's ``knn`` runs its own BLAS, several
    times slower on small CPUs); memory ``q × block`` floats."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    k = min(int(k), len(x))
    best_d = torch.full((len(q), k), -float("inf"))
    best_i = torch.full((len(q), k), -1, dtype=torch.int64)
    for s in range(0, len(x), block):
        sc = q @ torch.from_numpy(x[s:s + block]).T
        d, i = torch.topk(sc, min(k, sc.shape[1]), dim=1)
        d, j = torch.topk(torch.cat([best_d, d], 1), k, dim=1)
        best_i = torch.gather(torch.cat([best_i, i + s], 1), 1, j)
        best_d = d
    return best_d.numpy(), best_i.numpy()


def assign_lists(centroids: np.ndarray, x: np.ndarray, block: int = 65_536) -> np.ndarray:
    """Coarse assignment ``(m,)`` int64: the inverted list (max inner product with ``centroids (nlist, D)``)
    of each row of ``x (m, D)``, as faiss's flat IP quantizer gives it, computed with torch GEMM."""
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
    out = np.empty(len(x), np.int64)
    for s in range(0, len(x), block):
        out[s:s + block] = torch.argmax(torch.from_numpy(x[s:s + block]) @ c.T, dim=1).numpy()
    return out


def _recall(found: np.ndarray, truth: np.ndarray, own: np.ndarray, k: int) -> float:
    hits = 0
    for f, t, q in zip(found, truth, own):
        f = [x for x in f if x != q and x >= 0][:k]
        t = [x for x in t if x != q][:k]
        hits += len(set(f) & set(t))
    return hits / (k * len(truth))


def resident_bytes(index: "faiss.Index", kind: str) -> int:
    """RAM the filled index needs: codes + ids of the lists (not for on-disk lists), quantizer, codebooks.

    The exact vectors of a refined index are memory-mapped from disk, not counted."""
    ivf = faiss.extract_index_ivf(index)
    total = ivf.quantizer.ntotal * ivf.d * 4
    if kind == "ivfpq":
        pq = faiss.downcast_index(ivf).pq
        total += pq.M * pq.ksub * pq.dsub * 4
    if kind != "ivf-ondisk":
        inv = ivf.invlists
        total += sum(inv.list_size(i) for i in range(ivf.nlist)) * (ivf.code_size + 8)
    return int(total)


def build_streaming(patterns: Sequence[str], out: Any, *, kind: str = "ivfpq", nlist: Optional[int] = None,
                    m: Optional[int] = None, nprobe: Optional[int] = None, train_size: Optional[int] = None,
                    refine: int = 0, n_queries: int = 1000, k: int = 10, seed: int = 0, chunk: int = 262_144,
                    progress: bool = True) -> Dict[str, Any]:
    """Build ``out/`` (``index.faiss`` [+ ``index.ivfdata``], ``index.json``, ``metadata.parquet``).

    Returns the ``index.json`` content, with ``recall`` = {"k", "at": {"nprobe"}, "recall_at_k",
    "n_queries"} measured against exact search at build time.
    """
    t0 = time.perf_counter()
    gal = Gallery(gallery_files(patterns))
    if not gal.meta.get("model_fingerprint"):
        raise DataError("the embeddings record no model fingerprint (an index must name the model that made "
                        "it): embed with `medfm embed --model DIR`", source=str(gal.files[0]))
    spec = plan(gal.n, gal.dim, kind, nlist=nlist, m=m, nprobe=nprobe, train_size=train_size, refine=refine)
    p = spec["params"]
    rng = np.random.default_rng(seed)
    n_queries = int(min(n_queries, max(1, gal.n // 10)))
    p["train_size"] = min(p["train_size"], gal.n - n_queries)
    pick = rng.choice(gal.n, p["train_size"] + n_queries, replace=False)
    train_pos, query_pos = np.sort(pick[:p["train_size"]]), np.sort(pick[p["train_size"]:])
    # pass 1: the training sample and the held-out queries
    train = np.empty((len(train_pos), gal.dim), np.float32)
    queries = np.empty((len(query_pos), gal.dim), np.float32)
    for s, x, _ in gal.chunks(chunk):
        for pos, dest in ((train_pos, train), (query_pos, queries)):
            a, b = np.searchsorted(pos, [s, s + len(x)])
            dest[a:b] = x[pos[a:b] - s]
    index = _empty_index(gal.dim, spec)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    index.train(train)
    del train
    t_train = time.perf_counter() - t0
    # pass 2: fill (one block per chunk for on-disk lists) + exact search of the queries on the same chunks
    d = Path(str(out))
    d.mkdir(parents=True, exist_ok=True)
    heap = faiss.ResultHeap(len(queries), k + 1, keep_max=True)
    writer = pq.ParquetWriter(str(d / "metadata.parquet"), pa.schema([("id", pa.string())]))
    blocks: List[str] = []
    bar = tqdm(total=gal.n, desc=f"index {kind}", unit="vec", disable=not progress)
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    for s, x, ids in gal.chunks(chunk):
        D, I = exact_topk(queries, x, k + 1)
        if D.shape[1] < k + 1:  # a short chunk: pad so the heap sees k+1 columns
            D = np.pad(D, ((0, 0), (0, k + 1 - D.shape[1])), constant_values=-np.inf)
            I = np.pad(I, ((0, 0), (0, k + 1 - I.shape[1])), constant_values=-1 - s)
        heap.add_result(D, I + s)
        gid = np.arange(s, s + len(x), dtype=np.int64)
        if kind == "ivf-ondisk":
            block = faiss.clone_index(index)
            add_preassigned(block, x, assign_lists(centroids, x), gid)
            blocks.append(str(d / f".block{len(blocks):05d}.index"))
            faiss.write_index(block, blocks[-1])
            del block
        elif p.get("refine"):  # IndexRefineFlat: PQ codes in the IVF base, exact rows in its flat store
            add_preassigned(ivf, x, assign_lists(centroids, x))
            refined = faiss.downcast_index(index)
            refined.refine_index.add(x)
            refined.ntotal = ivf.ntotal
        else:
            add_preassigned(ivf, x, assign_lists(centroids, x))  # ids = gallery positions
        writer.write_table(pa.table({"id": pa.array(ids, pa.string())}))
        bar.update(len(x))
    bar.close()
    writer.close()
    heap.finalize()
    if kind == "ivf-ondisk":
        ivfdata = d / "index.ivfdata"
        if ivfdata.exists():
            ivfdata.unlink()
        merge_ondisk(index, blocks, str(ivfdata))
        for b in blocks:
            os.remove(b)
    faiss.write_index(index, str(d / "index.faiss"))
    t_build = time.perf_counter() - t0
    ivf.nprobe = p["nprobe"]
    found = index.search(queries, k + 1)[1]
    rec = _recall(found, heap.I, query_pos, k)
    disk = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
    info = {"format": FORMAT_VERSION, "kind": kind, "params": p, "dim": gal.dim, "n": gal.n,
            "metric": "inner_product", "model_fingerprint": gal.meta.get("model_fingerprint"),
            "model_dir": gal.meta.get("model_dir"), "modality": gal.meta.get("modality"), "metadata_columns": [],
            "sources": [str(f) for f in gal.files],
            "recall": {"k": k, "recall_at_k": round(rec, 4), "n_queries": len(queries), "at": {"nprobe": p["nprobe"]},
                       "against": "exact inner-product search over the whole gallery, held-out queries drawn from "
                                  "it, each query's own vector left out"},
            "memory_bytes": resident_bytes(index, kind), "flat_memory_bytes": gal.n * gal.dim * 4,
            "disk_bytes": disk, "build_seconds": round(t_build, 2), "train_seconds": round(t_train, 2)}
    info["files_sha256"] = index_checksums(d)  # verified by VectorIndex.load
    (d / "index.json").write_text(json.dumps(info, indent=2))
    return info


def recall_sweep(index: "faiss.Index", queries: np.ndarray, truth: np.ndarray, own: np.ndarray,
                 nprobes: Sequence[int], k: int = 10) -> List[Dict[str, float]]:
    """recall@k and queries/s at several ``nprobe`` (for benchmarks)."""
    ivf = faiss.extract_index_ivf(index)
    rows = []
    for npb in nprobes:
        ivf.nprobe = int(npb)
        t = time.perf_counter()
        found = index.search(queries, k + 1)[1]
        dt = time.perf_counter() - t
        rows.append({"nprobe": int(npb), "recall": _recall(found, truth, own, k), "qps": len(queries) / dt})
    return rows
