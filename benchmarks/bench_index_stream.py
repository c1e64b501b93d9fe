"""Streamed out-of-core indexes (IVF-PQ, on-disk IVF): build time, size, queries/s, recall@10.

Run by hand (not part of pytest; heavy)::

    python benchmarks/bench_index_stream.py [--n 1000000] [--dim 256] [--file-rows 500000]
    # the 10M x 256 gallery of issue 14 (10 GB of embedding files, never in RAM at once):
    nice -n 10 python benchmarks/bench_index_stream.py --n 10000000 --threads 2 --nlist 4096 \
        --configs ivfpq:m=32 ivfpq:m=64 ivf-ondisk --gallery /tmp/gal10m --json out.json

Gallery: ``--n`` L2-normalised clustered vectors (the generator of ``bench_index.py``: 1,000
centres, a 32-d latent, small noise), generated from a seed one file of ``--file-rows`` rows at a
time and written as medfm embedding files (``--gallery DIR`` keeps them for a rerun; an existing
complete gallery there is reused). Indexed with ``medfm.evaluation.index_stream.build_streaming``
(pass 1 samples the training set, pass 2 streams the files in chunks). Queries: 1,000 gallery
vectors; recall@10 against exact inner-product search over the whole gallery (torch GEMM top-k streamed
over the chunks into a ``faiss.ResultHeap``, which is also the exact-search baseline of queries/s),
each query's own vector left out. Peak RSS is printed; it stays near one file plus the index codes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import cluster_model, clustered  # noqa: E402

from medfm.demo.machine import gemm_gflops  # noqa: E402
from medfm.evaluation.embed import Embeddings, save_embeddings  # noqa: E402
from medfm.evaluation.index import VectorIndex  # noqa: E402
from medfm.evaluation.index_stream import Gallery, build_streaming, exact_topk, recall_sweep  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_config(text: str):
    """``ivfpq:m=64,refine=10`` -> ("ivfpq", {"m": 64, "refine": 10})."""
    kind, _, rest = text.partition(":")
    extra = {k: int(v) for k, v in (kv.split("=") for kv in rest.split(",") if kv)}
    return kind, extra


def write_gallery(d: Path, n: int, dim: int, file_rows: int, seed: int = 0) -> Gallery:
    """Write (or reuse) ``ceil(n / file_rows)`` embedding files; one file's rows in RAM at a time."""
    files = -(-n // file_rows)
    names = [d / f"emb.rank{f:05d}-of-{files:05d}.safetensors" for f in range(files)]
    done = d / "COMPLETE.json"
    want = {"n": n, "dim": dim, "file_rows": file_rows, "seed": seed, "generator": "bench_index.cluster_model"}
    if done.exists() and json.loads(done.read_text()) == want and all(p.exists() for p in names):
        print(f"reusing the gallery in {d}", flush=True)
        return Gallery(names)
    rng = np.random.default_rng(seed)
    centers, basis = cluster_model(dim, rng)  # bench_index.py's generator, as the docstring says
    t = time.perf_counter()
    for f, p in enumerate(names):
        m = min(file_rows, n - f * file_rows)
        x = clustered(m, dim, rng, centers, basis)
        save_embeddings(p, Embeddings([f"v{f * file_rows + i}" for i in range(m)], x), modality="synthetic")
        del x
    done.write_text(json.dumps(want))
    print(f"wrote {n:,} x {dim} in {files} files in {time.perf_counter() - t:.0f} s", flush=True)
    return Gallery(names)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--file-rows", type=int, default=500_000, help="rows per embedding file")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--nlist", type=int, default=2048)
    ap.add_argument("--train-size", type=int, default=65_536)
    ap.add_argument("--nprobes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--configs", nargs="+", default=["ivfpq:m=32", "ivfpq:m=32,refine=10",
                                                      "ivfpq:m=64,refine=10", "ivf-ondisk"],
                    help="KIND[:m=M,refine=R] ... (refine keeps the exact vectors in RAM while building)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gallery", default=None, help="directory for the gallery files (kept); default: a temp dir")
    ap.add_argument("--json", default=None, help="write the table rows here as JSON")
    args = ap.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    gemm = gemm_gflops(1024, threads=args.threads)
    print(f"fp32 GEMM (1024², torch, {args.threads} thread(s)): {gemm:.1f} GFLOP/s", flush=True)
    tmp_ctx = tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP"))
    tmp = Path(tmp_ctx.name)
    gdir = Path(args.gallery) if args.gallery else tmp / "gallery"
    gdir.mkdir(parents=True, exist_ok=True)
    gal = write_gallery(gdir, args.n, args.dim, args.file_rows)
    qpos = np.sort(np.random.default_rng(1).choice(gal.n, args.queries, replace=False))
    queries = np.empty((len(qpos), gal.dim), np.float32)
    heap = faiss.ResultHeap(len(qpos), 11, keep_max=True)
    t_exact = 0.0
    for s, x, _ in gal.chunks():  # pass A: collect the queries
        a, b = np.searchsorted(qpos, [s, s + len(x)])
        queries[a:b] = x[qpos[a:b] - s]
    for s, x, _ in gal.chunks():  # pass B: exact search streamed (the compute is timed, not the reads)
        t = time.perf_counter()
        D, I = exact_topk(queries, x, 11)
        heap.add_result(D, I + s)
        t_exact += time.perf_counter() - t
    heap.finalize()
    flat_mib = gal.n * gal.dim * 4 / 2**20
    exact_qps = len(qpos) / t_exact
    print(f"\ngallery {gal.n:,} × {gal.dim} in {len(gal.files)} files; exact search (flat, streamed): "
          f"{exact_qps:.2f} queries/s, {flat_mib:.0f} MiB as a flat index; peak RSS {peak_rss_mib():.0f} MiB",
          flush=True)
    print(f"{'index':<22} {'build s':>8} {'disk MiB':>9} {'RAM MiB':>8} {'RAM/flat':>9} {'nprobe':>7} "
          f"{'queries/s':>10} {'x exact':>8} {'recall@10':>10}", flush=True)
    results = {"n": gal.n, "dim": gal.dim, "nlist": args.nlist, "gemm_gflops": gemm, "threads": args.threads,
               "exact_qps": exact_qps, "flat_mib": flat_mib, "rows": []}
    for kind, extra in map(parse_config, args.configs):
        out = tmp / f"{kind}-{extra.get('m', '')}-{extra.get('refine', 0)}"
        info = build_streaming([str(f) for f in gal.files], out, kind=kind, nlist=args.nlist,
                               train_size=args.train_size, progress=False, **extra)
        idx = VectorIndex.load(out)
        rows = recall_sweep(idx.index, queries, heap.I, qpos, args.nprobes)
        name = f"{kind}" + (f" m={extra['m']}" if "m" in extra else "") + (
            f" +refine{extra['refine']}" if extra.get("refine") else "")
        for i, r in enumerate(rows):
            lead = (f"{name:<22} {info['build_seconds']:>8.1f} {info['disk_bytes'] / 2**20:>9.1f} "
                    f"{info['memory_bytes'] / 2**20:>8.1f} {info['memory_bytes'] / 2**20 / flat_mib:>9.3f}"
                    if i == 0 else " " * 59)
            print(f"{lead} {r['nprobe']:>7} {r['qps']:>10.1f} {r['qps'] / exact_qps:>8.1f} "
                  f"{r['recall']:>10.3f}", flush=True)
        print(f"{'':<22} train {info['train_seconds']:.1f} s; recorded at build: "
              f"{json.dumps(info['recall']['recall_at_k'])} (nprobe {info['params']['nprobe']}); "
              f"peak RSS so far {peak_rss_mib():.0f} MiB", flush=True)
        results["rows"].append({"index": name, "build_s": info["build_seconds"], "train_s": info["train_seconds"],
                                "disk_mib": info["disk_bytes"] / 2**20, "ram_mib": info["memory_bytes"] / 2**20,
                                "sweep": rows, "recorded_recall": info["recall"]})
        del idx
        shutil.rmtree(out)  # the next config's disk space
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    results["peak_rss_mib"] = peak_rss_mib()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    tmp_ctx.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
