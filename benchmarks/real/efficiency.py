"""Label efficiency in the real-data suite: the task API's curve (:mod:`medfm.evaluation.curve`) on a
block's representations, its crossover n, and the plot.

DNA: species of the seen species (train rows drawn, test rows scored; the val rows stay out), for
the SimCLR tower, its random-weights twin and k-mer frequency features (k = 6, standardised with
the train rows' statistics, as ``medfm evaluate probe --baseline kmer`` does). Specimens are the
sampling groups.

ECG: one SNOMED code (the most frequent) present vs absent, leave-one-source-out as the block's
probes: per held-out source, rows of the two other sources are drawn from and the held-out rows
scored (macro AUROC), with that fold's pretrained tower, the random-weights tower and the simple
ECG features (standardised on the training sources). The curve is the mean over the folds that
have both classes on both sides; its band is the range of the fold means; the crossover is taken
on the mean curve. With 50 records this is a small-sample curve: read it with its band.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import pandas as pd

from medfm.evaluation.baselines import standardize
from medfm.evaluation.curve import crossover_n, label_efficiency, plot_curve

DNA_NS = (1, 2, 5, 10, 20, "all")


def curve_block(features: Mapping[str, np.ndarray], labels: Sequence[Any], splits: Sequence[str],
                groups: Sequence[Any], out_png: Path, *, ns: Sequence[Any], seeds: int, metric: str) -> Dict[str, Any]:
    """The curve of ``features`` (``"model"`` first) on class labels; adds a table and the plot's file name."""
    classes = sorted(set(map(str, labels)))
    y = np.array([classes.index(str(v)) for v in labels])
    curve = label_efficiency(features, y, splits, groups, ns=ns, seeds=seeds, metric=metric)
    curve["table"] = [{"n": n, **{name: per[metric]["mean"][i] for name, per in curve["curves"].items()}}
                      for i, n in enumerate(curve["ns"])]
    curve["plot"] = plot_curve(curve, out_png).name
    return curve


def dna_curve(X_model: np.ndarray, X_random: np.ndarray, X_kmer: np.ndarray, df: pd.DataFrame, out_dir: Path, *,
              seeds: int = 5, ns: Sequence[Any] = DNA_NS) -> Dict[str, Any]:
    """Species accuracy against labelled barcodes per species (seen species' train → test rows)."""
    keep = df["split"].isin(["train", "test"]).to_numpy()
    sub = df[keep].reset_index(drop=True)
    tr = (sub["split"] == "train").to_numpy()
    feats = {"model": X_model[keep], "random weights": X_random[keep], "baseline/kmer6": standardize(X_kmer[keep], tr)}
    return curve_block(feats, sub["species_name"].tolist(), sub["split"].tolist(), sub["patient_id"].tolist(),
                       Path(out_dir) / "dna_label_efficiency.png", ns=ns, seeds=seeds, metric="accuracy")


ECG_NS = (1, 2, 5, 10, "all")


def ecg_curve(emb_by_fold: Mapping[str, np.ndarray], emb_random: np.ndarray, features: np.ndarray, ok: pd.DataFrame,
              code: str, out_dir: Path, *, seeds: int = 5, ns: Sequence[Any] = ECG_NS) -> Dict[str, Any]:
    """Leave-one-source-out label-efficiency curve of ``code`` (see the module docstring)."""
    y = np.array([int(code in dx) for dx in ok["dx"]])
    folds = []
    for held in sorted(emb_by_fold):
        test = (ok["source"] == held).to_numpy()
        if len(set(y[test])) < 2 or len(set(y[~test])) < 2:
            continue
        splits = np.where(test, "test", "train")
        feats = {"model": emb_by_fold[held], "random weights": emb_random,
                 "baseline/ecg-features": standardize(features, ~test)}
        folds.append(label_efficiency(feats, y, splits, ok["record"].tolist(), ns=ns, seeds=seeds, metric="macro_auroc"))
    if not folds:
        raise ValueError(f"no fold has both classes of code {code} on both sides")
    grid = [n for n in folds[0]["ns"] if all(n in f["ns"] for f in folds)]
    curves: Dict[str, Any] = {}
    for name in folds[0]["curves"]:
        means = np.array([[f["curves"][name]["macro_auroc"]["mean"][f["ns"].index(n)] for n in grid] for f in folds])
        curves[name] = {"macro_auroc": {"mean": np.nanmean(means, 0).tolist(), "low": np.nanmin(means, 0).tolist(),
                                        "high": np.nanmax(means, 0).tolist()}}
    curve = {"ns": grid, "metric": "macro_auroc", "seeds": seeds, "model": "model", "curves": curves, "code": code,
             "n_folds": len(folds), "band": "range of the fold means",
             "crossover": {name: crossover_n(grid, curves["model"]["macro_auroc"]["mean"], c["macro_auroc"]["mean"])
                           for name, c in curves.items() if name != "model"}}
    curve["table"] = [{"n": n, **{name: c["macro_auroc"]["mean"][i] for name, c in curves.items()}}
                      for i, n in enumerate(grid)]
    curve["plot"] = plot_curve(curve, Path(out_dir) / "ecg_label_efficiency.png").name
    return curve


def crossover_note(block: str, curve: Mapping[str, Any]) -> List[str]:
    """Closing-note lines: the crossover n of each reference against the model."""
    return [f"{block} label efficiency ({curve['metric']}, {curve['seeds']} draws per n): {name} "
            + (f"catches the model at n = {c['n']} per class." if c["n"] is not None else
               "does not catch the model within the data.") for name, c in curve["crossover"].items()]
