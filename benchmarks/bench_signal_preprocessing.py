"""Signal and sequence preprocessing throughput, and the data loader against a training step.

Run by hand (not part of pytest)::

    python benchmarks/bench_signal_preprocessing.py [--records N] [--steps N]

Three tables, each with ratios against a baseline measured in the same run:

1. ECG preprocessing records/s: medfm's vectorised path (all 12 leads per call, filters
   designed once and cached, polyphase resampling) vs a naive per-lead loop that designs
   its filters for every record and resamples with FFT (``scipy.signal.resample``).
2. DNA tokenisation sequences/s: the HF ``tokenizers`` k-mer tokenizer in batch and per sample
   vs a pure-Python k-mer → id dictionary lookup.
3. A ``DataLoader`` (num_workers=2) of ECG records feeding a small MAE training step:
   the fraction of step time spent waiting for data (target < 10%), vs num_workers=0.

Data: the real CinC 2021 records and BOLD barcodes in ``../shared/data`` when present,
otherwise synthetic records and sequences written to a temp folder.
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import signal as sps

from medfm.modalities import dna as D
from medfm.modalities import ecg as E

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ------------------------------------------------------------------ baselines
def naive_ecg_preprocess(x: np.ndarray, fs_in: float, fs: int = 500, n: int = 5000, band=(0.5, 40.0)) -> np.ndarray:
    """Per-lead, per-record filter design, FFT resampling, filtfilt — the unfused path."""
    out = np.zeros((12, n), dtype=np.float32)
    for i in range(x.shape[0]):
        lead = x[i]
        lead = sps.resample(lead, int(round(len(lead) * fs / fs_in)))
        b, a = sps.butter(4, [band[0], band[1]], btype="bandpass", fs=fs)
        lead = sps.filtfilt(b, a, lead)[:n]
        lead = np.pad(lead, (0, n - len(lead)))
        sd = lead.std()
        out[i] = 0 if sd < 1e-6 else (lead - lead.mean()) / sd
    return out


def naive_kmer_ids(seq: str, k: int, vocab: dict, max_length: int = 660) -> list:
    s = (seq[:max_length] + "N" * max_length)[:max_length]
    return [2] + [vocab.get(s[i:i + k], 4) for i in range(0, len(s) - k + 1, k)] + [3]


def rate(fn, n_items: int, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n_items / best


def table(title: str, rows, base: str) -> None:
    ref = dict(rows)[base]
    print(f"\n{title}\n{'method':<52}{'items/s':>12}{'ratio':>9}")
    for name, r in rows:
        print(f"{name:<52}{r:>12.1f}{r / ref:>8.2f}x")


# ----------------------------------------------------------------- sources
def ecg_records(tmp: Path, n: int):
    cinc = DATA / "ecg" / "cinc2021_12lead"
    heads = sorted(cinc.glob("*.hea")) if cinc.is_dir() else []
    if not heads:
        import wfdb

        rng = np.random.default_rng(0)
        for i in range(20):
            wfdb.wrsamp(f"r{i}", fs=500, units=["mV"] * 12, sig_name=list(E.LEADS),
                        p_signal=rng.normal(0, 1, (5000, 12)), fmt=["16"] * 12, write_dir=str(tmp))
        heads = sorted(tmp.glob("r*.hea"))
    return list(itertools.islice(itertools.cycle(heads), n))


def dna_sequences():
    tsv = DATA / "dna" / "coi_barcodes_100_species.tsv"
    if tsv.is_file():
        return D.read_sequence_table(tsv)["nucleotides"].tolist()
    rng = np.random.default_rng(0)
    return ["".join(rng.choice(list("ACGT"), 650)) for _ in range(5000)]


# --------------------------------------------------------------- benchmarks
def bench_ecg(paths) -> None:
    import wfdb

    a = E.ECGAdapter()
    recs = [a.read(p) for p in paths]
    n = len(recs)
    rows = [
        ("naive per-lead (design+FFT resample+filtfilt)", rate(lambda: [naive_ecg_preprocess(r.data, r.meta["fs"]) for r in recs], n)),
        ("medfm preprocess (vectorised, cached sos)", rate(lambda: [a.preprocess(r) for r in recs], n, 3)),
        ("wfdb.rdrecord alone (reading, for scale)", rate(lambda: [wfdb.rdrecord(str(Path(p).with_suffix(""))) for p in paths], n, 2)),
        ("medfm load = WFDB read + preprocess", rate(lambda: [a.load(p) for p in paths], n, 2)),
    ]
    x1000 = [E.Record(sps.resample_poly(r.data, 2, 1, axis=-1), {**r.meta, "fs": 1000.0}) for r in recs]
    rows += [
        ("naive per-lead, 1000 Hz input", rate(lambda: [naive_ecg_preprocess(r.data, 1000.0) for r in x1000], n)),
        ("medfm preprocess, 1000 Hz input", rate(lambda: [a.preprocess(r) for r in x1000], n, 3)),
    ]
    table(f"ECG preprocessing, {n} records of 10 s (12 leads -> 500 Hz, 0.5-40 Hz, 10 s)", rows,
          "naive per-lead (design+FFT resample+filtfilt)")


def bench_dna(seqs) -> None:
    a = D.DNAAdapter(k=6)
    vocab = a.tokenizer.get_vocab()
    prepared = [a.prepare(s) for s in seqs]
    n = len(seqs)
    ref = [naive_kmer_ids(s, 6, vocab) for s in seqs[:50]]
    assert ref == a.encode_batch(prepared[:50]) == a.encode_batch(prepared[:50], backend="tokenizers"), "paths disagree"
    rows = [
        ("pure-python k-mer dict lookup", rate(lambda: [naive_kmer_ids(s, 6, vocab) for s in seqs], n, 3)),
        ("HF tokenizers.Tokenizer.encode_batch (Rust)", rate(lambda: a.encode_batch(prepared, backend="tokenizers"), n, 3)),
        ("medfm encode, per sample (vocab lookup)", rate(lambda: [a.encode(s) for s in prepared], n, 3)),
        ("medfm encode_batch (numpy, one pass)", rate(lambda: a.encode_batch(prepared), n, 3)),
        ("medfm adapter.load per sample (clean+pad+ids)", rate(lambda: [a.load(s) for s in seqs], n, 3)),
    ]
    table(f"DNA tokenisation, {n} barcodes (6-mers, 660 nt)", rows, "pure-python k-mer dict lookup")


def bench_loader(paths, steps: int, preset: str) -> None:
    import medfm
    from medfm.data import ManifestDataset, MultiModalCollate
    from torch.utils.data import DataLoader

    df = pd.DataFrame({"id": [f"s{i}" for i in range(len(paths))], "patient_id": [f"p{i}" for i in range(len(paths))],
                       "ecg": [str(p) for p in paths]})
    a = E.ECGAdapter()
    torch.manual_seed(0)
    model = medfm.create_model({"name": preset, "modalities": {"ecg": a.config()}})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ds = ManifestDataset(df, {"ecg": a}, train=True)
    print(f"\nDataLoader feeding an ECG MAE step ({preset} trunk, batch 16, {steps} steps, "
          f"torch threads {torch.get_num_threads()})")
    print(f"{'loader':<30}{'step s':>9}{'wait s':>9}{'wait %':>9}{'samples/s':>11}")
    res = {}
    for nw in (0, 2):
        dl = DataLoader(ds, batch_size=16, shuffle=True, num_workers=nw, collate_fn=MultiModalCollate({"ecg": a}),
                        persistent_workers=nw > 0, prefetch_factor=4 if nw else None)
        it = iter(dl)
        wait = total = 0.0
        done = 0
        for step in range(steps + 2):
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                it = iter(dl)
                batch = next(it)
            t1 = time.perf_counter()
            loss = model.masked_loss("ecg", batch["inputs"]["ecg"]["x"])["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            t2 = time.perf_counter()
            if step >= 2:  # warm-up: worker start and first prefetch
                wait += t1 - t0
                total += t2 - t0
                done += len(batch["id"])
        res[nw] = (total / steps, wait / steps, 100 * wait / total, done / total)
        print(f"{f'num_workers={nw}':<30}{res[nw][0]:>9.3f}{res[nw][1]:>9.3f}{res[nw][2]:>8.1f}%{res[nw][3]:>11.1f}")
    print(f"speed-up num_workers=2 vs 0: {res[2][3] / res[0][3]:.2f}x; data wait with 2 workers "
          f"{'under' if res[2][2] < 10 else 'OVER'} 10% of step time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--models", default="medfm-tiny,medfm-small", help="model presets of the training step")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = ecg_records(Path(tmp), args.records)
        # per-item throughput with one intra-op thread, as inside DataLoader workers (torch sets
        # 1 thread per worker); on a busy 2-core box, 2 OpenMP threads make tiny tensor ops wait.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        bench_ecg(paths)
        bench_dna(dna_sequences())
        torch.set_num_threads(threads)
        for preset in args.models.split(","):
            bench_loader(paths, args.steps, preset)


if __name__ == "__main__":
    main()
