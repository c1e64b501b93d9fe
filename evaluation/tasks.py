"""The evaluation protocols, each one function on embeddings → a :class:`TaskResult`.

The CLI (``medfm zeroshot``, ``medfm evaluate retrieval|probe|bioscan``), the demo and the
real-data benchmarks embed their samples their own way, then call these functions, so a
protocol — which rows enter, how the bootstrap resamples, what chance is — is written once:

=====================  ======================================================================
:func:`run_retrieval`  both directions query ↔ gallery: R@k, MRR, mAP, ranks; patient-cluster
                       bootstrap CIs over the queries of each direction; chance R@k and mAP
:func:`run_zeroshot`   scores from a text (or prototype) classifier, classification metrics
                       with patient-cluster bootstrap CIs; chance = majority class / 0.5 AUROC
:func:`run_probe`      linear probe (C on validation), kNN, few-shot; multi-class or
                       multi-label (one-vs-rest); CIs over test patients
:func:`run_bioscan`    BIOSCAN top-1 accuracy per rank, seen vs unseen, with cluster-bootstrap
                       CIs over the queries of each part
=====================  ======================================================================

Each accepts an optional :class:`Baseline` — a classical encoder's features of the same rows —
scored by the same protocol, its metrics stored beside the model's as ``baseline/<name>/<metric>``.

The clinical additions — calibration and an operating threshold, subgroups, the label-efficiency
curve with its crossover n, prompt sensitivity, partial ECG inputs — extend a finished result:
``add_calibration``, ``add_subgroups``, ``add_curve``, ``add_prompt_sensitivity`` and ``add_lead_sets``
of :mod:`.tasks_clinical`.

A :class:`TaskResult` serialises with :meth:`TaskResult.to_dict` (the fields of ``results.json``)
and renders with :meth:`TaskResult.markdown` (``report.md``); arrays that plots and
``predictions.npz`` need stay in :attr:`TaskResult.details`, which is never serialised.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import sparse

from medfm.errors import DataError
from medfm.metrics import _group_index, bootstrap_replicates, cluster_bootstrap, metrics_with_ci

from . import probes
from .report import render_markdown, to_jsonable
from .retrieval import bioscan_accuracy, ground_truth, metrics_from_ranks, nearest_key, rank_arrays, recall_chance
from .zeroshot import zeroshot_scores

Interval = Tuple[float, float]


@dataclass
class Baseline:
    """A classical baseline's features of the same rows as the model's embeddings.

    ``features``: one ``(N, D)`` array per input of the task — retrieval ``(query, gallery)``,
    probe ``(X,)``, BIOSCAN ``(query, keys)``; ``info``: its description (``name`` required).
    """

    features: Tuple[np.ndarray, ...]
    info: Dict[str, Any]

    @property
    def prefix(self) -> str:
        return f"baseline/{self.info['name']}/"


@dataclass
class TaskResult:
    """One evaluation: point metrics, their 95% intervals, chance levels, and how they were made.

    Attributes:
        task: ``"retrieval" | "zeroshot-multiclass" | "zeroshot-multilabel" | "zeroshot-prototypes" |
            "probe" | "probe-multilabel" | "bioscan"``.
        n: evaluated samples (queries, test rows).
        metrics: ``{name: value}`` (NaN where undefined).
        ci: ``{name: (low, high)}`` percentile bootstrap intervals (empty with ``n_boot=0``).
        chance: ``{name: value}`` what a random ranking / the majority class scores.
        settings: the protocol's parameters (``n_boot``, ``seed``, ``ks``, ``knn_k``, ...).
        info: descriptive fields that go to ``results.json`` as they are (classes, split sizes,
            chosen ``C``, ``baseline`` description).
        ci_method: how the intervals were made, in words.
        details: arrays for plots and ``predictions.npz`` (scores, ranks); never serialised.
    """

    task: str
    n: int
    metrics: Dict[str, float]
    ci: Dict[str, Interval] = field(default_factory=dict)
    chance: Dict[str, float] = field(default_factory=dict)
    settings: Dict[str, Any] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)
    ci_method: str = ""
    details: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        """The record's fields of ``results.json`` (merge with :func:`~medfm.evaluation.embed.base_record`)."""
        out: Dict[str, Any] = {"task": self.task, "n": int(self.n), **self.info, "metrics": dict(self.metrics),
                               "ci": {k: [float(v[0]), float(v[1])] for k, v in self.ci.items()}}
        if self.ci_method:
            out["ci_method"] = self.ci_method
        if self.chance:
            out["chance"] = dict(self.chance)
        out["settings"] = dict(self.settings)
        return out

    def markdown(self, plots: Sequence[Any] = ()) -> str:
        """The human report (:func:`medfm.evaluation.report.render_markdown` of :meth:`to_dict`)."""
        return render_markdown(to_jsonable(self.to_dict()), plots)

    def value(self, name: str) -> Dict[str, Any]:
        """``{"value", "ci", "chance"}`` of one metric (CI and chance None when absent)."""
        ci = self.ci.get(name)
        return {"value": self.metrics.get(name, float("nan")), "ci": None if ci is None else [ci[0], ci[1]],
                "chance": self.chance.get(name)}


