"""The embedding path end to end (manifest → embeddings): samples/s against the GEMM-limited rate.

Run by hand (not part of pytest)::

    python benchmarks/bench_embed.py [--ecg-rows 200] [--ct-rows 6] [--rounds 3] [--cli]

Data: the shared CinC 2021 ECGs (``../shared/data/ecg``, 50 records repeated to ``--ecg-rows``
rows) and the shared CT NIfTI volume (``../shared/data/ct/ct_30_slices.nii.gz``, ``--ct-rows``
rows), read and preprocessed by the modality adapters as ``medfm embed`` reads them.
Models: random-initialised ``medfm-tiny`` towers (ECG: width 64, depth 2; CT: width 96, depth 2),
the sizes where preprocessing, not the model, decides the rate; ``--ecg-model``/``--ct-model``
take a preset or a checkpoint directory.

Sides, interleaved round by round (A, B, C, ... A, B, C, ...), each embedding the whole manifest:

- ``hand loop``: the minimal loop a user writes: ``adapter.load`` each file, ``adapter.collate``,
  ``model.encode`` under ``torch.inference_mode`` (the peer);
- ``workers=0``: ``embed_manifest(num_workers=0)``, the old path (no data-loader workers);
- ``default``: ``embed_manifest()`` with the defaults the CLI uses (workers and threads from the cores);
- ``workers=C``: one worker per core (C = the cores), the encoder's threads as the default;
- ``default, warm cache``: the same reading the preprocessing cache (``--cache-dir``) filled by an untimed run.

The limit: FLOPs per sample (``torch.utils.flop_counter`` with CPU attention counted analytically,
:mod:`benchmarks.measure`) ÷ the same run's fp32 GEMM rate at the encoder's thread count.
Printed: the machine line (one-thread GEMM rate, load), samples/s (median wall), CPU seconds per
sample (this process + workers), the fraction of the limit, and per-round speed-ups.
``--cli`` adds ``medfm embed`` in a fresh process (imports and model load included),
``--workers 0`` against the default, interleaved.
"""
from __future__ import annotations

import argparse
import glob
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.measure import Clock, count_flops, interleaved, machine_line, med, ratio_range  # noqa: E402

import medfm  # noqa: E402
from medfm.evaluation.embed import embed_manifest  # noqa: E402
from medfm.evaluation.embed_loader import usable_cores  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
MODELS = {"ecg": {"name": "medfm-tiny"},
          "ct": {"name": "medfm-tiny", "embed_dim": 64, "trunk": {"width": 96, "depth": 2, "heads": 3}}}


def manifest(modality: str, rows: int) -> pd.DataFrame:
    if modality == "ecg":
        files = sorted(glob.glob(str(DATA / "ecg" / "cinc2021_12lead" / "*.hea")))
    else:
        files = [str(DATA / "ct" / "ct_30_slices.nii.gz")]
    if not files or not Path(files[0]).exists():
        raise SystemExit(f"the shared data is not at {DATA}")
    df = pd.DataFrame([{"id": f"s{i}", "patient_id": f"p{i}", modality: files[i % len(files)]} for i in range(rows)])
    df.attrs["base_dir"] = str(DATA)
    return df


def model_for(modality: str, spec: str | None):
    if spec and Path(spec).is_dir():
        return medfm.load_pretrained(spec).eval()
    cfg = dict(MODELS[modality]) if not spec else {"name": spec}
    cfg["modalities"] = {modality: {}}
    torch.manual_seed(0)
    return medfm.create_model(cfg).eval()


def hand_loop(model, modality: str, paths, batch_size: int) -> np.ndarray:
    """The peer: load, collate, encode; nothing else."""
    adapter = model.adapters[modality]
    out = []
    with torch.inference_mode():
        for s in range(0, len(paths), batch_size):
            items = [adapter.load(p, train=False, sample_id=str(s + j)) for j, p in enumerate(paths[s:s + batch_size])]
            items = [{k: v for k, v in it.items() if k != "flags"} for it in items]
            batch = adapter.collate(items)
            out.append(model.encode(modality, batch["x"], batch.get("mask")).float().numpy())
    return np.concatenate(out)


def flops_per_sample(model, modality: str, path: str) -> int:
    adapter = model.adapters[modality]
    item = {k: v for k, v in adapter.load(path, train=False, sample_id="f").items() if k != "flags"}
    batch = adapter.collate([item])
    with torch.inference_mode():
        return count_flops(lambda: model.encode(modality, batch["x"], batch.get("mask")))


