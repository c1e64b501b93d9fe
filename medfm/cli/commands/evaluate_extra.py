"""Parts of ``medfm evaluate`` kept apart from evaluate.py: ``evaluate compare`` and multi-label probes."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def add_compare_parser(sub) -> None:
    c = sub.add_parser(
        "compare", help="paired test of two evaluations on the same samples (DeLong for AUROC, bootstrap otherwise)",
        description="Aligns RESULTS_A and RESULTS_B (output directories of zeroshot, evaluate probe or evaluate "
                    "retrieval) on their common sample ids; the labels must agree. AUROC per class/finding: the "
                    "paired DeLong test. Every other metric: a paired patient-cluster bootstrap of B − A with a 95% "
                    "interval and p-value. Writes comparison.json and comparison.md to --out (default: RESULTS_B).")
    c.add_argument("results_a")
    c.add_argument("results_b")
    c.add_argument("--out", default=None)
    c.add_argument("--n-boot", type=int, default=1000)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=run_compare)


def run_compare(args) -> int:
    from medfm.errors import UsageError
    from medfm.evaluation.compare import compare_predictions, comparison_markdown, load_predictions
    from medfm.io import atomic_write_text, write_json

    if args.n_boot < 1:
        raise UsageError("--n-boot must be at least 1")
    a, b = load_predictions(args.results_a), load_predictions(args.results_b)
    res = compare_predictions(a, b, n_boot=args.n_boot, seed=args.seed, source=f"{args.results_a} vs {args.results_b}")
    out = Path(args.out or b["dir"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "comparison.json", res)
    atomic_write_text(out / "comparison.md", comparison_markdown(res))
    key = next((k for k in ("macro_auroc", "accuracy") if k in res["metrics"]), next(iter(res["metrics"]), None))
    if key:
        v = res["metrics"][key]
        print(f"{key}: A {v['a']:.4f}  B {v['b']:.4f}  diff {v['diff']:+.4f} "
              f"(95% CI {v['ci'][0]:+.4f} to {v['ci'][1]:+.4f}, p={v['p_value']:.3g}); "
              f"{len(res['delong'])} DeLong test(s); wrote {out / 'comparison.md'}")
    return 0


def run_multilabel_probe(args, model, fp, df, label_source: str, binary_cols) -> int:
    """``evaluate probe`` for multi-label targets: one-vs-rest linear probe and kNN; macro/per-finding metrics."""
    from medfm.errors import DataError
    from medfm.evaluation import probes
    from medfm.evaluation.compare import write_predictions
    from medfm.evaluation.embed import base_record, rows_for
    from medfm.evaluation.labels import multilabel_targets
    from medfm.metrics import metrics_with_ci
    from medfm.evaluation.report import plot_roc, write_evaluation

    from .evaluate import _embed

    splits_all = probes.resolve_splits(df, test_size=args.test_size, val_size=args.val_size, seed=args.seed,
                                       source=args.manifest)
    emb = _embed(model, df, args.modality, args)
    rows = rows_for(df, emb.ids)
    pos = df.reset_index().set_index("id").loc[emb.ids, "index"].to_numpy()
    splits = splits_all[pos]
    Y, classes = multilabel_targets(list(rows[label_source]), binary_cols or None)
    tr, va, te = (splits == "train"), (splits == "val"), (splits == "test")
    if not tr.any() or not te.any():
        raise DataError("no embedded sample in the train or test split", source=args.manifest, field="split")
    X = emb.emb
    lin = probes.multilabel_linear_probe(X[tr], Y[tr], X[va], Y[va], X[te], seed=args.seed)
    knn = probes.multilabel_knn_probe(X[tr], Y[tr], X[te], k=args.knn_k)
    groups = rows["patient_id"].astype(str).to_numpy()[te]
    metrics, ci = {}, {}
    for name, proba in (("linear", lin["proba"]), ("knn", knn)):
        pt, c = metrics_with_ci(Y[te], proba, groups, classes, n_boot=args.n_boot, seed=args.seed)
        metrics.update({f"{name}/{k}": v for k, v in pt.items()})
        ci.update({f"{name}/{k}": v for k, v in c.items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_roc(Y[te], lin["proba"], classes, out / "roc.png", title="linear probe ROC (test, per finding)")
    rec = base_record("probe-multilabel", args.model, fp, args.manifest, df, modality=args.modality,
                      label_column=None if binary_cols else label_source, label_columns=list(binary_cols) or None,
                      classes=classes, n=int(te.sum()), n_train=int(tr.sum()), n_val=int(va.sum()),
                      n_test=int(te.sum()), linear_C=lin["C"], knn_k=args.knn_k, metrics=metrics, ci=ci,
                      ci_method=f"percentile, {args.n_boot} cluster-bootstrap replicates over test patients",
                      n_skipped=len(emb.skipped))
    paths = write_evaluation(out, rec, [p for p in [plot] if p is not None])
    write_predictions(out, ids=np.asarray(emb.ids)[te], groups=groups, task="multilabel", y_true=Y[te],
                      scores=lin["proba"], classes=classes)
    print(f"multi-label probe ({len(classes)} findings, C={lin['C']:g}): test macro AUROC linear "
          f"{metrics['linear/macro_auroc']:.4f}, kNN {metrics['knn/macro_auroc']:.4f}; wrote {paths['results']}",
          file=sys.stdout)
    return 0
