"""Chest X-ray report block: 3,955 Indiana University reports (findings + impression, no images).

Split: reports are shuffled with the seed and 80 % go to train, 20 % to test (one report per
row; the collection has no patient ids beyond the report, so report = patient).

Model: a findings ↔ impression dual encoder — two small BERTs (2 layers, width 128, no
dropout), each with a WordPiece vocabulary (2,048) learnt by the ``text`` adapter on its
section of the train reports, mean-pooled, trained with the engine's CLIP objective for
``clip_steps`` steps (batch 64). Identical impressions ("No acute cardiopulmonary
abnormality.", after case / whitespace / punctuation normalisation) are positives of each
other, not negatives (the objective's default duplicate-aware targets). Settings were
chosen on a 10 % validation split of the train reports (``python -m benchmarks.real.tune
reports``), never on the test reports.

Task: text-to-text retrieval on test reports that have both sections — each findings text
queries the gallery of all test impressions; the impression of the same report is the one
match. Recall@1/5/10 (bootstrap 95% intervals over queries) and MRR for the trained model,
the same model with random weights, and TF-IDF cosine (uni+bigrams, fitted on train texts only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
import pandas as pd

from . import TRUNK, TEXT_HF_NODROP, Stopwatch, block_result, pretrain, verdict
from .baselines import tfidf_embeddings
from medfm.modalities.text import duplicate_key

KS = (1, 5, 10)


def load_reports(data_dir: Path, n_reports=None, seed: int = 0) -> pd.DataFrame:
    from medfm.modalities.text import normalize_report

    df = pd.read_csv(Path(data_dir) / "text" / "iu_chest_xray_reports.csv", dtype=str, keep_default_na=False)
    df["findings"] = df["findings"].map(normalize_report)
    df["impression"] = df["impression"].map(normalize_report)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(df))
    df = df.iloc[order].reset_index(drop=True)
    if n_reports:
        df = df.iloc[: int(n_reports)].reset_index(drop=True)
    n_train = int(round(0.8 * len(df)))
    df["split"] = ["train"] * n_train + ["test"] * (len(df) - n_train)
    df["id"] = "report_" + df["report_id"].astype(str)
    df["patient_id"] = df["id"]
    df["text"] = (df["findings"] + " " + df["impression"]).str.strip()
    return df


def retrieval(q: np.ndarray, g: np.ndarray, *, n_boot: int, seed: int) -> Dict[str, Any]:
    """Query i's match is gallery i. ``q (N, D)``, ``g (N, D)`` (dense or sparse), rows L2-normalised.

    :func:`medfm.evaluation.tasks.run_retrieval`, query → gallery only, each query its own
    bootstrap cluster (a report is its own patient here).
    """
    from scipy import sparse
    from medfm.evaluation.tasks import run_retrieval

    if sparse.issparse(q):
        q, g = q.toarray().astype(np.float32), g.toarray().astype(np.float32)
    rows = np.arange(len(q))
    res = run_retrieval(q, g, rows, rows, query_groups=rows, gallery_groups=rows, names=("q", "g"), ks=KS,
                        n_boot=n_boot, seed=seed, both=False)
    m, n = res.metrics, int(len(q))
    out: Dict[str, Any] = {f"R@{k}": {"value": m[f"q_to_g_R@{k}"], "ci": list(res.ci.get(f"q_to_g_R@{k}", (np.nan,) * 2)),
                                      "n": n} for k in KS}
    out["MRR"] = {"value": m["q_to_g_MRR"], "n": n}
    out["median_rank"] = {"value": m["q_to_g_median_rank"], "n": n}
    out["chance_R@1"] = {"value": res.chance["q_to_g_R@1"]}
    return out


#: text-tower options of the findings ↔ impression model (chosen on the validation split; see README)
TEXT_OPTS = {"vocab_size": 2048, "min_frequency": 2, "pool": "mean", "hf_config": TEXT_HF_NODROP}
#: the MLM objective's masked share (BERT's)
MLM_RATIO = 0.15


def clip_config(budget: Dict[str, Any], seed: int, *, text_opts: Dict[str, Any] = None, lr: float = None,
                duplicate_positives: bool = True, mlm_weight: float = 0.0) -> Dict[str, Any]:
    """Run config of the findings ↔ impression dual text encoder (two ``text`` towers, CLIP loss).

    ``duplicate_positives``: identical impressions ("No acute cardiopulmonary abnormality.")
    are positives of each other, not negatives. ``mlm_weight`` > 0 adds MLM on both towers.
    """
    opts = {**TEXT_OPTS, **(text_opts or {}), "max_length": int(budget["max_length"])}
    mlm_ratio = float(opts.pop("mask_ratio", MLM_RATIO))  # an objective setting, not an adapter option
    objectives = [{"name": "clip", "weight": 1.0, "modalities": ["findings", "impression"],
                   "duplicate_positives": bool(duplicate_positives)}]
    if mlm_weight:
        objectives.append({"name": "masked", "weight": float(mlm_weight), "mask_ratio": mlm_ratio})
    steps = int(budget["clip_steps"])
    return {"model": {**TRUNK, "modalities": {"findings": {**opts, "adapter": "text"}, "impression": {**opts, "adapter": "text"}}},
            "data": {"split": "train", "batch_size": int(budget["batch_size"])},
            "objectives": objectives,
            "optim": {"lr": float(lr or budget.get("lr", 1e-3)), "weight_decay": 0.01,
                      "warmup_steps": max(1, steps // 10)},
            "train": {"max_steps": steps, "seed": seed, "checkpoint_every": 0}}


def pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with both sections, in the manifest layout the Trainer reads."""
    d = df[(df["findings"] != "") & (df["impression"] != "")]
    return d[["id", "patient_id", "split", "findings", "impression"]].reset_index(drop=True)