def _ci_method(n_boot: int, unit: str) -> str:
    return f"percentile, {n_boot} cluster-bootstrap replicates over {unit}"


# ------------------------------------------------------------------ retrieval
def _one_direction(query: np.ndarray, gallery: np.ndarray, gt: sparse.spmatrix, groups: np.ndarray, prefix: str,
                   *, ks: Sequence[int], n_boot: int, seed: int, source: str):
    """Metrics, CIs, chance and per-query ranks of one direction (``gt (Q, G)``)."""
    r = rank_arrays(query, gallery, gt, source=source)
    metrics = metrics_from_ranks(r["first_rank"], r["ap"], ks=ks, prefix=prefix)
    metrics[prefix + "n_queries"] = int(r["first_rank"].size)
    metrics[prefix + "n_no_match"] = r["n_no_match"]
    ci: Dict[str, Interval] = {}
    if n_boot > 0 and r["first_rank"].size:
        ci = cluster_bootstrap(lambda f, ap: metrics_from_ranks(f, ap, ks=ks, prefix=prefix), r["first_rank"], r["ap"],
                               groups[r["query_index"]], n_boot=n_boot, seed=seed)
    n_rel = np.asarray(sparse.csr_matrix(gt).sum(1)).ravel()[r["query_index"]]
    n_gallery = int(len(gallery))
    chance = {f"{prefix}R@{k}": recall_chance(n_rel, n_gallery, k) for k in ks}
    chance[f"{prefix}mAP"] = float(np.mean(n_rel / n_gallery)) if n_rel.size else float("nan")
    return metrics, ci, chance, r


def unique_items(values: Sequence[Any]) -> Tuple[np.ndarray, sparse.csr_matrix]:
    """Items with equal content merged: ``values (N,)`` → first index of each distinct value ``(U,)``
    and the ``(N, U)`` 0/1 membership matrix (row i belongs to the distinct value it equals)."""
    first: Dict[str, int] = {}
    col = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        col[i] = first.setdefault(str(v), len(first))
    member = sparse.csr_matrix((np.ones(len(values), np.float32), (np.arange(len(values)), col)),
                               shape=(len(values), len(first)))
    return np.fromiter(first.values(), dtype=np.int64, count=len(first)), member


def _dedupe_gallery(gallery: np.ndarray, gt: sparse.spmatrix, values: Optional[Sequence[Any]]):
    """A gallery of distinct contents: ``(G, D), (Q, G)`` → ``(U, D), (Q, U)``; a distinct item is
    relevant when any of its copies is. ``values`` None: unchanged."""
    if values is None:
        return gallery, gt
    first, member = unique_items(list(values))
    return np.asarray(gallery)[first], ((sparse.csr_matrix(gt) @ member) > 0).tocsr()


