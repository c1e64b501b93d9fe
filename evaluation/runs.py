"""Manifest-level evaluations: a model directory and a manifest in, ``results.json`` + ``report.md`` +
plots + ``predictions.npz`` out. What ``medfm zeroshot`` and ``medfm evaluate retrieval|probe|bioscan``
run, each one call after argument parsing.

Each function loads the model, reads the manifest, embeds the rows it needs (unreadable samples are
reported on stderr by id and counted in the record, never silently dropped), calls the protocol in
:mod:`.tasks`, and writes the outputs. The record is
:func:`~.embed.base_record` (model identity, manifest hash) merged with :meth:`.tasks.TaskResult.to_dict`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from medfm.data import select_split
from medfm.data.splits import check_no_leakage
from medfm.errors import DataError, UsageError

from . import probes, tasks
from .baselines import probe_features, retrieval_features
from . import zeroshot as zs
from .compare import write_predictions
from .embed import (Embeddings, base_record, check_usable, embed_manifest, encode_values, load_model, logit_scale, open_manifest,
                    report_skipped, require_modality, rows_for)
from .labels import JOINED, is_multilabel_column, join_binary_columns, multilabel_targets
from .report import plot_confusion, plot_rank_bars, plot_recall_at_k, plot_roc, write_evaluation
from .prompt_sets import ensemble_set, load_prompt_sets
from .retrieval import keys_from_manifest
from .runs_clinical import ClinicalOptions, probe_extras, zeroshot_extras
from .tasks_clinical import add_prompt_sensitivity


@dataclass
class RunInputs:
    """What every manifest-level evaluation needs.

    ``columns``: ``{modality: manifest column}`` (``--column`` flags over the checkpoint's mapping);
    ``data``: ``{"root", "confine"}``, where path cells may lead (``--data-root``, ``--no-confine-paths``;
    :mod:`medfm.data.confine`), and how samples are loaded: ``num_workers``, ``threads``, ``cache_dir``
    (``--workers``, ``--threads``, ``--cache-dir``; :mod:`.embed_loader`);
    ``init``: ``{modality: init spec}`` weight imports (``--init``); ``baseline``: a classical
    baseline's name (:mod:`.baselines`) scored on the same samples (read from the same mapped
    columns), or None; ``max_skip_fraction``: the largest share of rows holding a modality that may be
    unreadable (``None``: 0.5; :mod:`medfm.data.skips`).
    """

    model: str
    manifest: str
    out: str
    n_boot: int = 1000
    batch_size: int = 32
    seed: int = 0
    progress: bool = True
    init: Optional[Dict[str, Dict[str, Any]]] = None
    columns: Dict[str, str] = field(default_factory=dict)
    data: Dict[str, Any] = field(default_factory=dict)
    baseline: Optional[str] = None
    max_skip_fraction: Optional[float] = None


@dataclass
class EvaluationRun:
    """A finished evaluation: the protocol's result, the written record and the files' paths."""

    result: tasks.TaskResult
    record: Dict[str, Any]
    paths: Dict[str, Path]


def _embed(model: Any, df: pd.DataFrame, modality: str, inp: RunInputs) -> Embeddings:
    """Embed ``df``'s ``modality`` cells; skipped ids to stderr; refuse when nothing could be embedded or
    more rows than ``inp.max_skip_fraction`` were unreadable (with a summary by reason)."""
    emb = embed_manifest(model, df, modality, batch_size=inp.batch_size, progress=inp.progress,
                         column=inp.columns.get(modality), **inp.data)
    if emb.skipped:
        print(report_skipped(emb, modality), file=sys.stderr)
    if len(emb.ids) == 0 and not emb.skipped:
        raise DataError(f"no {modality!r} sample could be embedded", source=inp.manifest, field=modality)
    check_usable(emb, modality, what=f"this evaluation ({modality})", max_skip_fraction=inp.max_skip_fraction,
                 source=inp.manifest)
    return emb


def _write(inp: RunInputs, fp: str, df: pd.DataFrame, result: tasks.TaskResult, plots: Sequence[Any],
           **fields: Any) -> EvaluationRun:
    fields.update(result.to_dict())
    rec = base_record(fields.pop("task"), inp.model, fp, inp.manifest, df, **fields)
    paths = write_evaluation(Path(inp.out), rec, [p for p in plots if p is not None])
    return EvaluationRun(result, rec, paths)


def _out(inp: RunInputs) -> Path:
    out = Path(inp.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


# ------------------------------------------------------------------ retrieval
def _cells(model, rows: pd.DataFrame, modality: str, inp: RunInputs) -> List[str]:
    """What the adapter reads for each row (an inline value, a path, or the text it builds from
    the row's columns, e.g. ``taxonomy_columns``), for merging copies of one content."""
    adapter, col = model.adapters[modality], (inp.columns or {}).get(modality) or modality
    return [str(adapter.source_from_row(row, col)) for row in rows.to_dict("records")]


def evaluate_retrieval(inp: RunInputs, query_modality: str, gallery_modality: str, *, match: str = "id",
                       split: Optional[str] = None) -> EvaluationRun:
    """Query-modality ↔ gallery-modality retrieval on the rows of ``split`` (all rows by default).

    Ground truth ``match``: ``"id"`` (same row), ``"patient"`` or ``"label:<column>"``.
    """
    qm, gm = query_modality, gallery_modality
    model, fp = load_model(inp.model, init=inp.init)
    require_modality(model, qm)
    require_modality(model, gm)
    df = open_manifest(inp.manifest, split=split)
    keys_from_manifest(df.head(1), match, inp.manifest)  # validate the ground truth before embedding
    eq, eg = _embed(model, df, qm, inp), _embed(model, df, gm, inp)
    rq, rg = rows_for(df, eq.ids), rows_for(df, eg.ids)
    baseline = None
    if inp.baseline:
        bq, bg, info = retrieval_features(inp.baseline, model, qm, gm, rq, rg, df.attrs.get("base_dir"),
                                          columns=inp.columns)
        baseline = tasks.Baseline((bq, bg), info)
    res = tasks.run_retrieval(eq.emb, eg.emb, keys_from_manifest(rq, match, inp.manifest),
                              keys_from_manifest(rg, match, inp.manifest), query_groups=rq["patient_id"],
                              gallery_groups=rg["patient_id"], names=(qm, gm), n_boot=inp.n_boot, seed=inp.seed,
                              baseline=baseline, source=inp.manifest,
                              query_values=_cells(model, rq, qm, inp), gallery_values=_cells(model, rg, gm, inp))
    out = _out(inp)
    ranks = res.details["ranks"]
    curves = {}
    for direction, r in ranks.items():
        label = direction
        if baseline is not None and direction.startswith(baseline.prefix):
            label = f"{baseline.info['name']}: {direction[len(baseline.prefix):]}"
        curves[label.replace("_to_", " → ")] = r["first_rank"]
    plot = plot_recall_at_k(curves, out / "recall_at_k.png")
    run = _write(inp, fp, df, res, [plot], query_modality=qm, gallery_modality=gm, match=match,
                 n_skipped=len(eq.skipped) + len(eg.skipped))
    r = ranks[f"{qm}_to_{gm}"]  # the query → gallery direction, for `evaluate compare`
    write_predictions(out, ids=np.asarray(eq.ids)[r["query_index"]],
                      groups=rq["patient_id"].astype(str).to_numpy()[r["query_index"]], task="retrieval",
                      first_rank=r["first_rank"], ap=r["ap"])
    return run


# ---------------------------------------------------------------------- probe
def evaluate_probe(inp: RunInputs, modality: str, *, label_column: Optional[str] = None,
                   label_columns: Sequence[str] = (), knn_k: int = 20, shots: Sequence[int] = (1, 5, 10),
                   few_shot_seeds: int = 5, test_size: float = 0.2, val_size: float = 0.1,
                   clinical: Optional[ClinicalOptions] = None) -> EvaluationRun:
    """Linear / kNN / few-shot probes of ``modality``'s embeddings (``clinical``: :mod:`.runs_clinical` additions).

    Labels: ``label_column`` (one class per row, or ``|``-separated findings: multi-label) or
    ``label_columns`` (0/1 columns: multi-label). Splits: the manifest's ``split`` column, else a
    deterministic patient split; a patient in two splits is refused.
    """
    if bool(label_column) == bool(label_columns):
        raise UsageError("give exactly one of --label-column COL or --label-columns A,B,C")
    binary_cols = list(label_columns)
    model, fp = load_model(inp.model, init=inp.init)
    require_modality(model, modality)
    for label in [label_column] if label_column else binary_cols:  # a table modality never reads its label
        if getattr(model.adapters.get(modality), "is_feature", lambda c: False)(label):
            raise UsageError(f"the label column {label!r} is a feature of the {modality!r} modality")
    df = open_manifest(inp.manifest, require=[label_column] if label_column else binary_cols)
    multilabel = bool(binary_cols) or is_multilabel_column(df[label_column])
    if binary_cols:
        df[JOINED] = join_binary_columns(df, binary_cols, source=inp.manifest)
    source_col = JOINED if binary_cols else label_column
    if not multilabel:
        labelled = df[df[label_column].notna()].reset_index(drop=True)
        labelled.attrs.update(df.attrs)
        if len(labelled) == 0:
            raise DataError("no labelled row", source=inp.manifest, field=label_column)
    else:
        labelled = df
    splits_all = probes.resolve_splits(labelled, test_size=test_size, val_size=val_size, seed=inp.seed,
                                       source=inp.manifest)
    emb = _embed(model, labelled, modality, inp)
    rows = rows_for(labelled, emb.ids)
    pos = labelled.reset_index().set_index("id").loc[emb.ids, "index"].to_numpy()
    splits = splits_all[pos]
    if multilabel:
        y, classes = multilabel_targets(list(rows[source_col]), binary_cols or None)
    else:
        y, classes = probes.encode_labels(list(rows[label_column]))
    baseline = None
    if inp.baseline and not multilabel:  # the same rows, splits, probes and bootstrap on the baseline's features
        B, info = probe_features(inp.baseline, model, modality, rows, splits == "train", labelled.attrs.get("base_dir"),
                                 column=inp.columns.get(modality))
        baseline = tasks.Baseline((B,), info)
    probe_kw = dict(classes=classes, groups=rows["patient_id"], n_boot=inp.n_boot, seed=inp.seed, source=inp.manifest)
    res = tasks.run_probe(emb.emb, y, splits, knn_k=knn_k, shots=shots, few_shot_seeds=few_shot_seeds,
                          baseline=baseline, **probe_kw)
    out = _out(inp)
    extra_plots = [] if clinical is None else probe_extras(
        res, clinical, X=emb.emb, y=y, splits=splits, rows=rows, ids=list(emb.ids), model=model, modality=modality,
        labelled=labelled, embed=lambda m, d: _embed(m, d, modality, inp), baseline=baseline, probe_kw=probe_kw,
        out=out, source=inp.manifest)
    y_te, lin, te = res.details["y_test"], res.details["linear"], res.details["test"]
    if multilabel:
        plots = [plot_roc(y_te, lin, classes, out / "roc.png", title="linear probe ROC (test, per finding)")]
        fields = {"label_column": None if binary_cols else label_column, "label_columns": binary_cols or None}
    else:
        plots = [plot_roc(y_te, lin, classes, out / "roc.png", title="linear probe ROC (test)"),
                 plot_confusion(y_te, lin.argmax(1), classes, out / "confusion.png", title="linear probe (test)")]
        fields = {"label_column": label_column,
                  "split_source": "manifest split column" if "split" in df.columns else "deterministic split by patient"}
    run = _write(inp, fp, df, res, plots + extra_plots, modality=modality, knn_k=knn_k, n_skipped=len(emb.skipped),
                 **fields)
    write_predictions(out, ids=np.asarray(emb.ids)[te], groups=rows["patient_id"].astype(str).to_numpy()[te],
                      task="multilabel" if multilabel else "multiclass", y_true=y_te, scores=lin, classes=classes,
                      scores_scaled=(res.details.get("calibration") or {}).get("scaled"))
    return run


# -------------------------------------------------------------------- BIOSCAN
def evaluate_bioscan(inp: RunInputs, query_modality: str, *, key_modality: Optional[str] = None,
                     query_split: str = "test", key_split: str = "train", train_split: Optional[str] = None,
                     ranks: Sequence[str] = ("order_name", "family_name", "genus_name", "species_name")) -> EvaluationRun:
    """BIOSCAN accuracy: queries of ``query_split`` take the taxonomy of their nearest key of ``key_split``;
    species of ``train_split`` (default: the key split) are 'seen'. CIs resample query patients."""
    ranks = list(ranks)
    km = key_modality or query_modality
    model, fp = load_model(inp.model, init=inp.init)
    require_modality(model, query_modality)
    require_modality(model, km)
    full = open_manifest(inp.manifest, require=ranks + ["split"])
    qdf = open_manifest(inp.manifest, split=query_split)
    kdf = open_manifest(inp.manifest, split=key_split)
    train_df = open_manifest(inp.manifest, split=train_split) if train_split else kdf
    eq, ek = _embed(model, qdf, query_modality, inp), _embed(model, kdf, km, inp)
    qrows, krows = rows_for(qdf, eq.ids), rows_for(kdf, ek.ids)
    baseline = None
    if inp.baseline:
        bq, bk, info = retrieval_features(inp.baseline, model, query_modality, km, qrows, krows,
                                          full.attrs.get("base_dir"), columns=inp.columns)
        baseline = tasks.Baseline((bq, bk), info)
    res = tasks.run_bioscan(eq.emb, qrows, ek.emb, krows, ranks,
                            train_species=set(train_df[ranks[-1]].dropna().astype(str)),
                            groups=qrows["patient_id"].astype(str).to_numpy(), n_boot=inp.n_boot, seed=inp.seed,
                            baseline=baseline)
    out = _out(inp)
    return _write(inp, fp, full, res, [plot_rank_bars(res.metrics, ranks, out / "accuracy_by_rank.png")],
                  query_modality=query_modality, key_modality=km, query_split=query_split, key_split=key_split,
                  n_skipped=len(eq.skipped) + len(ek.skipped))


# ------------------------------------------------------------------ zero-shot
def evaluate_zeroshot(inp: RunInputs, modality: str, *, label_column: Optional[str] = None,
                      label_columns: Sequence[str] = (), prompts: Any = None, prototypes: bool = False,
                      support_split: str = "train", split: Optional[str] = None,
                      text_modality: str = "text", clinical: Optional[ClinicalOptions] = None) -> EvaluationRun:
    """Zero-shot classification of ``modality`` from prompt sets (a file, a folder, or a list of them:
    several sets are ensembled and each is also scored alone, :mod:`.prompt_sets`), or (``prototypes``)
    from class prototypes of the ``support_split`` rows (non-text zero-shot; support and evaluated
    patients must not overlap). ``clinical``: :mod:`.runs_clinical` additions."""
    if bool(prompts) == bool(prototypes):
        raise UsageError("give exactly one of --prompts FILE or --prototypes")
    binary_cols = list(label_columns)
    if bool(label_column) == bool(binary_cols):
        raise UsageError("give exactly one of --label-column COL or --label-columns A,B,C")
    prompt_sets = load_prompt_sets([prompts] if isinstance(prompts, str) else list(prompts)) if prompts else []
    prompt_set = (ensemble_set(prompt_sets) if len(prompt_sets) > 1 else prompt_sets[0]) if prompt_sets else None
    model, fp = load_model(inp.model, init=inp.init)
    require_modality(model, modality)
    if binary_cols:  # 0/1 columns → one '|'-separated column, the multi-label path below
        full = open_manifest(inp.manifest)
        full[JOINED] = join_binary_columns(full, binary_cols, source=inp.manifest)
        label_column = JOINED
    else:
        full = open_manifest(inp.manifest, require=[label_column])
    df = select_split(full, split)
    if len(df) == 0:
        raise DataError(f"no rows in split {split!r}", source=inp.manifest, field="split")
    if prototypes:
        if "split" not in full.columns:
            raise DataError("--prototypes needs a 'split' column (support rows vs evaluated rows)",
                            source=inp.manifest, field="split")
        if split is None:  # evaluate everything but the support split
            df = full[full["split"] != support_split]
        both = full[full["split"].isin([support_split, split] if split else list(full["split"]))]
        check_no_leakage(both["patient_id"], np.where(both["split"] == support_split, "support", "eval"),
                         ids=both["id"], source=inp.manifest)
    df = df[df[label_column].notna() | (prompt_set is not None and prompt_set.task == "multilabel")]
    df = df.reset_index(drop=True)
    df.attrs.update(full.attrs)
    if prompt_set is not None:  # validate the labels before spending time on embeddings
        zs.label_targets(list(df[label_column]), prompt_set, source=inp.manifest, column=label_column)
    emb = _embed(model, df, modality, inp)
    rows = rows_for(df, emb.ids)
    scale = logit_scale(model)
    extra: Dict[str, Any] = {}
    if prompt_set is not None:
        require_modality(model, text_modality)
        y = zs.label_targets(list(rows[label_column]), prompt_set, source=inp.manifest, column=label_column)
        clf = zs.text_classifier(lambda t: encode_values(model, text_modality, t, source="prompt"), prompt_set)
        classes: List[str] = list(prompt_set.classes)
        task = f"zeroshot-{prompt_set.task}"
        extra["prompt_set"] = prompt_set.name
    else:
        clf, y, classes, n_support = _prototype_classifier(model, full, rows, modality, label_column, support_split, inp)
        task = "zeroshot-prototypes"
        extra["n_support"] = n_support
    zs_kw = dict(classes=classes, groups=rows["patient_id"].astype(str).to_numpy(), logit_scale=scale,
                 n_boot=inp.n_boot, seed=inp.seed, task=task)
    res = tasks.run_zeroshot(emb.emb, y, clf, **zs_kw)
    if len(prompt_sets) > 1:
        encode = lambda t: encode_values(model, text_modality, t, source="prompt")  # noqa: E731
        add_prompt_sensitivity(res, {s.name: tasks.run_zeroshot(emb.emb, y, zs.text_classifier(encode, s), **zs_kw)
                                     for s in prompt_sets})
    out = _out(inp)
    scores = res.details["scores"]
    plots = [plot_roc(y, scores, classes, out / "roc.png", title=f"{task} ROC")]
    if y.ndim == 1:
        plots.append(plot_confusion(y, scores.argmax(1), classes, out / "confusion.png"))
    if clinical is not None:
        val = _validation(model, full, df, modality, label_column, clinical, inp, prompt_set, classes,
                          exclude_split=support_split if prototypes else None)
        plots += zeroshot_extras(res, clinical, y=y, rows=rows, ids=list(emb.ids), model=model, modality=modality,
                                 score=lambda E: zs.zeroshot_scores(E, clf, scale), val=val, eval_rows=df,
                                 embed=lambda m, d: _embed(m, d, modality, inp), zs_kw={"classifier": clf, **zs_kw},
                                 out=out, source=inp.manifest)
    run = _write(inp, fp, df, res, plots, modality=modality, n_patients=int(rows["patient_id"].nunique()),
                 label_column=label_column if not binary_cols else None, label_columns=binary_cols or None,
                 n_skipped=len(emb.skipped), skipped_ids=[s["id"] for s in emb.skipped], **extra)
    write_predictions(out, ids=emb.ids, groups=rows["patient_id"].astype(str),
                      task="multilabel" if y.ndim == 2 else "multiclass", y_true=y, scores=scores, classes=classes,
                      scores_scaled=(res.details.get("calibration") or {}).get("scaled"))
    return run


def _validation(model: Any, full: pd.DataFrame, evaluated: pd.DataFrame, modality: str, label_column: str,
                opts: ClinicalOptions, inp: RunInputs, prompt_set: Any, classes: Sequence[str],
                exclude_split: Optional[str] = None):
    """``(y_val, val embeddings)`` of the labelled ``opts.calibration_split`` rows that are not evaluated (nor of
    ``exclude_split``, the prototypes' support), or None."""
    if not opts.calibrate or "split" not in full.columns or opts.calibration_split == exclude_split:
        return None
    vdf = full[(full["split"].astype(str) == opts.calibration_split) & ~full["id"].isin(evaluated["id"])]
    vdf = vdf[vdf[label_column].notna() | (prompt_set is not None and prompt_set.task == "multilabel")]
    if prompt_set is None:  # prototypes: validation rows of the known classes only
        vdf = vdf[vdf[label_column].astype(str).isin(list(classes))]
    vdf = vdf.reset_index(drop=True)
    vdf.attrs.update(full.attrs)
    if len(vdf) == 0:
        return None
    ev = _embed(model, vdf, modality, inp)
    vals = list(rows_for(vdf, ev.ids)[label_column])
    if prompt_set is not None:
        return zs.label_targets(vals, prompt_set, source=inp.manifest, column=label_column), ev.emb
    return np.array([list(classes).index(str(v)) for v in vals], dtype=np.int64), ev.emb


def _prototype_classifier(model: Any, full: pd.DataFrame, rows: pd.DataFrame, modality: str, label_column: str,
                          support_split: str, inp: RunInputs):
    """``({"positive": prototypes (C, D)}, y (N,), classes, n_support)`` from the support split's rows."""
    support_df = select_split(full, support_split)
    support_df = support_df[support_df[label_column].notna()].reset_index(drop=True)
    sup = embed_manifest(model, support_df, modality, batch_size=inp.batch_size, progress=inp.progress,
                         column=inp.columns.get(modality), **inp.data)
    if len(sup.ids) == 0:
        raise DataError(f"empty support set (split {support_split!r})", source=inp.manifest)
    y_all, classes = probes.encode_labels(list(rows_for(support_df, sup.ids)[label_column]) + list(rows[label_column]))
    y_sup, y = y_all[:len(sup.ids)], y_all[len(sup.ids):]
    missing = sorted(set(classes[c] for c in y) - set(classes[c] for c in y_sup))
    if missing:
        raise DataError(f"class(es) {missing} have no example in the support split {support_split!r}",
                        source=inp.manifest, field=label_column)
    present = np.isin(y_sup, sorted(set(y_sup.tolist())))
    protos = zs.class_prototypes(sup.emb[present], y_sup[present], len(classes))
    return {"positive": protos}, y, classes, len(sup.ids)
