"""DNA barcode block: 5,000 COI sequences (100 species × 50) from BOLD via BarcodeBERT.

Split (seeded, :func:`split_species`): ``n_unseen`` species are held out entirely — one
species of every genus that has two species in the table (so that "unseen species whose
genus occurs in train" exists, BarcodeBERT's genus protocol) plus randomly drawn others;
the sequences of every other ("seen") species are split per species into test
(``n_test_per_species``), val (``n_val_per_species``, only for choosing the probe's C) and
train (the rest).

Learned representations (all with the same tokenizer, k = 6 non-overlapping k-mers over
ACGTN, a bag-of-overlapping-5-mers path added to the pooled output, and the same 2-block
width-128 trunk, whose pooled tokens enter through a learnt gate that starts at 0):

- ``ssl``: SimCLR on the train+val sequences for ``ssl_steps`` steps: two random views of each
  barcode (a window of ≥ 80 % at a random offset, 2 % point mutations) are the positive pair
  (``views`` objective, τ = 0.1);
- ``random``: the same encoder at its (seeded) initialisation — a random projection of the
  5-mer counts, so it already tracks k-mer cosine;
- ``clibd``: the ``ssl`` DNA tower + a small mean-pooled BERT over taxonomy strings
  ``"order family genus"`` trained with label-aware CLIP (same genus = positive) for
  ``clibd_steps`` steps at lr 1e-3 (:data:`CLIBD`; a CLS-pooled text tower at lr 5e-4 kept every
  prompt at cosine 0.99 — zero-shot at chance); used for zero-shot genus classification.

Baselines: overlapping k-mer frequency vectors, k = 4, 5, 6 (cosine 1-NN).

Metrics (each with a percentile-bootstrap 95% interval over specimens): 1-NN species
accuracy (seen test → train keys), 1-NN genus accuracy of unseen species whose genus is
in train, linear-probe species accuracy (logistic regression, C chosen on val),
BIOSCAN-style micro/macro top-1 accuracy per rank (order, family, genus, species) for seen
and unseen queries against the train keys, and zero-shot genus accuracy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd

from . import TRUNK, TEXT_HF, TEXT_HF_NODROP, Stopwatch, accuracy_ci, block_result, cosine_1nn, pretrain, verdict
from medfm.demo.machine import gemm_gflops
from medfm.evaluation.vectors import l2_normalize

from .baselines import kmer_frequencies
from .efficiency import crossover_note, dna_curve

RANKS = ("order_name", "family_name", "genus_name", "species_name")
#: k = 6 non-overlapping tokens for the transformer + a bag of overlapping 5-mers added to the pooled
#: output (trunk gate 0 at start: the random tower is a random projection of 5-mer counts)
DNA_OPTIONS = {"k": 6, "max_length": 660, "tower": "vit", "pool": "mean", "kmer_bag": 5,
               "trunk_gate": 0.0}
#: the DNA tower's trunk: 2 blocks (the suite's width 128); chosen for CPU minutes, see README
DNA_TRUNK = {**TRUNK, "trunk": {**TRUNK["trunk"], "depth": 2}}
#: SimCLR views of one barcode: a random window of ≥ 80 % (random offset) and 2 % point mutations
VIEWS = {"name": "views", "weight": 1.0, "temperature": 0.1, "view": {"crop": 0.8, "mutation": 0.02}}
TAXONOMY_RANKS = ["order_name", "family_name", "genus_name"]


def load_table(data_dir: Path, n_species=None, n_per_species=None, seed: int = 0) -> pd.DataFrame:
    """The barcode table (sequences cleaned by the ``dna`` adapter's reader), optionally subsampled.

    Subsampling keeps the genera with two species so the unseen-genus protocol stays defined.
    """
    from medfm.modalities.dna import read_sequence_table

    df = read_sequence_table(Path(data_dir) / "dna" / "coi_barcodes_100_species.tsv")
    rng = np.random.default_rng(seed)
    if n_species:
        per_genus = df.groupby("genus_name")["species_name"].nunique()
        multi = sorted(df[df["genus_name"].isin(per_genus[per_genus > 1].index)]["species_name"].unique())[:4]
        rest = sorted(set(df["species_name"]) - set(multi))
        keep = multi + list(rng.choice(rest, size=max(0, n_species - len(multi)), replace=False))
        df = df[df["species_name"].isin(keep)]
    if n_per_species:
        n = min(int(n_per_species), int(df.groupby("species_name").size().min()))
        df = df.groupby("species_name").sample(n=n, random_state=seed)
    df = df.reset_index(drop=True)
    df["id"] = df["processid"].astype(str)
    df["patient_id"] = df["processid"].astype(str)  # one specimen per row
    return df


def split_species(df: pd.DataFrame, *, n_unseen: int, n_test: int, n_val: int, seed: int = 0) -> pd.Series:
    """``split`` per row in {train, val, test, unseen} (see the module docstring)."""
    rng = np.random.default_rng(seed)
    per_genus = df.groupby("genus_name")["species_name"].unique()
    unseen: List[str] = []
    for genus in sorted(per_genus.index):
        sp = sorted(per_genus[genus])
        if len(sp) > 1:
            unseen.append(str(rng.choice(sp)))
    rest = sorted(set(df["species_name"]) - set(unseen))
    unseen += list(rng.choice(rest, size=max(0, n_unseen - len(unseen)), replace=False))
    split = pd.Series("train", index=df.index, dtype=object)
    split[df["species_name"].isin(unseen)] = "unseen"
    for sp, idx in df[~df["species_name"].isin(unseen)].groupby("species_name").groups.items():
        order = rng.permutation(np.asarray(idx))
        split[order[:n_test]] = "test"
        split[order[n_test:n_test + n_val]] = "val"
    return split


def _embed(model, df: pd.DataFrame, modality: str = "dna") -> np.ndarray:
    import torch
    from medfm.evaluation.embed import embed_manifest

    with torch.no_grad():
        emb = embed_manifest(model, df, modality, column="nucleotides", batch_size=128, progress=False)
    if emb.skipped:
        raise RuntimeError(f"{len(emb.skipped)} sequences could not be embedded: {emb.skipped[:3]}")
    return emb.emb


def mean_pairwise_cosine(X: np.ndarray, n: int = 500, seed: int = 0) -> float:
    """Mean off-diagonal cosine of up to ``n`` rows: near 1 = collapsed/collinear embeddings."""
    rng = np.random.default_rng(seed)
    X = X[rng.permutation(len(X))[:n]]
    X = l2_normalize(X, axis=1)
    c = X @ X.T
    return float((c.sum() - np.trace(c)) / max(1, c.size - len(c)))


def evaluate_representation(X: np.ndarray, df: pd.DataFrame, *, n_boot: int, seed: int,
                            probe: bool = True) -> Dict[str, Any]:
    """Every frozen-embedding metric of one representation ``X (N, D)`` (rows = ``df`` rows)."""
    from medfm.evaluation.probes import linear_probe
    from medfm.evaluation.tasks import run_bioscan

    X = l2_normalize(X, axis=1)  # cosine everywhere
    split = df["split"].to_numpy()
    keys = np.flatnonzero(np.isin(split, ["train", "val"]))
    test = np.flatnonzero(split == "test")
    unseen = np.flatnonzero(split == "unseen")
    train_genera = set(df["genus_name"].iloc[keys])
    unseen_g = unseen[df["genus_name"].iloc[unseen].isin(train_genera).to_numpy()]
    out: Dict[str, Any] = {"mean_pairwise_cosine": {"value": mean_pairwise_cosine(X, seed=seed)}}
    nn = cosine_1nn(X[test], X[keys])
    out["1nn_species_acc_seen"] = accuracy_ci(df["species_name"].iloc[test], df["species_name"].iloc[keys[nn]],
                                              n_boot=n_boot, seed=seed)
    if unseen_g.size:
        nn = cosine_1nn(X[unseen_g], X[keys])
        out["1nn_genus_acc_unseen"] = accuracy_ci(df["genus_name"].iloc[unseen_g], df["genus_name"].iloc[keys[nn]],
                                                  n_boot=n_boot, seed=seed)
    if probe:
        tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
        classes = sorted(df["species_name"].iloc[keys].unique())
        cidx = {c: i for i, c in enumerate(classes)}
        y = np.asarray([cidx.get(s, -1) for s in df["species_name"]])
        mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
        Z = (X - mu) / sd
        res = linear_probe(Z[tr], y[tr], Z[va], y[va], Z[test], len(classes), Cs=(0.01, 0.1, 1.0, 10.0), seed=seed)
        pred = np.asarray(classes)[res["proba"].argmax(1)]
        out["probe_species_acc_seen"] = accuracy_ci(df["species_name"].iloc[test], pred, n_boot=n_boot, seed=seed)
        out["probe_species_acc_seen"]["C"] = res["C"]
    # BIOSCAN protocol: queries = seen test + unseen, keys = train+val, nearest key's labels; each query its
    # own bootstrap cluster (medfm.evaluation.tasks.run_bioscan)
    queries = np.concatenate([test, unseen])
    labels = df[list(RANKS)].astype(str)
    bio = run_bioscan(X[queries], labels.iloc[queries].reset_index(drop=True), X[keys],
                      labels.iloc[keys].reset_index(drop=True), list(RANKS), seen=np.isin(split[queries], ["test"]),
                      n_boot=n_boot, seed=seed)
    for part in ("seen", "unseen"):
        if not bio.metrics[f"{part}/n"]:
            continue
        for r in RANKS:
            for kind in ("micro", "macro"):
                name = f"{part}/{r}/{kind}"
                out[f"bioscan_{part}_{r.replace('_name', '')}_{kind}"] = {
                    "value": bio.metrics[name], "ci": list(bio.ci.get(name, (np.nan, np.nan))),
                    "n": int(bio.metrics[f"{part}/n"])}
    return out


#: CLIBD stage settings (chosen on val zero-shot over 3 seeds, README "CLIBD stability"); the
#: keywords of :func:`_clibd_config`
CLIBD = {"pool": "mean", "lr": 1e-3, "views": 0.0}


def _clibd_config(budget: Dict[str, Any], seed: int, *, pool: str = "cls", lr: float = 5e-4, views: float = 0.0,
                  steps: int = None, warmup_frac: float = 0.1, dropout: bool = True) -> Dict[str, Any]:
    """Run config of the CLIBD stage: the DNA tower + a taxonomy-text BERT, label-aware CLIP on genus.

    ``pool``: the text tower's pooling; ``views`` > 0 keeps the DNA views loss with that weight.
    """
    steps = int(steps or budget["clibd_steps"])
    text = {"taxonomy_columns": TAXONOMY_RANKS, "max_length": 24, "vocab_size": 2048, "min_frequency": 1,
            "pool": pool, "hf_config": TEXT_HF if dropout else TEXT_HF_NODROP}
    objectives = [{"name": "clip", "weight": 1.0, "mode": "pairs", "label_column": "genus_name"}]
    if views:
        objectives.append({**VIEWS, "weight": float(views), "modalities": ["dna"]})
    return {"model": {**DNA_TRUNK, "modalities": {"dna": dict(DNA_OPTIONS), "text": text}},
            "data": {"split": "train", "columns": {"dna": "nucleotides", "text": "genus_name"},
                     "label_columns": ["genus_name"], "batch_size": int(budget["batch_size"])},
            "objectives": objectives,
            "optim": {"lr": float(lr), "weight_decay": 0.05, "warmup_steps": max(1, int(steps * warmup_frac))},
            "train": {"max_steps": steps, "seed": seed}}


def ssl_config(budget: Dict[str, Any], seed: int, steps: int = None) -> Dict[str, Any]:
    """Run config of the SimCLR-views stage of the DNA tower (``ssl_steps`` steps unless ``steps``)."""
    steps = int(steps or budget["ssl_steps"])
    return {"model": {**DNA_TRUNK, "modalities": {"dna": dict(DNA_OPTIONS)}},
            "data": {"split": "train", "columns": {"dna": "nucleotides"}, "batch_size": int(budget["batch_size"])},
            "objectives": [dict(VIEWS)],
            "optim": {"lr": 1e-3, "weight_decay": 0.05, "warmup_steps": max(1, steps // 10)},
            "train": {"max_steps": steps, "seed": seed}}


CURVE_METRICS = ("1nn_species_acc_seen", "1nn_genus_acc_unseen", "bioscan_unseen_family_micro",
                 "bioscan_unseen_order_micro")


def learning_curve(reps: Dict[str, Dict[str, Any]], info: Dict[str, Any], steps: List[int], df: pd.DataFrame, *,
                   n_boot: int, seed: int) -> List[Dict[str, Any]]:
    """1-NN metrics (with CIs) vs training minutes: random init, the kept intermediate checkpoints
    at ``steps`` and the final ``ssl`` tower. Minutes = step × the run's mean seconds per step."""
    from medfm import load_pretrained

    sec_per_step = info["seconds"] / max(1, info["steps"])
    points = [(0, reps["random"])]
    for s in steps:
        ck = info.get("checkpoints", {}).get(s)
        if ck is not None and s < info["steps"]:
            points.append((s, evaluate_representation(_embed(load_pretrained(ck).eval(), df), df, n_boot=n_boot,
                                                      seed=seed, probe=False)))
    points.append((info["steps"], reps["ssl"]))
    rows = []
    for s, metrics in points:
        row = {"step": s, "minutes": round(s * sec_per_step / 60, 2)}
        for m in CURVE_METRICS:
            if m in metrics:
                row[m] = round(metrics[m]["value"], 3)
                row[m + "_ci"] = [round(v, 3) for v in metrics[m]["ci"]]
        rows.append(row)
    return rows


def zero_shot_genus(model, df: pd.DataFrame, X_dna: np.ndarray, *, n_boot: int, seed: int) -> Dict[str, Any]:
    """Classify unseen-species sequences among every genus's taxonomy string ``"order family genus"``."""
    from medfm.evaluation.embed import encode_values, logit_scale
    from medfm.evaluation.zeroshot import multiclass_scores
    from medfm.modalities.text import taxonomy_text

    genera = df.drop_duplicates("genus_name").sort_values("genus_name")
    prompts = [taxonomy_text(r, TAXONOMY_RANKS) for r in genera.to_dict("records")]
    names = genera["genus_name"].astype(str).tolist()
    W = encode_values(model, "text", prompts, batch_size=128, source="genus prompt")
    out_pc = mean_pairwise_cosine(W, seed=seed)
    split = df["split"].to_numpy()
    train_genera = set(df["genus_name"][np.isin(split, ["train", "val"])])
    out: Dict[str, Any] = {"n_classes": len(names), "text_prompt_mean_pairwise_cosine": {"value": out_pc}}
    for part, mask in (("unseen_species", split == "unseen"),
                       ("unseen_species_genus_in_train", (split == "unseen") & df["genus_name"].isin(train_genera).to_numpy()),
                       ("unseen_species_genus_not_in_train", (split == "unseen") & ~df["genus_name"].isin(train_genera).to_numpy()),
                       ("seen_test", split == "test")):
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            continue
        scores = multiclass_scores(X_dna[idx], W, logit_scale(model))
        pred = np.asarray(names)[scores.argmax(1)]
        out[f"zeroshot_genus_acc_{part}"] = accuracy_ci(df["genus_name"].iloc[idx], pred, n_boot=n_boot, seed=seed)
    out["chance"] = 1.0 / len(names)
    return out


def run(data_dir: Path, out_dir: Path, budget: Dict[str, Any], seed: int = 0) -> Dict[str, Any]:
    out_dir = Path(out_dir)
    sw = Stopwatch()
    res = block_result(budget=dict(budget))
    nb = int(budget["n_boot"])
    res["gemm_gflops"] = gemm_gflops(1024)
    res["notes"].append(f"fp32 GEMM rate at the start of the block: {res['gemm_gflops']:.1f} GFLOP/s "
                        f"(1024² matmul, torch threads as the suite); timings scale with it.")
    with sw("load"):
        df = load_table(data_dir, budget.get("n_species"), budget.get("n_per_species"), seed)
        df["split"] = split_species(df, n_unseen=int(budget["n_unseen"]), n_test=int(budget["n_test_per_species"]),
                                    n_val=int(budget["n_val_per_species"]), seed=seed)
    counts = df.groupby("split").agg(sequences=("id", "size"), species=("species_name", "nunique"),
                                     genera=("genus_name", "nunique")).reset_index()
    res["tables"]["split"] = counts.to_dict("records")
    unseen_sp = sorted(df.loc[df["split"] == "unseen", "species_name"].unique())
    res["tables"]["unseen_species"] = unseen_sp
    train_genera = set(df.loc[df["split"].isin(["train", "val"]), "genus_name"])
    res["notes"].append(f"{len(unseen_sp)} unseen species; "
                        f"{sum(df.loc[df['split'] == 'unseen'].drop_duplicates('species_name')['genus_name'].isin(train_genera))}"
                        f" of them have their genus in train (the only ones the genus 1-NN protocol can score).")
    reps: Dict[str, Dict[str, Any]] = {}
    with sw("kmer_baselines"):
        for k in (4, 5, 6):
            X = kmer_frequencies(df["nucleotides"].tolist(), k)
            X_kmer6 = X
            reps[f"kmer{k}"] = evaluate_representation(X, df, n_boot=nb, seed=seed, probe=(k == 4))
            res["baselines"].append(f"kmer{k}")
    ssl_cfg = ssl_config(budget, seed)
    train_df = df[df["split"].isin(["train", "val"])].assign(split="train")
    curve_steps = [int(c) for c in budget.get("curve_steps", [])]
    with sw("ssl_pretrain"):
        ssl, random_init, info = pretrain(ssl_cfg, train_df[["id", "patient_id", "split", "nucleotides"]],
                                          out_dir / "ssl", checkpoint_every=min(curve_steps) if curve_steps else 0)
    res["training"] = {"ssl": info}
    res["trunk_gate"] = {"random": float(random_init.towers["dna"].trunk_gate.detach()),
                         "ssl": float(ssl.towers["dna"].trunk_gate.detach())}
    with sw("embed_eval"):
        X_rep = {name: _embed(model, df) for name, model in (("ssl", ssl), ("random", random_init))}
        for name, X in X_rep.items():
            reps[name] = evaluate_representation(X, df, n_boot=nb, seed=seed)
    res["baselines"].append("random")
    with sw("label_efficiency"):  # the task API's curve: ssl vs its random twin vs k-mer 6, crossover n
        curve = dna_curve(X_rep["ssl"], X_rep["random"], X_kmer6, df, out_dir, seeds=int(budget.get("curve_seeds", 5)))
        res["label_efficiency"], res["tables"]["label_efficiency"] = curve, curve["table"]
        res["plots"].append(out_dir / curve["plot"])
        res["notes"] += crossover_note("DNA species", curve)
    with sw("learning_curve"):
        res["tables"]["learning_curve"] = learning_curve(reps, info, curve_steps, df, n_boot=nb, seed=seed)
    with sw("clibd_train"):
        def init(model):
            model.towers["dna"].load_state_dict(ssl.towers["dna"].state_dict())
            model.projections["dna"].load_state_dict(ssl.projections["dna"].state_dict())
        cols = ["id", "patient_id", "split", "nucleotides", *TAXONOMY_RANKS]
        clibd, _, cinfo = pretrain(_clibd_config(budget, seed, **CLIBD), train_df[cols], out_dir / "clibd",
                                   init=init)
    res["training"]["clibd"] = cinfo
    chance_loss = float(np.log(int(budget["batch_size"])))
    if cinfo["loss_last"] is not None and abs(cinfo["loss_last"] - chance_loss) < 0.02:
        res["notes"].append(f"CLIBD did not learn within its budget: the contrastive loss ended at "
                            f"{cinfo['loss_last']:.3f} ≈ ln(batch {budget['batch_size']}) = {chance_loss:.3f}, i.e. "
                            f"uniform similarities (collapse); zero-shot numbers below are therefore at chance.")
    with sw("clibd_eval"):
        Xc = _embed(clibd, df)
        reps["clibd"] = evaluate_representation(Xc, df, n_boot=nb, seed=seed, probe=False)
        zs = zero_shot_genus(clibd, df, Xc, n_boot=nb, seed=seed)
    res["zeroshot"] = zs
    # flat metrics: "<representation>/<metric>"
    for rep, metrics in reps.items():
        for m, v in metrics.items():
            res["metrics"][f"{rep}/{m}"] = v
    for m, v in zs.items():
        if isinstance(v, dict):
            res["metrics"][f"clibd/{m}"] = v
    for m in ("1nn_species_acc_seen", "1nn_genus_acc_unseen", "probe_species_acc_seen",
              "bioscan_seen_species_macro", "bioscan_unseen_genus_micro", "bioscan_unseen_order_micro"):
        for base in ("random", "kmer4", "kmer5", "kmer6"):
            if m in reps["ssl"] and m in reps[base]:
                res["comparisons"].append({"task": f"dna {m}", "ours": "ssl", "baseline": base,
                                           "ours_value": reps["ssl"][m]["value"], "baseline_value": reps[base][m]["value"],
                                           "verdict": verdict(reps["ssl"][m], reps[base][m])})
    res["timing_s"] = sw.times
    res["seed"] = seed
    return res