def run_retrieval(query: np.ndarray, gallery: np.ndarray, query_keys: Sequence[Any], gallery_keys: Sequence[Any],
                  *, query_groups: Sequence[Any], gallery_groups: Sequence[Any], names: Tuple[str, str] = ("query", "gallery"),
                  ks: Iterable[int] = (1, 5, 10), n_boot: int = 1000, seed: int = 0, both: bool = True,
                  baseline: Optional[Baseline] = None, source: str = "gallery",
                  query_values: Optional[Sequence[Any]] = None,
                  gallery_values: Optional[Sequence[Any]] = None) -> TaskResult:
    """Retrieval in both directions with many-to-many ground truth.

    Args:
        query: ``(Q, D)`` and gallery ``(G, D)`` L2-normalised embeddings (inner product = cosine).
        query_keys, gallery_keys: ground-truth keys per row (:func:`~.retrieval.keys_from_manifest`);
            a query matches the gallery items whose keys it shares.
        query_groups, gallery_groups: ``(Q,)``, ``(G,)`` patient ids; each direction's bootstrap
            resamples the patients of its queries.
        names: ``(a, b)`` in the metric names ``{a}_to_{b}_R@1`` and ``{b}_to_{a}_R@1``.
        n_boot: bootstrap replicates (0 = no intervals).
        both: also the reverse direction (gallery items query the queries).
        baseline: features ``(query (Q, D'), gallery (G, D'))`` ranked the same way.
        query_values, gallery_values: the content of each row (a cell: text, sequence, file path).
            When given, a side used as the gallery holds each distinct content once (relevant when
            any copy is): copies of one text would otherwise fill the top k with the same answer
            (R@5 = R@1 by construction) and the chance levels would count copies as choices.
            Queries stay one per row. ``info["n_gallery_unique"]`` gives the sizes.

    Returns:
        metrics ``{a}_to_{b}_{R@k,MRR,mAP,median_rank,mean_rank,n_queries,n_no_match}`` and the
        reverse; chance ``R@k`` (exact expectation of a random ranking) and ``mAP`` (≈ relevant
        fraction). ``details["ranks"][direction]``: :func:`~.retrieval.rank_arrays` output.
    """
    ks = tuple(int(k) for k in ks)
    a, b = names
    gt = ground_truth(list(query_keys), list(gallery_keys))
    qg, gg = np.asarray(query_groups).astype(str), np.asarray(gallery_groups).astype(str)
    sides = [("", np.asarray(query), np.asarray(gallery))]
    if baseline is not None:
        sides.append((baseline.prefix, *baseline.features))
    metrics: Dict[str, float] = {}
    ci: Dict[str, Interval] = {}
    chance: Dict[str, float] = {}
    ranks: Dict[str, Dict[str, np.ndarray]] = {}
    n_unique: Dict[str, int] = {}
    for side, zq, zg in sides:
        directions = [(a, b, zq, zg, gt, qg, gallery_values)] + ([(b, a, zg, zq, gt.T, gg, query_values)] if both else [])
        for (x, y, za, zb, g, groups, values) in directions:
            zb, g = _dedupe_gallery(zb, g, values)
            n_unique[f"{x}_to_{y}"] = int(len(zb))
            m, c, ch, r = _one_direction(za, zb, g, groups, f"{side}{x}_to_{y}_", ks=ks, n_boot=n_boot, seed=seed,
                                         source=source)
            if side:  # the baseline's counts equal the model's (same rows, same ground truth)
                m = {k: v for k, v in m.items() if not k.endswith(("n_queries", "n_no_match"))}
            else:
                chance.update(ch)
            metrics.update(m)
            ci.update(c)
            ranks[f"{side}{x}_to_{y}"] = r
    info: Dict[str, Any] = {"n_gallery": int(len(gallery))}
    if query_values is not None or gallery_values is not None:
        info["n_gallery_unique"] = n_unique
    if baseline is not None:
        info["baseline"] = dict(baseline.info)
    return TaskResult("retrieval", int(len(query)), metrics, ci, chance,
                      settings={"ks": list(ks), "n_boot": n_boot, "seed": seed}, info=info,
                      ci_method=_ci_method(n_boot, "query patients"), details={"ranks": ranks})


# ------------------------------------------------------------------ zero-shot
def _classification(y: np.ndarray, scores: np.ndarray, groups: Sequence[Any], classes: Sequence[str], *,
                    prefix: str, n_boot: int, seed: int):
    point, ci = metrics_with_ci(y, scores, list(groups), list(classes), n_boot=n_boot, seed=seed)
    return {prefix + k: v for k, v in point.items()}, {prefix + k: v for k, v in ci.items()}


