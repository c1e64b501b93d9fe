"""The clinical additions of a manifest-level probe or zero-shot run (:mod:`.runs`): what
``--calibrate``, ``--subgroups``, ``--curve`` and ``--leads`` add to a finished protocol result.

Embedding is the caller's (``embed(model, rows) -> Embeddings``, with its skip reporting), so these
functions only re-embed what an option needs: the random-weight twin's embeddings for the curve and
the masked inputs of each lead subset.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

import medfm
from medfm.errors import DataError

from . import tasks
from .calibration import plot_reliability
from .curve import DEFAULT_NS, plot_curve
from .partial import masked_leads
from .tasks_clinical import add_calibration, add_curve, add_lead_sets, add_subgroups, probe_validation_scores

RANDOM = "random weights"


@dataclass
class ClinicalOptions:
    """What to add to a probe / zero-shot run.

    ``calibrate``: ECE raw and temperature-scaled, reliability diagram, a validation threshold
    (``threshold``: ``youden`` | ``sensitivity:T``); ``calibration_split``: the zero-shot validation rows.
    ``subgroups``: ``[(column, rule)]`` (:func:`~.subgroups.parse_subgroups`), ``min_subgroup_size``.
    ``curve``: label-efficiency curve at ``curve_ns`` over ``curve_seeds`` draws (probe only), with the
    model's ``random_twin`` and the run's baseline. ``leads``: ECG lead subsets (``["I", "limb"]``).
    """

    calibrate: bool = False
    threshold: str = "youden"
    ece_bins: int = 15
    calibration_split: str = "val"
    subgroups: List[Tuple[str, Optional[str]]] = field(default_factory=list)
    min_subgroup_size: int = 20
    curve: bool = False
    curve_ns: List[Any] = field(default_factory=lambda: [*DEFAULT_NS, "all"])
    curve_seeds: int = 5
    curve_metric: str = "macro_auroc"
    random_twin: bool = True
    leads: List[str] = field(default_factory=list)


EmbedFn = Callable[[Any, pd.DataFrame], Any]  # (model, rows) -> Embeddings


def random_twin(model: Any, seed: int = 0) -> Any:
    """The same architecture and adapters with freshly initialised weights (seeded), in eval mode."""
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the saved config's own moved settings, warned at load
        torch.manual_seed(seed)
        twin = medfm.create_model(copy.deepcopy(model.config), adapters=model.adapters)
    return twin.eval()


def _aligned(emb: Any, ids: Sequence[str], what: str, source: str) -> np.ndarray:
    """``emb.emb`` rows in the order of ``ids`` (every id must be there)."""
    where = {i: k for k, i in enumerate(emb.ids)}
    missing = [i for i in ids if i not in where]
    if missing:
        raise DataError(f"{what}: {len(missing)} sample(s) embedded by the model could not be embedded here, "
                        f"e.g. {missing[:3]}", source=source)
    return emb.emb[[where[i] for i in ids]]


def probe_extras(res: tasks.TaskResult, opts: ClinicalOptions, *, X: np.ndarray, y: np.ndarray, splits: np.ndarray,
                 rows: pd.DataFrame, ids: Sequence[str], model: Any, modality: str, labelled: pd.DataFrame, embed: EmbedFn,
                 baseline: Optional[tasks.Baseline], probe_kw: Dict[str, Any], out: Path, source: str) -> List[Path]:
    """Calibration, subgroups, curve and lead subsets of a linear probe; returns the plots written."""
    plots: List[Path] = []
    te, groups = res.details["test"], rows["patient_id"].astype(str).to_numpy()
    y_te, lin = res.details["y_test"], res.details["linear"]
    if opts.calibrate:
        s_val = probe_validation_scores(X, y, splits, res.info["linear_C"], len(res.info["classes"]),
                                        seed=res.settings.get("seed", 0))
        cal = add_calibration(res, y_te, lin, groups[te], y_val=None if s_val is None else y[splits == "val"],
                              scores_val=s_val, threshold_rule=opts.threshold, n_bins=opts.ece_bins, prefix="linear/")
        plots.append(plot_reliability(cal["bins"], out / "reliability.png", title="linear probe reliability (test)"))
    if opts.subgroups:
        add_subgroups(res, y_te, lin, groups[te], rows[te].reset_index(drop=True), opts.subgroups,
                      min_size=opts.min_subgroup_size, prefix="linear/", source=source)
    if opts.curve and np.asarray(y).ndim == 1:
        features = {"model": X}
        if opts.random_twin:
            features[RANDOM] = _aligned(embed(random_twin(model, res.settings.get("seed", 0)), labelled), ids,
                                        "random-weight twin", source)
        if baseline is not None:
            features[f"baseline/{baseline.info['name']}"] = baseline.features[0]
        add_curve(res, features, y, splits, groups, ns=opts.curve_ns, seeds=opts.curve_seeds, metric=opts.curve_metric,
                  source=source)
        plots.append(plot_curve(res.info["label_efficiency"], out / "label_efficiency.png"))
    if opts.leads:
        per, kept = {}, {}
        for spec in opts.leads:
            with masked_leads(model, modality, spec) as names:
                Xl = _aligned(embed(model, labelled), ids, f"--leads {spec}", source)
            per[spec] = tasks.run_probe(Xl, y, splits, **{**probe_kw, "knn_k": None, "shots": ()})
            kept[spec] = names
        add_lead_sets(res, per, kept)
    return plots


def zeroshot_extras(res: tasks.TaskResult, opts: ClinicalOptions, *, y: np.ndarray, rows: pd.DataFrame,
                    ids: Sequence[str], model: Any, modality: str, score: Callable[[np.ndarray], np.ndarray],
                    val: Optional[Tuple[np.ndarray, np.ndarray]], eval_rows: pd.DataFrame, embed: EmbedFn,
                    zs_kw: Dict[str, Any], out: Path, source: str) -> List[Path]:
    """Calibration (``val``: ``(y_val, val embeddings)`` or None), subgroups and lead subsets of a zero-shot run.

    Lead subsets re-embed the evaluated rows only: the classifier (text prompts, or prototypes of the full-lead
    support rows) stays the run's, as when a model built on 12-lead data meets a device with fewer leads."""
    plots: List[Path] = []
    groups = rows["patient_id"].astype(str).to_numpy()
    scores = res.details["scores"]
    if opts.calibrate:
        cal = add_calibration(res, y, scores, groups, y_val=None if val is None else val[0],
                              scores_val=None if val is None else score(val[1]), threshold_rule=opts.threshold,
                              n_bins=opts.ece_bins)
        plots.append(plot_reliability(cal["bins"], out / "reliability.png", title=f"{res.task} reliability"))
    if opts.subgroups:
        add_subgroups(res, y, scores, groups, rows, opts.subgroups, min_size=opts.min_subgroup_size, source=source)
    if opts.leads:
        per, kept = {}, {}
        for spec in opts.leads:
            with masked_leads(model, modality, spec) as names:
                emb = _aligned(embed(model, eval_rows), ids, f"--leads {spec}", source)
            per[spec] = tasks.run_zeroshot(emb, y, **zs_kw)
            kept[spec] = names
        add_lead_sets(res, per, kept)
    return plots
