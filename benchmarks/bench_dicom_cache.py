"""DICOM-series loading rate of the ``ct`` adapter with and without the engine's preprocessing cache.

Builds N distinct CT series (the real 20-slice series of ``../shared/data/ct`` when
present, else series written from pydicom's ``CT_small.dcm``), each with its own
SeriesInstanceUID/SOPInstanceUIDs so that content hashes differ. An "epoch"
loads every series through ``adapter.load`` (baseline: uncached), then through
``medfm.data.cache.PreprocessCache.get_or_compute`` keyed by the content hash and
``adapter.cache_signature()`` — a cold epoch (computes + writes) and a warm one
(reads safetensors). Prints series/s and the speed-up over the uncached baseline.

    python benchmarks/bench_dicom_cache.py [--series 8] [--size 64 192 192]
"""
from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch

import medfm.modalities.ct  # noqa: F401
from medfm.data.cache import PreprocessCache
from medfm.registry import get_modality

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct" / "ct_dicom_series_20_slices"


def make_series(root: Path, n: int) -> list:
    if SHARED.is_dir():
        files = sorted(SHARED.iterdir())
        slices = [pydicom.dcmread(f) for f in files]
    else:
        from pydicom.data import get_testdata_file

        base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        slices = []
        for k in range(40):
            ds = copy.deepcopy(base)
            ds.ImagePositionPatient = [base.ImagePositionPatient[0], base.ImagePositionPatient[1], 2.5 * k]
            slices.append(ds)
    out = []
    for s in range(n):
        d = root / f"series_{s:03d}"
        d.mkdir(parents=True)
        uid = pydicom.uid.generate_uid()
        for i, src in enumerate(slices):
            ds = copy.deepcopy(src)
            ds.SeriesInstanceUID = uid
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.save_as(d / f"{i:04d}.dcm", enforce_file_format=True)
        out.append(d)
    return out


def epoch(fn, items) -> float:
    t0 = time.perf_counter()
    for it in items:
        fn(it)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=3, default=[64, 192, 192])
    ap.add_argument("--spacing", type=float, nargs=3, default=[2.0, 1.5, 1.5])
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="medfm_bench_cache_"))
    try:
        series = make_series(tmp / "data", a.series)
        n_slices = len(list(series[0].iterdir()))
        ct = get_modality("ct", size=a.size, target_spacing=a.spacing)
        cache = PreprocessCache(tmp / "cache")
        sig = ct.cache_signature()

        def cached(p):
            return cache.get_or_compute(p, sig, lambda: ct.load(p))

        ct.load(series[0])  # import/warm-up outside the timings
        t_plain = epoch(ct.load, series)
        t_cold = epoch(cached, series)
        t_warm = epoch(cached, series)
        x_ref, x_hit = ct.load(series[0])["x"], cached(series[0])["x"]
        same = torch.equal(x_ref, x_hit)
        src = "shared 512x512 CT series" if SHARED.is_dir() else "CT_small 128x128 series"
        print(f"{a.series} series x {n_slices} slices ({src}) -> x {tuple(x_ref.shape)}; cache hits={cache.hits} "
              f"misses={cache.misses}; cached tensor identical: {same}")
        print(f"{'epoch':28s} {'seconds':>8s} {'series/s':>9s} {'speed-up vs uncached':>21s}")
        for name, t in (("uncached (baseline)", t_plain), ("cache cold (compute+write)", t_cold),
                        ("cache warm (read)", t_warm)):
            print(f"{name:28s} {t:8.2f} {a.series / t:9.2f} {t_plain / t:21.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