def classification_chance(y: np.ndarray, prefix: str = "") -> Dict[str, float]:
    """Chance levels: majority-class accuracy (multi-class ``y (N,)``) and 0.5 macro AUROC."""
    y = np.asarray(y)
    out = {prefix + "macro_auroc": 0.5}
    if y.ndim == 1 and y.size:
        out[prefix + "accuracy"] = float(np.bincount(y.astype(int)).max() / y.size)
    return out


def run_zeroshot(emb: np.ndarray, y: np.ndarray, classifier: Dict[str, np.ndarray], *, classes: Sequence[str],
                 groups: Sequence[Any], logit_scale: float = 100.0, n_boot: int = 1000, seed: int = 0,
                 task: Optional[str] = None) -> TaskResult:
    """Zero-shot classification of ``emb (N, D)`` by a text or prototype classifier.

    Args:
        y: ``(N,)`` class indices (multi-class) or ``(N, C)`` 0/1 (multi-label), in ``classes`` order.
        classifier: :func:`~.zeroshot.text_classifier` output ``{"positive": (C, D)[, "negative": (C, D)]}``
            or ``{"positive": prototypes (C, D)}`` (:func:`~.zeroshot.class_prototypes`).
        groups: ``(N,)`` patient ids (the bootstrap resamples patients).
        logit_scale: the model's temperature (cosine × scale → softmax / sigmoid).
        task: the record's task name (default ``zeroshot-multiclass`` / ``zeroshot-multilabel``).

    Returns:
        :func:`~medfm.metrics.classification_metrics` with CIs; ``details``: ``y``, ``scores (N, C)``.
    """
    y = np.asarray(y)
    scores = zeroshot_scores(emb, classifier, logit_scale)
    metrics, ci = _classification(y, scores, groups, classes, prefix="", n_boot=n_boot, seed=seed)
    task = task or ("zeroshot-multilabel" if y.ndim == 2 else "zeroshot-multiclass")
    return TaskResult(task, int(len(y)), metrics, ci, classification_chance(y),
                      settings={"n_boot": n_boot, "seed": seed}, info={"classes": list(classes), "logit_scale": logit_scale},
                      ci_method=_ci_method(n_boot, "patients"), details={"y": y, "scores": scores})


# ---------------------------------------------------------------------- probe
def _probe_features(X: np.ndarray, y: np.ndarray, tr, va, te, n_classes: int, *, knn_k: Optional[int],
                    seed: int, Cs: Sequence[float]) -> Dict[str, Any]:
    """Linear (and kNN) test-set probabilities of one feature set."""
    if y.ndim == 2:
        lin = probes.multilabel_linear_probe(X[tr], y[tr], X[va], y[va], X[te], Cs=Cs, seed=seed)
        knn = probes.multilabel_knn_probe(X[tr], y[tr], X[te], k=knn_k) if knn_k else None
    else:
        lin = probes.linear_probe(X[tr], y[tr], X[va], y[va], X[te], n_classes, Cs=Cs, seed=seed)
        knn = probes.knn_probe(X[tr], y[tr], X[te], n_classes, k=knn_k) if knn_k else None
    return {"C": lin["C"], "linear": lin["proba"], "knn": knn}


