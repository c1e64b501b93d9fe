"""Streamed out-of-core indexes (IVF-PQ, on-disk IVF): build time, size, queries/s, recall@10.

Run by hand (not part of pytest; heavy)::

    python benchmarks/bench_index_stream.py [--n 1000000] [--dim 256] [--files 4]

Gallery: ``--n`` L2-normalised clustered vectors (the generator of ``bench_index.py``: 1,000
centres, a 32-d latent, small noise) written as ``--files`` medfm embedding files, then indexed
with ``medfm.evaluation.index_stream.build_streaming`` (pass 1 samples the training set, pass 2
streams the files in chunks). Queries: 1,000 gallery vectors; recall@10 against exact
inner-product search over the whole gallery (streamed ``faiss.knn``, which is also the
exact-search baseline of queries/s), each query's own vector left out. One thread.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import clustered  # noqa: E402

from medfm.evaluation.embed import Embeddings, save_embeddings  # noqa: E402
from medfm.demo.machine import gemm_gflops  # noqa: E402
from medfm.evaluation.index import VectorIndex  # noqa: E402
from medfm.evaluation.index_stream import Gallery, build_streaming, recall_sweep  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--nlist", type=int, default=2048)
    ap.add_argument("--train-size", type=int, default=65_536)
    ap.add_argument("--nprobes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--only-refined", action="store_true", help="only the m=64 re-ranked IVF-PQ")
    args = ap.parse_args(argv)
    faiss.omp_set_num_threads(1)
    print(f"fp32 GEMM (1024², torch, 1 thread): {gemm_gflops(1024, threads=1):.1f} GFLOP/s")
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((1000, args.dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    basis = rng.standard_normal((32, args.dim), dtype=np.float32) / np.sqrt(args.dim)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        per = -(-args.n // args.files)
        for f in range(args.files):
            m = min(per, args.n - f * per)
            x = clustered(m, args.dim, rng, centers, basis)
            save_embeddings(tmp / f"emb.rank{f:05d}-of-{args.files:05d}.safetensors",
                            Embeddings([f"v{f * per + i}" for i in range(m)], x), modality="synthetic")
            del x
        gal = Gallery(sorted(tmp.glob("emb.*.safetensors")))
        qpos = np.sort(np.random.default_rng(1).choice(gal.n, args.queries, replace=False))
        queries = np.empty((len(qpos), gal.dim), np.float32)
        heap = faiss.ResultHeap(len(qpos), 11, keep_max=True)
        chunks = list(gal.chunks())
        for s, x, _ in chunks:
            a, b = np.searchsorted(qpos, [s, s + len(x)])
            queries[a:b] = x[qpos[a:b] - s]
        t = time.perf_counter()
        for s, x, _ in chunks:
            D, I = faiss.knn(queries, x, 11, metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(D, I + s)
        t_exact = time.perf_counter() - t
        heap.finalize()
        del chunks
        flat_mib = gal.n * gal.dim * 4 / 2**20
        print(f"\ngallery {gal.n:,} × {gal.dim} in {args.files} files; exact search (flat, streamed): "
              f"{len(qpos) / t_exact:.1f} queries/s, {flat_mib:.0f} MiB as a flat index")
        print(f"{'index':<22} {'build s':>8} {'disk MiB':>9} {'RAM MiB':>8} {'RAM/flat':>9} {'nprobe':>7} "
              f"{'queries/s':>10} {'x exact':>8} {'recall@10':>10}")
        configs = [("ivfpq", {"m": 32}), ("ivfpq", {"m": 32, "refine": 10}), ("ivfpq", {"m": 64, "refine": 10}),
                   ("ivf-ondisk", {})]
        if args.only_refined:
            configs = [("ivfpq", {"m": 64, "refine": 10})]
        for kind, extra in configs:
            out = tmp / f"{kind}-{extra.get('m', '')}-{extra.get('refine', 0)}"
            info = build_streaming([str(f) for f in gal.files], out, kind=kind, nlist=args.nlist,
                                   train_size=args.train_size, progress=False, **extra)
            idx = VectorIndex.load(out)
            rows = recall_sweep(idx.index, queries, heap.I, qpos, args.nprobes)
            name = f"{kind}" + (f" m={extra['m']}" if extra else "") + (" +refine10" if extra.get("refine") else "")
            for i, r in enumerate(rows):
                lead = (f"{name:<22} {info['build_seconds']:>8.1f} {info['disk_bytes'] / 2**20:>9.1f} "
                        f"{info['memory_bytes'] / 2**20:>8.1f} {info['memory_bytes'] / 2**20 / flat_mib:>9.3f}"
                        if i == 0 else " " * 59)
                print(f"{lead} {r['nprobe']:>7} {r['qps']:>10.1f} {r['qps'] * t_exact / len(qpos):>8.1f} "
                      f"{r['recall']:>10.3f}")
            print(f"{'':<22} recorded at build: {json.dumps(info['recall']['recall_at_k'])} "
                  f"(nprobe {info['params']['nprobe']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
