"""Validation-only tuning runs behind the hypothesis tables of ``benchmarks/real/README.md``.

``python -m benchmarks.real.tune reports --data ../shared/data --out DIR [--steps N] [--only a,b]``
``python -m benchmarks.real.tune ecg --data ../shared/data --out DIR [--only a,b]``

Reports: the *train* reports of the suite's split are split again (90 / 10, seed 0); every
variant is trained on the 90 % and scored by findings → impression R@10 on the 10 % —
the test reports are never read. ECG: every variant's MAE is trained on two sources (as in
the suite), and scored by the probes' macro AUROC *within* those two sources (train on one,
validate on the other, both ways); the held-out source is never scored. One JSON line per
variant is appended to ``DIR/tune_<block>.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import BUDGETS

REPORT_VARIANTS = {
    "base": {},                                   # CLIP, duplicate positives, mean pooling, vocab 2048, lr 1e-3
    "no_dup": {"duplicate_positives": False},
    "cls": {"text_opts": {"pool": "cls"}},
    "vocab4096": {"text_opts": {"vocab_size": 4096}},
    "vocab1024": {"text_opts": {"vocab_size": 1024}},
    "lr3e-4": {"lr": 3e-4},
    "lr3e-3": {"lr": 3e-3},
    "clip+mlm": {"mlm_weight": 0.5},
}


def tune_reports(data: Path, out: Path, steps: int, only) -> None:
    import torch
    from . import pretrain
    from .reports import clip_config, embed_pairs, load_reports, pairs, retrieval

    budget = dict(BUDGETS["full"]["reports"], clip_steps=steps)
    df = load_reports(data, None, 0)
    tr = pairs(df[df["split"] == "train"]).sample(frac=1.0, random_state=0).reset_index(drop=True)
    n_val = len(tr) // 10
    val, fit = tr.iloc[:n_val].reset_index(drop=True), tr.iloc[n_val:].reset_index(drop=True)
    from .baselines import tfidf_embeddings

    train_text = (fit["findings"] + " " + fit["impression"]).tolist()
    q, g = tfidf_embeddings(train_text, val["findings"], val["impression"])
    rows = [{"variant": "tfidf", **{k: v["value"] for k, v in retrieval(q, g, n_boot=0, seed=0).items()}}]
    for name, kw in REPORT_VARIANTS.items():
        if only and name not in only:
            continue
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model, init, info = pretrain(clip_config(budget, 0, **kw), fit, out / f"reports_{name}")
        r = retrieval(*embed_pairs(model, val), n_boot=0, seed=0)
        rows.append({"variant": name, "steps": info["steps"], "seconds": round(time.perf_counter() - t0, 1),
                     "loss_first": info["loss_first"], "loss_last": info["loss_last"],
                     **{k: v["value"] for k, v in r.items()}})
    with open(out / "tune_reports.jsonl", "a") as fh:
        for r in rows:
            print(json.dumps(r))
            fh.write(json.dumps(r) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.real.tune")
    ap.add_argument("block", choices=["reports", "ecg"])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--only", default="")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import logging
    import warnings
    import torch
    import medfm.modalities  # noqa: F401

    torch.set_num_threads(args.threads)
    logging.getLogger("medfm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = {s for s in args.only.split(",") if s}
    if args.block == "reports":
        tune_reports(Path(args.data).resolve(), out, args.steps or int(BUDGETS["full"]["reports"]["clip_steps"]), only)
    else:
        from .ecg import tune as tune_ecg
        tune_ecg(Path(args.data).resolve(), out, only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