def run_probe(X: np.ndarray, y: np.ndarray, splits: Sequence[str], *, classes: Sequence[str], groups: Sequence[Any],
              knn_k: Optional[int] = 20, shots: Sequence[int] = (1, 5, 10), few_shot_seeds: int = 5,
              Cs: Sequence[float] = probes.DEFAULT_CS, n_boot: int = 1000, seed: int = 0,
              baseline: Optional[Baseline] = None, source: str = "manifest") -> TaskResult:
    """Probes on frozen features: linear (``C`` on validation, refit on train+val), kNN, few-shot.

    Args:
        X: ``(N, D)`` features; y: ``(N,)`` class indices or ``(N, C)`` 0/1 (multi-label: one-vs-rest
            probes, no few-shot).
        splits: ``(N,)`` ``"train" | "val" | "test"`` (:func:`~.probes.resolve_splits`; other values unused).
        groups: ``(N,)`` patient ids (test patients are resampled for the CIs).
        knn_k: neighbours of the cosine kNN probe (None: no kNN); shots: few-shot k per class (() = none).
        baseline: features ``(X' (N, D'),)`` probed the same way.

    Returns:
        metrics ``linear/<metric>``, ``knn/<metric>``, ``fewshot/<k>shot_*``; info: split sizes, ``linear_C``.
        ``details``: ``y_test``, ``linear`` and ``knn`` test probabilities, ``test`` mask.
    """
    y = np.asarray(y)
    splits = np.asarray(splits, dtype=object)
    tr, va, te = splits == "train", splits == "val", splits == "test"
    for name, m in (("train", tr), ("test", te)):
        if not m.any():
            raise DataError(f"no embedded sample in the {name} split", source=source, field="split")
    if y.ndim == 1 and len(np.unique(y[tr])) < 2:
        raise DataError("the train split holds a single class", source=source, field="label")
    g = np.asarray(groups).astype(str)[te]
    sides = [("", np.asarray(X))] + ([(baseline.prefix, baseline.features[0])] if baseline is not None else [])
    metrics: Dict[str, float] = {}
    ci: Dict[str, Interval] = {}
    info: Dict[str, Any] = {"classes": list(classes), "n_train": int(tr.sum()), "n_val": int(va.sum()),
                            "n_test": int(te.sum())}
    details: Dict[str, Any] = {"y_test": y[te], "test": te}
    for side, F in sides:
        res = _probe_features(F, y, tr, va, te, len(classes), knn_k=knn_k, seed=seed, Cs=Cs)
        for name in ("linear", "knn"):
            if res[name] is not None:
                m, c = _classification(y[te], res[name], g, classes, prefix=f"{side}{name}/", n_boot=n_boot, seed=seed)
                metrics.update(m)
                ci.update(c)
        if side:
            info["baseline"] = {**baseline.info, "linear_C": res["C"]}
        else:
            info["linear_C"] = res["C"]
            details.update(linear=res["linear"], knn=res["knn"])
            if y.ndim == 1 and shots:
                metrics.update({f"fewshot/{k}": v for k, v in probes.few_shot(
                    F[tr], y[tr], F[te], y[te], len(classes), shots=shots, seeds=range(few_shot_seeds)).items()})
    chance = {}
    for name in ("linear", "knn"):
        if f"{name}/macro_auroc" in metrics:
            chance.update(classification_chance(y[te], prefix=f"{name}/"))
    return TaskResult("probe-multilabel" if y.ndim == 2 else "probe", int(te.sum()), metrics, ci, chance,
                      settings={"knn_k": knn_k, "shots": list(shots) if y.ndim == 1 else [],
                                "few_shot_seeds": few_shot_seeds, "Cs": [float(c) for c in Cs],
                                "n_boot": n_boot, "seed": seed},
                      info=info, ci_method=_ci_method(n_boot, "test patients"), details=details)


# -------------------------------------------------------------------- BIOSCAN
def micro_macro(y: np.ndarray, p: np.ndarray) -> Dict[str, float]:
    """Top-1 accuracy and mean per-class recall over the classes present in ``y (N,)`` (what
    ``sklearn.metrics.balanced_accuracy_score`` computes), in numpy for bootstrap replicates."""
    hit = (np.asarray(y) == np.asarray(p)).astype(np.float64)
    cls, inv = np.unique(y, return_inverse=True)
    recall = np.bincount(inv, weights=hit, minlength=cls.size) / np.bincount(inv, minlength=cls.size)
    return {"micro": float(hit.mean()), "macro": float(recall.mean())}


