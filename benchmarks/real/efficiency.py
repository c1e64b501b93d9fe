"""Label efficiency in the real-data suite: the task API's curve (:mod:`medfm.evaluation.curve`) on a
block's representations, its crossover n, and the plot.

DNA: species of the seen species (train rows drawn, test rows scored; the val rows stay out), for
the SimCLR tower, its random-weights twin and k-mer frequency features (k = 6, standardised with
the train rows' statistics, as ``medfm evaluate probe --baseline kmer`` does). Specimens are the
sampling groups.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import pandas as pd

from medfm.evaluation.baselines import standardize
from medfm.evaluation.curve import label_efficiency, plot_curve

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


def crossover_note(block: str, curve: Mapping[str, Any]) -> List[str]:
    """Closing-note lines: the crossover n of each reference against the model."""
    return [f"{block} label efficiency ({curve['metric']}, {curve['seeds']} draws per n): {name} "
            + (f"catches the model at n = {c['n']} per class." if c["n"] is not None else
               "does not catch the model within the data.") for name, c in curve["crossover"].items()]
