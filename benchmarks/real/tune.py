"""Validation-only tuning runs behind the hypothesis tables of ``benchmarks/real/README.md``.

``python -m benchmarks.real.tune reports --data ../shared/data --out DIR [--steps N] [--only a,b]``
``python -m benchmarks.real.tune ecg --data ../shared/data --out DIR [--only a,b]``
``python -m benchmarks.real.tune dna --data ../shared/data --out DIR [--steps N] [--only a,b]``
``python -m benchmarks.real.tune dna-clibd --data ../shared/data --out DIR [--seeds 0,1,2] [--ssl-from RUN]``

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
    from .radiology_reports import clip_config, embed_pairs, load_reports, pairs, retrieval

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

#: CLIBD-stage variants (keywords of :func:`benchmarks.real.dna._clibd_config`, plus ``lock``:
#: the DNA tower frozen, only the text tower and the projections train — LiT)
CLIBD_VARIANTS = {
    "base": {},                                          # CLS pooling, lr 5e-4, 30 steps (the joined tree)
    "mean": {"pool": "mean"},
    "mean_lr1e-3": {"pool": "mean", "lr": 1e-3},
    "mean_lr1e-3_150": {"pool": "mean", "lr": 1e-3, "steps": 150},
    "cls_lr1e-3_150": {"pool": "cls", "lr": 1e-3, "steps": 150},
    "mean_lr1e-3_lock": {"pool": "mean", "lr": 1e-3, "lock": True},
    "mean_lr1e-3_150_lock": {"pool": "mean", "lr": 1e-3, "steps": 150, "lock": True},
    "mean_lr1e-3_views": {"pool": "mean", "lr": 1e-3, "views": 0.5},
}


def tune_clibd(data: Path, out: Path, only, seeds, ssl_from: str = "") -> None:
    """CLIBD stage from one SSL DNA tower (trained here, or ``ssl_from`` = its run dir), 3 seeds per variant.

    Selection score: zero-shot genus accuracy of the *val* sequences (seen species) against the
    taxonomy strings of every genus, and whether the text prompts stay distinct (mean pairwise
    cosine). The unseen-species numbers are printed for information only.
    """
    import torch
    from medfm import load_pretrained
    from medfm.evaluation.embed import encode_values, logit_scale
    from medfm.modalities.text import taxonomy_text
    from . import pretrain
    from .dna import (TAXONOMY_RANKS, _clibd_config, _embed, load_table, mean_pairwise_cosine,
                      split_species, ssl_config)

    budget = dict(BUDGETS["full"]["dna"])
    df = load_table(data, None, None, 0)
    df["split"] = split_species(df, n_unseen=budget["n_unseen"], n_test=budget["n_test_per_species"],
                                n_val=budget["n_val_per_species"], seed=0)
    train_df = df[df["split"].isin(["train", "val"])].assign(split="train")
    # CLIBD's training rows: train only (val is the selection set here)
    fit_df = df[df["split"] == "train"]
    if ssl_from:
        ssl = load_pretrained(ssl_from).eval()
    else:
        torch.manual_seed(0)
        ssl, _, _ = pretrain(ssl_config(budget, 0), train_df[["id", "patient_id", "split", "nucleotides"]], out / "ssl")
    train_genera = set(fit_df["genus_name"])
    val = df[df["split"] == "val"].reset_index(drop=True)
    uns = df[(df["split"] == "unseen") & df["genus_name"].isin(train_genera)].reset_index(drop=True)
    genera = df.drop_duplicates("genus_name").sort_values("genus_name")
    prompts = [taxonomy_text(r, TAXONOMY_RANKS) for r in genera.to_dict("records")]
    names = np.asarray(genera["genus_name"].astype(str))
    cols = ["id", "patient_id", "split", "nucleotides", *TAXONOMY_RANKS]
    for name, kw in CLIBD_VARIANTS.items():
        if only and name not in only:
            continue
        kw = dict(kw)
        lock = kw.pop("lock", False)
        for seed in seeds:
            def init(model):
                model.towers["dna"].load_state_dict(ssl.towers["dna"].state_dict())
                model.projections["dna"].load_state_dict(ssl.projections["dna"].state_dict())
                if lock:
                    for p in model.towers["dna"].parameters():
                        p.requires_grad_(False)
            t0 = time.perf_counter()
            model, _, info = pretrain(_clibd_config(budget, seed, **kw), fit_df[cols], out / f"clibd_{name}_{seed}",
                                      init=init)
            W = encode_values(model, "text", prompts, batch_size=128, source="genus prompt")
            row = {"variant": name, "seed": seed, "steps": info["steps"], "seconds": round(time.perf_counter() - t0, 1),
                   "loss_first": round(info["loss_first"], 3), "loss_last": round(info["loss_last"], 3),
                   "logit_scale": round(logit_scale(model), 2), "prompt_cos": round(mean_pairwise_cosine(W), 3)}
            for part, d in (("val", val), ("unseen_genus_in_train", uns)):
                X = _embed(model, d)
                Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
                Wn = W / np.linalg.norm(W, axis=1, keepdims=True)
                row[f"zs_{part}"] = round(float((names[(Xn @ Wn.T).argmax(1)] == d["genus_name"].astype(str)).mean()), 3)
            print(json.dumps(row), flush=True)
            with open(out / "tune_clibd.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")


#: DNA SSL variants: options over :data:`benchmarks.real.dna.DNA_OPTIONS`
DNA_VARIANTS = {
    "bag5": {},
    "bag4": {"kmer_bag": 4},
    "bag6": {"kmer_bag": 6},
    "bag5_gate1": {"trunk_gate": 1.0},
}


def tune_dna(data: Path, out: Path, only, steps: int) -> None:
    """SimCLR-views DNA tower variants, scored on validation only.

    ``val_sp``: 1-NN species of the val sequences against train; ``loso_fam`` / ``loso_ord``:
    family / order of the nearest train sequence of *another* species (the validation analogue
    of the unseen-species protocol). Unseen-species 1-NN genus is printed for information.
    """
    import torch
    from . import pretrain
    from . import dna as D

    budget = dict(BUDGETS["full"]["dna"])
    df = D.load_table(data, None, None, 0)
    df["split"] = D.split_species(df, n_unseen=budget["n_unseen"], n_test=budget["n_test_per_species"],
                                  n_val=budget["n_val_per_species"], seed=0)
    train_df = df[df["split"].isin(["train", "val"])].assign(split="train")
    tr = np.flatnonzero(df["split"] == "train")
    va = np.flatnonzero(df["split"] == "val")
    un = np.flatnonzero(df["split"] == "unseen")
    sp, fam, ordr, gen = (df[c].astype(str).to_numpy() for c in ("species_name", "family_name", "order_name",
                                                                "genus_name"))
    un = un[np.isin(gen[un], gen[tr])]

    def score(X):
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        S = X[va] @ X[tr].T
        r = {"val_sp": float((sp[tr][S.argmax(1)] == sp[va]).mean())}
        S[sp[va][:, None] == sp[tr][None, :]] = -np.inf
        nn = S.argmax(1)
        r["loso_fam"] = float((fam[tr][nn] == fam[va]).mean())
        r["loso_ord"] = float((ordr[tr][nn] == ordr[va]).mean())
        nn = (X[un] @ X[tr].T).argmax(1)
        r["unseen_genus_info"] = float((gen[tr][nn] == gen[un]).mean())
        return {k: round(v, 3) for k, v in r.items()}

    for name, opts in DNA_VARIANTS.items():
        if only and name not in only:
            continue
        cfg = D.ssl_config(budget, 0, steps=steps)
        cfg["model"]["modalities"]["dna"].update(opts)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model, init, info = pretrain(cfg, train_df[["id", "patient_id", "split", "nucleotides"]], out / f"dna_{name}")
        row = {"variant": name, "steps": info["steps"], "seconds": round(time.perf_counter() - t0, 1),
               "loss_first_last": [round(info["loss_first"], 3), round(info["loss_last"], 3)],
               "trained": score(D._embed(model, df)), "random": score(D._embed(init, df))}
        print(json.dumps(row), flush=True)
        with open(out / "tune_dna.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.real.tune")
    ap.add_argument("block", choices=["reports", "ecg", "dna-clibd", "dna"])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--only", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", default="0,1,2", help="dna-clibd: seeds of every variant")
    ap.add_argument("--ssl-from", default="", help="dna-clibd: run dir of an SSL DNA tower (default: train one)")
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
    elif args.block == "dna":
        tune_dna(Path(args.data).resolve(), out, only, args.steps or 30)
    elif args.block == "dna-clibd":
        tune_clibd(Path(args.data).resolve(), out, only, [int(x) for x in args.seeds.split(",")], args.ssl_from)
    else:
        from .ecg import tune as tune_ecg
        tune_ecg(Path(args.data).resolve(), out, only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