def bench(modality: str, rows: int, rounds: int, batch_size: int, spec, threads: int, gemm: float) -> None:
    df = manifest(modality, rows)
    model = model_for(modality, spec)
    paths = list(df[modality])
    flops = flops_per_sample(model, modality, paths[0])
    limit = gemm * 1e9 / flops
    kw = dict(batch_size=batch_size, progress=False, confine=False)
    with tempfile.TemporaryDirectory() as cache:
        embed_manifest(model, df, modality, cache_dir=cache, **kw)  # fills the cache (untimed)
        results = {}

        def side(name, fn):
            def run():
                results[name] = fn()
            return run

        torch.set_num_threads(threads)
        sides = {
            "hand loop": side("hand loop", lambda: hand_loop(model, modality, paths, batch_size)),
            "workers=0 (old path)": side("workers=0 (old path)",
                                         lambda: embed_manifest(model, df, modality, num_workers=0, **kw).emb),
            "default": side("default", lambda: embed_manifest(model, df, modality, **kw).emb),
            f"workers={threads}": side(f"workers={threads}",
                                       lambda: embed_manifest(model, df, modality, num_workers=threads, **kw).emb),
            "default, warm cache": side("default, warm cache",
                                        lambda: embed_manifest(model, df, modality, cache_dir=cache, **kw).emb),
        }
        times = interleaved(sides, rounds)
    ref = results["workers=0 (old path)"]
    print(f"\n{modality}: {rows} rows, batch {batch_size}, encoder threads {threads}, "
          f"{flops / 1e9:.3f} GFLOP/sample → limit {limit:.1f} samples/s at {gemm:.1f} GFLOP/s")
    print(f"{'side':<24}{'samples/s':>10}{'CPU s/sample':>14}{'of limit':>10}{'speed-up vs workers=0':>24}"
          f"{'max |Δ| vs workers=0':>22}")
    for name, t in times.items():
        sps = rows / med([w for w, _ in t])
        diff = float(np.abs(results[name] - ref).max())
        print(f"{name:<24}{sps:>10.2f}{med([c for _, c in t]) / rows:>14.4f}{sps / limit:>10.2f}"
              f"{ratio_range(t, times['workers=0 (old path)']):>24}{diff:>22.2e}")


def bench_cli(rows: int, rounds: int, batch_size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        df = manifest("ecg", rows)
        df.to_csv(Path(tmp) / "m.csv", index=False)
        model_for("ecg", None).save_pretrained(Path(tmp) / "model")
        base = [sys.executable, "-m", "medfm", "embed", "--model", str(Path(tmp) / "model"), "--manifest",
                str(Path(tmp) / "m.csv"), "--modality", "ecg", "--no-progress", "--no-confine-paths",
                "--batch-size", str(batch_size)]

        def cli(extra):
            def run():
                r = subprocess.run(base + ["--out", str(Path(tmp) / "e.safetensors")] + extra, capture_output=True,
                                   text=True)
                if r.returncode:
                    raise SystemExit(r.stderr[-2000:])
            return run

        times = interleaved({"medfm embed --workers 0": cli(["--workers", "0"]), "medfm embed": cli([])}, rounds)
    print(f"\nCLI, fresh process (imports + model load included), ecg {rows} rows")
    for name, t in times.items():
        print(f"{name:<28}{rows / med([w for w, _ in t]):>10.2f} samples/s{med([c for _, c in t]):>10.1f} CPU s")
    print(f"speed-up: {ratio_range(times['medfm embed'], times['medfm embed --workers 0'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ecg-rows", type=int, default=200)
    ap.add_argument("--ct-rows", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--ct-batch-size", type=int, default=2)
    ap.add_argument("--ecg-model", default=None, help="preset or checkpoint directory (default: medfm-tiny)")
    ap.add_argument("--ct-model", default=None)
    ap.add_argument("--modalities", default="ecg,ct")
    ap.add_argument("--cli", action="store_true", help="also time `medfm embed` in fresh processes")
    args = ap.parse_args()
    threads = usable_cores()
    line, gemm = machine_line(threads)
    print(line)
    with Clock() as c:
        for m in args.modalities.split(","):
            rows, bs = (args.ecg_rows, args.batch_size) if m == "ecg" else (args.ct_rows, args.ct_batch_size)
            bench(m, rows, args.rounds, bs, args.ecg_model if m == "ecg" else args.ct_model, threads, gemm)
        if args.cli:
            bench_cli(args.ecg_rows, args.rounds, args.batch_size)
    print(f"\n{machine_line(threads)[0]} (after; {c.wall:.0f} s)")


if __name__ == "__main__":
    main()