def bioscan_intervals(query: np.ndarray, query_labels: pd.DataFrame, keys: np.ndarray, key_labels: pd.DataFrame,
                      ranks: Sequence[str], seen: np.ndarray, groups: Optional[Sequence[Any]], *, n_boot: int,
                      seed: int, prefix: str = "") -> Dict[str, Interval]:
    """Cluster-bootstrap intervals of the BIOSCAN accuracies, one resampling per part (seen/unseen)
    shared by every rank. ``groups`` ``(Q,)`` (None: each query its own cluster)."""
    nearest = nearest_key(query, keys)
    out: Dict[str, Interval] = {}
    for part, mask in (("seen", seen), ("unseen", ~seen)):
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            continue
        codes = {}
        for r in ranks:
            y = query_labels[r].astype(str).to_numpy()[idx]
            p = key_labels[r].astype(str).to_numpy()[nearest[idx]]
            lut = {v: i for i, v in enumerate(sorted(set(y) | set(p)))}
            codes[r] = (np.asarray([lut[v] for v in y]), np.asarray([lut[v] for v in p]))
        clusters = _group_index(np.asarray(groups)[idx] if groups is not None else np.arange(idx.size))

        def fn(rows, codes=codes):
            vals = {}
            for r, (y, p) in codes.items():
                mm = micro_macro(y[rows], p[rows])
                vals[f"{prefix}{part}/{r}/micro"], vals[f"{prefix}{part}/{r}/macro"] = mm["micro"], mm["macro"]
            return vals

        for k, arr in bootstrap_replicates(fn, clusters, n_boot=n_boot, seed=seed).items():
            arr = arr[~np.isnan(arr)]
            out[k] = (float(np.quantile(arr, 0.025)), float(np.quantile(arr, 0.975))) if arr.size else \
                (float("nan"), float("nan"))
    return out


def run_bioscan(query: np.ndarray, query_labels: pd.DataFrame, keys: np.ndarray, key_labels: pd.DataFrame,
                ranks: Sequence[str], *, seen: Optional[np.ndarray] = None, train_species: Optional[Iterable[str]] = None,
                groups: Optional[Sequence[Any]] = None, n_boot: int = 1000, seed: int = 0,
                baseline: Optional[Baseline] = None) -> TaskResult:
    """BIOSCAN-CLIP protocol (:func:`~.retrieval.bioscan_accuracy`) with bootstrap intervals.

    Args:
        query: ``(Q, D)``; keys: ``(K, D)``; query_labels / key_labels: one column per rank.
        ranks: coarse to fine; the last is the species.
        seen / train_species: which queries count as seen (see :func:`~.retrieval.bioscan_accuracy`).
        groups: ``(Q,)`` cluster ids for the bootstrap (patients, specimens); None: each query alone.
        baseline: features ``(query (Q, D'), keys (K, D'))``.

    Returns:
        metrics ``<seen|unseen>/<rank>/<micro|macro>`` and ``<part>/n``; CIs for the accuracies.
    """
    ranks = list(ranks)
    point = bioscan_accuracy(query, query_labels, keys, key_labels, ranks, seen=seen, train_species=train_species)
    if seen is None:
        sp = ranks[-1]
        pool = set(map(str, train_species)) if train_species is not None else set(key_labels[sp].astype(str))
        seen = query_labels[sp].astype(str).isin(pool).to_numpy()
    seen = np.asarray(seen, dtype=bool)
    metrics, ci = dict(point), {}
    if n_boot > 0:
        ci.update(bioscan_intervals(query, query_labels, keys, key_labels, ranks, seen, groups, n_boot=n_boot,
                                    seed=seed))
    info: Dict[str, Any] = {"ranks": ranks, "n_keys": int(len(keys))}
    if baseline is not None:
        bq, bk = baseline.features
        metrics.update({baseline.prefix + k: v for k, v in bioscan_accuracy(
            bq, query_labels, bk, key_labels, ranks, seen=seen).items()})
        if n_boot > 0:
            ci.update(bioscan_intervals(bq, query_labels, bk, key_labels, ranks, seen, groups, n_boot=n_boot,
                                        seed=seed, prefix=baseline.prefix))
        info["baseline"] = dict(baseline.info)
    return TaskResult("bioscan", int(len(query)), metrics, ci, {}, settings={"n_boot": n_boot, "seed": seed},
                      info=info, ci_method=_ci_method(n_boot, "queries' clusters, per part (seen/unseen)"),
                      details={"seen": seen})
