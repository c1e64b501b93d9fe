"""``medfm evaluate retrieval|probe|bioscan``: retrieval metrics, linear/kNN/few-shot probes, BIOSCAN accuracy."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from medfm.cli.common import add_init_args, init_overrides


def _common(p) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="output directory (results.json, report.md, PNG plots)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (patients resampled); 0 = none")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    add_init_args(p)
    from medfm.cli.common import add_column_args

    add_column_args(p)
    p.add_argument("--baseline", default=None, metavar="NAME",
                   help="also score a classical baseline on the same samples: kmer (kmer<k>) for dna, tfidf for "
                        "text, ecg-features for ecg; its metrics go beside the model's as baseline/NAME/...")


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="retrieval metrics, BIOSCAN accuracy or probes on frozen embeddings")
    sub = p.add_subparsers(dest="evaluate_command", metavar="{retrieval,probe,bioscan,compare}")
    sub.required = True
    from .evaluate_extra import add_compare_parser

    add_compare_parser(sub)
    r = sub.add_parser(
        "retrieval", help="query-modality → gallery-modality retrieval, both directions",
        description="Ground truth --match: 'id' (the same manifest row: paired data), 'patient' (same "
                    "patient_id) or 'label:COL' (same label; '|'-separated cells are multi-label). Metrics "
                    "R@1/5/10, MRR, mAP, median/mean rank, named {query}_to_{gallery}_*.")
    _common(r)
    r.add_argument("--query-modality", required=True)
    r.add_argument("--gallery-modality", required=True)
    r.add_argument("--match", default="id", help="id | patient | label:COLUMN")
    r.add_argument("--split", default=None)
    r.set_defaults(func=run_retrieval)
    b = sub.add_parser(
        "probe", help="linear probe (C chosen on validation), kNN and few-shot on frozen embeddings",
        description="Splits from the manifest's 'split' column (train/val/test) or a patient-grouped split; "
                    "a patient in two splits is refused.")
    _common(b)
    b.add_argument("--modality", required=True)
    b.add_argument("--label-column", default=None,
                   help="class per row, or findings separated by '|' (multi-label: one-vs-rest probes)")
    b.add_argument("--label-columns", default=None, metavar="A,B,C", help="multi-label from 0/1 columns")
    b.add_argument("--knn-k", type=int, default=20)
    b.add_argument("--shots", default="1,5,10", help="few-shot k per class, comma-separated")
    b.add_argument("--few-shot-seeds", type=int, default=5)
    b.add_argument("--test-size", type=float, default=0.2, help="patient fraction for test when no split column")
    b.add_argument("--val-size", type=float, default=0.1)
    b.set_defaults(func=run_probe)
    t = sub.add_parser(
        "bioscan", help="BIOSCAN protocol: top-1 accuracy per taxonomic rank, seen vs unseen species",
        description="Queries (rows of --query-split) take the taxonomy of their nearest key (rows of "
                    "--key-split, embedded with --key-modality). Species of the --train-split rows (default: "
                    "the key split) are 'seen'. Micro and macro top-1 accuracy at each of --ranks.")
    _common(t)
    t.add_argument("--query-modality", required=True)
    t.add_argument("--key-modality", default=None, help="default: the query modality")
    t.add_argument("--query-split", default="test")
    t.add_argument("--key-split", default="train")
    t.add_argument("--train-split", default=None, help="split whose species count as seen (default: --key-split)")
    t.add_argument("--ranks", default="order_name,family_name,genus_name,species_name",
                   help="comma-separated rank columns, coarse to fine; the last is the species")
    t.set_defaults(func=run_bioscan)


def _embed(model, df, modality, args):
    from medfm.errors import DataError
    from medfm.evaluation.embed import embed_manifest, report_skipped

    from medfm.cli.common import column_map

    emb = embed_manifest(model, df, modality, batch_size=args.batch_size, progress=not args.no_progress,
                         column=column_map(args, args.model).get(modality))
    if emb.skipped:
        print(report_skipped(emb, modality), file=sys.stderr)
    if len(emb.ids) == 0:
        raise DataError(f"no {modality!r} sample could be embedded", source=args.manifest, field=modality)
    return emb


def run_retrieval(args) -> int:
    from medfm.evaluation.embed import base_record, load_model, open_manifest, require_modality, rows_for
    from medfm.metrics import cluster_bootstrap
    from medfm.evaluation.report import write_evaluation
    from medfm.evaluation.retrieval import ground_truth, keys_from_manifest, metrics_from_ranks, rank_arrays

    qm, gm = args.query_modality, args.gallery_modality
    model, fp = load_model(args.model, init=init_overrides(args))
    require_modality(model, qm)
    require_modality(model, gm)
    df = open_manifest(args.manifest, split=args.split)
    keys_from_manifest(df.head(1), args.match, args.manifest)  # validate --match early
    eq, eg = _embed(model, df, qm, args), _embed(model, df, gm, args)
    rq, rg = rows_for(df, eq.ids), rows_for(df, eg.ids)
    kq, kg = keys_from_manifest(rq, args.match, args.manifest), keys_from_manifest(rg, args.match, args.manifest)
    gt = ground_truth(kq, kg)
    metrics, ci, curves, per_query = {}, {}, {}, None
    for (a, b, za, zb, g, ra) in ((qm, gm, eq.emb, eg.emb, gt, rq), (gm, qm, eg.emb, eq.emb, gt.T, rg)):
        pre = f"{a}_to_{b}_"
        r = rank_arrays(za, zb, g, source=args.manifest)
        metrics.update(metrics_from_ranks(r["first_rank"], r["ap"], prefix=pre))
        metrics[pre + "n_queries"] = int(r["first_rank"].size)
        metrics[pre + "n_no_match"] = r["n_no_match"]
        curves[f"{a} → {b}"] = r["first_rank"]
        if per_query is None:  # the query → gallery direction, for `evaluate compare`
            per_query = (np.asarray(eq.ids)[r["query_index"]], rq["patient_id"].astype(str).to_numpy()[r["query_index"]],
                         r["first_rank"], r["ap"])
        if args.n_boot > 0 and r["first_rank"].size:
            groups = ra["patient_id"].astype(str).to_numpy()[r["query_index"]]
            ci.update(cluster_bootstrap(lambda f, ap, pre=pre: metrics_from_ranks(f, ap, prefix=pre),
                                        r["first_rank"], r["ap"], groups, n_boot=args.n_boot, seed=args.seed))
    extra = {}
    if args.baseline:
        from medfm.evaluation.baselines import retrieval_features

        bq, bg, extra["baseline"] = retrieval_features(args.baseline, model, qm, gm, rq, rg, df.attrs.get("base_dir"))
        for (a, b, za, zb, g, ra) in ((qm, gm, bq, bg, gt, rq), (gm, qm, bg, bq, gt.T, rg)):
            pre = f"baseline/{extra['baseline']['name']}/{a}_to_{b}_"
            r = rank_arrays(za, zb, g, source=args.manifest)
            metrics.update(metrics_from_ranks(r["first_rank"], r["ap"], prefix=pre))
            curves[f"{extra['baseline']['name']}: {a} → {b}"] = r["first_rank"]
            if args.n_boot > 0 and r["first_rank"].size:
                groups = ra["patient_id"].astype(str).to_numpy()[r["query_index"]]
                ci.update(cluster_bootstrap(lambda f, ap, pre=pre: metrics_from_ranks(f, ap, prefix=pre),
                                            r["first_rank"], r["ap"], groups, n_boot=args.n_boot, seed=args.seed))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot = _recall_curve(curves, out / "recall_at_k.png")
    rec = base_record("retrieval", args.model, fp, args.manifest, df, query_modality=qm, gallery_modality=gm,
                      match=args.match, n=int(len(eq.ids)), n_gallery=int(len(eg.ids)), metrics=metrics, ci=ci,
                      ci_method=f"percentile, {args.n_boot} cluster-bootstrap replicates over query patients",
                      n_skipped=len(eq.skipped) + len(eg.skipped), **extra)
    paths = write_evaluation(out, rec, [plot])
    from medfm.evaluation.compare import write_predictions

    write_predictions(out, ids=per_query[0], groups=per_query[1], task="retrieval", first_rank=per_query[2],
                      ap=per_query[3])
    print(f"{qm}_to_{gm}_R@1 {metrics[f'{qm}_to_{gm}_R@1']:.4f}  {gm}_to_{qm}_R@1 {metrics[f'{gm}_to_{qm}_R@1']:.4f}"
          f"; wrote {paths['results']} and {paths['report']}")
    return 0


def _recall_curve(curves, path):
    from medfm.evaluation.report import plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, first in curves.items():
        if len(first) == 0:
            continue
        ks = np.arange(1, max(2, int(first.max())) + 1)
        ax.plot(ks, [(first <= k).mean() for k in ks], label=name)
    ax.set(xscale="log", xlabel="k", ylabel="Recall@k", ylim=(0, 1.02), title="Recall@k")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return path


def run_probe(args) -> int:
    from medfm.errors import DataError, UsageError
    from medfm.evaluation import probes
    from medfm.evaluation.embed import base_record, load_model, open_manifest, require_modality, rows_for
    from medfm.metrics import metrics_with_ci
    from medfm.evaluation.report import plot_confusion, plot_roc, write_evaluation

    try:
        shots = [int(s) for s in args.shots.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--shots must be comma-separated integers, not {args.shots!r}") from None
    from medfm.evaluation.labels import JOINED, is_multilabel_column, join_binary_columns, parse_label_columns

    binary_cols = parse_label_columns(args.label_columns)
    if bool(args.label_column) == bool(binary_cols):
        raise UsageError("give exactly one of --label-column COL or --label-columns A,B,C")
    model, fp = load_model(args.model, init=init_overrides(args))
    require_modality(model, args.modality)
    df = open_manifest(args.manifest, require=[args.label_column] if args.label_column else binary_cols)
    if binary_cols or is_multilabel_column(df[args.label_column]):
        from .evaluate_extra import run_multilabel_probe

        if binary_cols:
            df[JOINED] = join_binary_columns(df, binary_cols, source=args.manifest)
        return run_multilabel_probe(args, model, fp, df, JOINED if binary_cols else args.label_column, binary_cols)
    labelled = df[df[args.label_column].notna()].reset_index(drop=True)
    labelled.attrs.update(df.attrs)
    if len(labelled) == 0:
        raise DataError("no labelled row", source=args.manifest, field=args.label_column)
    splits_all = probes.resolve_splits(labelled, test_size=args.test_size, val_size=args.val_size,
                                       seed=args.seed, source=args.manifest)
    emb = _embed(model, labelled, args.modality, args)
    rows = rows_for(labelled, emb.ids)
    pos = labelled.reset_index().set_index("id").loc[emb.ids, "index"].to_numpy()
    splits = splits_all[pos]
    y, classes = probes.encode_labels(list(rows[args.label_column]))
    X = emb.emb
    tr, va, te = (splits == "train"), (splits == "val"), (splits == "test")
    for name, m in (("train", tr), ("test", te)):
        if not m.any():
            raise DataError(f"no embedded sample in the {name} split", source=args.manifest, field="split")
    if len(np.unique(y[tr])) < 2:
        raise DataError("the train split holds a single class", source=args.manifest, field=args.label_column)
    groups = rows["patient_id"].astype(str).to_numpy()[te]
    lin = probes.linear_probe(X[tr], y[tr], X[va], y[va], X[te], len(classes), seed=args.seed)
    knn = probes.knn_probe(X[tr], y[tr], X[te], len(classes), k=args.knn_k)
    metrics, ci = {}, {}
    for name, proba in (("linear", lin["proba"]), ("knn", knn)):
        pt, c = metrics_with_ci(y[te], proba, groups, classes, n_boot=args.n_boot, seed=args.seed)
        metrics.update({f"{name}/{k}": v for k, v in pt.items()})
        ci.update({f"{name}/{k}": v for k, v in c.items()})
    metrics.update({f"fewshot/{k}": v for k, v in probes.few_shot(
        X[tr], y[tr], X[te], y[te], len(classes), shots=shots, seeds=range(args.few_shot_seeds)).items()})
    extra = {}
    if args.baseline:  # the same rows, splits, probes and bootstrap on the baseline's features
        from medfm.evaluation.baselines import probe_features

        B, extra["baseline"] = probe_features(args.baseline, model, args.modality, rows, tr, labelled.attrs.get("base_dir"))
        blin = probes.linear_probe(B[tr], y[tr], B[va], y[va], B[te], len(classes), seed=args.seed)
        extra["baseline"]["linear_C"] = blin["C"]
        for name, proba in (("linear", blin["proba"]), ("knn", probes.knn_probe(B[tr], y[tr], B[te], len(classes),
                                                                                k=args.knn_k))):
            pt, c = metrics_with_ci(y[te], proba, groups, classes, n_boot=args.n_boot, seed=args.seed)
            metrics.update({f"baseline/{extra['baseline']['name']}/{name}/{k}": v for k, v in pt.items()})
            ci.update({f"baseline/{extra['baseline']['name']}/{name}/{k}": v for k, v in c.items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plots = [plot_roc(y[te], lin["proba"], classes, out / "roc.png", title="linear probe ROC (test)"),
             plot_confusion(y[te], lin["proba"].argmax(1), classes, out / "confusion.png",
                            title="linear probe (test)")]
    rec = base_record("probe", args.model, fp, args.manifest, df, modality=args.modality,
                      label_column=args.label_column, classes=classes, n=int(te.sum()),
                      n_train=int(tr.sum()), n_val=int(va.sum()), n_test=int(te.sum()),
                      split_source="manifest split column" if "split" in df.columns else "deterministic split by patient",
                      linear_C=lin["C"], knn_k=args.knn_k, metrics=metrics, ci=ci,
                      ci_method=f"percentile, {args.n_boot} cluster-bootstrap replicates over test patients",
                      n_skipped=len(emb.skipped), **extra)
    paths = write_evaluation(out, rec, [p for p in plots if p is not None])
    from medfm.evaluation.compare import write_predictions

    write_predictions(out, ids=np.asarray(emb.ids)[te], groups=groups, task="multiclass", y_true=y[te],
                      scores=lin["proba"], classes=classes)
    print(f"linear probe (C={lin['C']:g}) test accuracy {metrics['linear/accuracy']:.4f}, kNN "
          f"{metrics['knn/accuracy']:.4f}; wrote {paths['results']} and {paths['report']}")
    return 0


def run_bioscan(args) -> int:
    from medfm.evaluation.embed import base_record, load_model, open_manifest, require_modality, rows_for
    from medfm.evaluation.report import write_evaluation
    from medfm.evaluation.retrieval import bioscan_accuracy

    ranks = [r.strip() for r in args.ranks.split(",") if r.strip()]
    km = args.key_modality or args.query_modality
    model, fp = load_model(args.model, init=init_overrides(args))
    require_modality(model, args.query_modality)
    require_modality(model, km)
    full = open_manifest(args.manifest, require=ranks + ["split"])
    qdf = open_manifest(args.manifest, split=args.query_split)
    kdf = open_manifest(args.manifest, split=args.key_split)
    train_df = open_manifest(args.manifest, split=args.train_split) if args.train_split else kdf
    eq, ek = _embed(model, qdf, args.query_modality, args), _embed(model, kdf, km, args)
    qrows, krows = rows_for(qdf, eq.ids), rows_for(kdf, ek.ids)
    metrics = bioscan_accuracy(eq.emb, qrows, ek.emb, krows, ranks,
                               train_species=set(train_df[ranks[-1]].dropna().astype(str)))
    extra = {}
    if args.baseline:
        from medfm.evaluation.baselines import retrieval_features

        bq, bk, extra["baseline"] = retrieval_features(args.baseline, model, args.query_modality, km, qrows, krows,
                                                       full.attrs.get("base_dir"))
        metrics.update({f"baseline/{extra['baseline']['name']}/{k}": v for k, v in bioscan_accuracy(
            bq, qrows, bk, krows, ranks, train_species=set(train_df[ranks[-1]].dropna().astype(str))).items()})
    out = Path(args.out)
    rec = base_record("bioscan", args.model, fp, args.manifest, full, query_modality=args.query_modality,
                      key_modality=km, query_split=args.query_split, key_split=args.key_split, ranks=ranks,
                      n=int(len(eq.ids)), n_keys=int(len(ek.ids)), metrics=metrics, ci={},
                      n_skipped=len(eq.skipped) + len(ek.skipped), **extra)
    out.mkdir(parents=True, exist_ok=True)
    paths = write_evaluation(out, rec, [_rank_bars(metrics, ranks, out / "accuracy_by_rank.png")])
    print(f"bioscan: seen {metrics['seen/n']} / unseen {metrics['unseen/n']} queries; "
          f"{ranks[-1]} micro accuracy seen {metrics[f'seen/{ranks[-1]}/micro']:.4f}; wrote {paths['results']}")
    return 0


def _rank_bars(metrics, ranks, path):
    from medfm.evaluation.report import plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    w = 0.2
    x = np.arange(len(ranks))
    for i, (split, avg) in enumerate([(s, a) for s in ("seen", "unseen") for a in ("micro", "macro")]):
        vals = [metrics.get(f"{split}/{r}/{avg}", float("nan")) for r in ranks]
        ax.bar(x + (i - 1.5) * w, np.nan_to_num(vals), w, label=f"{split} {avg}")
    ax.set_xticks(x, ranks, fontsize=8)
    ax.set(ylabel="top-1 accuracy", ylim=(0, 1), title="BIOSCAN accuracy by rank")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return path
