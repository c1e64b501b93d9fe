"""Training input rate: WebDataset shards against the file-per-sample preprocessing cache.

Run by hand (not part of pytest)::

    python benchmarks/bench_shards.py [--n 1000] [--workers 1 2] [--size 16 64 64]

Cohort: N synthetic CT volumes written as int16 ``.npy`` files (``(D+8, H+16, W+16)`` HU,
spacing 1.5 mm) read by the real ``ct`` adapter (one HU window, no resampling, crop to
``--size``). Both paths are warmed first — ``medfm shard`` writes the shards, one eval pass
fills :class:`~medfm.data.cache.PreprocessCache` — and then an epoch of training batches
(batch 16, train-time ``augment()``: flips + intensity jitter) is drawn through a DataLoader
with 1 and 2 workers: the manifest path (``ManifestDataset`` + ``ResumableSampler`` + cache) and
the shard path (``ShardStream``). The two are interleaved per worker count, baseline = cache.
Also printed: bytes on disk of the raw files, the cache and the shards, and the machine's fp32
GEMM rate (the machine may be shared; ratios are taken within one run).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

import medfm.modalities.ct  # noqa: F401
from medfm.data import ManifestDataset, MultiModalCollate, read_manifest
from medfm.data.shard_stream import ShardStream, shard_loader
from medfm.data.shards import open_index, write_shards
from medfm.registry import get_modality
from medfm.demo.machine import gemm_gflops
from medfm.train.sampler import ResumableSampler


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def epoch_rate(loader) -> float:
    t, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["id"])
    return n / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, nargs=3, default=[16, 64, 64])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--shard-size", default="64MB")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"fp32 GEMM (1024², 1 thread): {gemm_gflops(1024, threads=1):.1f} GFLOP/s")
    opts = {"size": list(args.size), "windows": ["mediastinum"], "target_spacing": None, "orient": False}
    adapter = get_modality("ct", **opts)
    d, h, w = args.size
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        (tmp / "raw").mkdir()
        rng = np.random.default_rng(0)
        rows = []
        for i in range(args.n):
            vol = rng.integers(-1000, 1500, size=(d + 8, h + 16, w + 16), dtype=np.int16)
            np.save(tmp / "raw" / f"ct{i:06d}.npy", vol)
            rows.append({"id": f"ct{i:06d}", "patient_id": f"p{i}", "ct": f"raw/ct{i:06d}.npy",
                         "ct_spacing": "1.5,1.5,1.5"})
        pd.DataFrame(rows).to_csv(tmp / "m.csv", index=False)
        df = read_manifest(tmp / "m.csv")
        t = time.perf_counter()
        write_shards(df, {"ct": adapter}, str(tmp / "shards"), shard_size=args.shard_size, num_workers=2,
                     progress=False)
        t_shard = time.perf_counter() - t
        t = time.perf_counter()
        warm = ManifestDataset(df, {"ct": adapter}, cache_dir=tmp / "cache")
        for i in range(len(warm)):
            warm[i]
        t_cache = time.perf_counter() - t
        index = open_index(str(tmp / "shards"))
        sizes = {"raw .npy files": du(tmp / "raw"), "preprocessing cache": du(tmp / "cache"),
                 "shards": du(tmp / "shards")}
        print(f"\n{args.n} CT volumes, raw {d + 8}x{h + 16}x{w + 16} int16 → {d}x{h}x{w} float32; "
              f"{len(index.shards)} shards; warm-up: shard {t_shard:.1f} s, cache fill {t_cache:.1f} s")
        print(f"{'on disk':<22} {'MiB':>9} {'files':>7}")
        for k, v in sizes.items():
            sub = {"raw .npy files": "raw", "preprocessing cache": "cache", "shards": "shards"}[k]
            print(f"{k:<22} {v / 2**20:>9.1f} {sum(1 for f in (tmp / sub).rglob('*') if f.is_file()):>7}")
        print(f"\n{'workers':>7} {'path':<22} {'samples/s':>10} {'x cache':>8}")
        for nw in args.workers:
            ds = ManifestDataset(df, {"ct": adapter}, train=True, cache_dir=tmp / "cache")
            sampler = ResumableSampler(len(ds), seed=0)
            cache_loader = DataLoader(ds, batch_size=args.batch, sampler=sampler, num_workers=nw,
                                      collate_fn=MultiModalCollate({"ct": adapter}), drop_last=True,
                                      prefetch_factor=4)
            stream = ShardStream(index, {"ct": adapter}, batch_size=args.batch, num_workers=nw, shuffle_buffer=256)
            r_cache = epoch_rate(cache_loader)
            r_shard = epoch_rate(shard_loader(stream))
            print(f"{nw:>7} {'file-per-sample cache':<22} {r_cache:>10.1f} {1.0:>8.2f}")
            print(f"{nw:>7} {'shards':<22} {r_shard:>10.1f} {r_shard / r_cache:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