def embed_pairs(model, df: pd.DataFrame):
    """``(findings (N, D), impressions (N, D))`` with the model's two towers."""
    import torch
    from medfm.evaluation.embed import encode_values

    with torch.no_grad():
        q = encode_values(model, "findings", df["findings"].tolist(), batch_size=64, source="findings")
        g = encode_values(model, "impression", df["impression"].tolist(), batch_size=64, source="impression")
    return q, g


def run(data_dir: Path, out_dir: Path, budget: Dict[str, Any], seed: int = 0) -> Dict[str, Any]:
    out_dir = Path(out_dir)
    sw = Stopwatch()
    res = block_result(budget=dict(budget))
    nb = int(budget["n_boot"])
    df = load_reports(data_dir, budget.get("n_reports"), seed)
    train = df[(df["split"] == "train") & (df["text"] != "")]
    test = df[(df["split"] == "test") & (df["findings"] != "") & (df["impression"] != "")].reset_index(drop=True)
    train_pairs = pairs(df[df["split"] == "train"])
    n_dup = int(train_pairs["impression"].map(duplicate_key).duplicated(keep=False).sum())
    res["tables"]["split"] = [{"split": "train", "reports": int(len(train)), "with both sections": int(len(train_pairs)),
                               "impressions with a duplicate": n_dup},
                              {"split": "test (findings and impression)", "reports": int(len(test))}]
    reps: Dict[str, Dict[str, Any]] = {}
    with sw("tfidf"):
        Q, G = tfidf_embeddings(train["text"], test["findings"], test["impression"])
        reps["tfidf"] = retrieval(Q, G, n_boot=nb, seed=seed)
    res["baselines"] += ["tfidf", "random"]
    with sw("clip_pretrain"):
        model, init, info = pretrain(clip_config(budget, seed), train_pairs, out_dir / "clip")
    res["training"] = {"clip": info, "vocab_size": model.adapters["findings"].vocab_size}
    with sw("embed_eval"):
        for name, m in (("clip", model), ("random", init)):
            reps[name] = retrieval(*embed_pairs(m, test), n_boot=nb, seed=seed)
    for rep, r in reps.items():
        for k, v in r.items():
            res["metrics"][f"{rep}/findings_to_impression_{k}"] = v
    for k in KS:
        for base in ("tfidf", "random"):
            res["comparisons"].append({"task": f"reports findings→impression R@{k}", "ours": "clip", "baseline": base,
                                       "ours_value": reps["clip"][f"R@{k}"]["value"],
                                       "baseline_value": reps[base][f"R@{k}"]["value"],
                                       "verdict": verdict(reps["clip"][f"R@{k}"], reps[base][f"R@{k}"])})
    res["timing_s"] = sw.times
    return res
