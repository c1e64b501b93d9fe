"""``medfm zeroshot``: zero-shot classification from a prompt set (or class prototypes)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from medfm.errors import DataError, UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "zeroshot", help="zero-shot classification with prompt sets; metrics with patient-bootstrap CIs",
        description="Scores each sample against the text prompts of every class (prompt ensembling; softmax "
                    "for multi-class, positive-vs-negative prompt per finding for multi-label) — or, with "
                    "--prototypes, against class prototypes from the support split. Writes results.json, "
                    "report.md, roc.png and confusion.png to --out.")
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--modality", required=True, help="modality of the samples to classify")
    p.add_argument("--label-column", default=None,
                   help="class name per row (multi-class) or findings separated by '|' (multi-label)")
    p.add_argument("--label-columns", default=None, metavar="A,B,C",
                   help="multi-label from 0/1 columns, one per finding (instead of --label-column)")
    p.add_argument("--prompts", help="prompt set YAML (see configs/prompts/)")
    p.add_argument("--prototypes", action="store_true",
                   help="non-text zero-shot: class prototypes from the rows of --support-split")
    p.add_argument("--support-split", default="train")
    p.add_argument("--split", default=None, help="evaluate only rows of this split")
    p.add_argument("--text-modality", default="text", help="the model's text tower")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (patients resampled)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    from medfm.cli.common import add_column_args, add_init_args

    add_init_args(p)
    add_column_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from medfm.evaluation import zeroshot as zs
    from medfm.evaluation.embed import (base_record, embed_manifest, encode_values, load_model, logit_scale,
                                        open_manifest, report_skipped, require_modality, rows_for)
    from medfm.metrics import metrics_with_ci
    from medfm.data.splits import check_no_leakage
    from medfm.evaluation.probes import encode_labels
    from medfm.evaluation.report import plot_confusion, plot_roc, write_evaluation

    if bool(args.prompts) == bool(args.prototypes):
        raise UsageError("give exactly one of --prompts FILE or --prototypes")
    from medfm.evaluation.labels import JOINED, join_binary_columns, parse_label_columns

    binary_cols = parse_label_columns(args.label_columns)
    if bool(args.label_column) == bool(binary_cols):
        raise UsageError("give exactly one of --label-column COL or --label-columns A,B,C")
    prompts = zs.load_prompt_set(args.prompts) if args.prompts else None
    from medfm.cli.common import init_overrides

    model, fp = load_model(args.model, init=init_overrides(args))
    require_modality(model, args.modality)
    if binary_cols:  # 0/1 columns → one '|'-separated column, the multi-label path below
        full = open_manifest(args.manifest)
        full[JOINED] = join_binary_columns(full, binary_cols, source=args.manifest)
        args.label_column = JOINED
    else:
        full = open_manifest(args.manifest, require=[args.label_column])
    from medfm.data import select_split

    df = select_split(full, args.split)
    if len(df) == 0:
        raise DataError(f"no rows in split {args.split!r}", source=args.manifest, field="split")
    if args.prototypes:
        if "split" not in full.columns:
            raise DataError("--prototypes needs a 'split' column (support rows vs evaluated rows)",
                            source=args.manifest, field="split")
        if args.split is None:  # evaluate everything but the support split
            df = full[full["split"] != args.support_split]
        both = full[full["split"].isin([args.support_split, args.split] if args.split else list(full["split"]))]
        check_no_leakage(both["patient_id"], np.where(both["split"] == args.support_split, "support", "eval"),
                         ids=both["id"], source=args.manifest)
    df = df[df[args.label_column].notna() | (prompts is not None and prompts.task == "multilabel")]
    df = df.reset_index(drop=True)
    df.attrs.update(full.attrs)
    if prompts is not None:
        # validate the labels before spending time on embeddings
        zs.label_targets(list(df[args.label_column]), prompts, source=args.manifest, column=args.label_column)
    from medfm.cli.common import column_map

    column = column_map(args, args.model).get(args.modality)
    emb = embed_manifest(model, df, args.modality, batch_size=args.batch_size, progress=not args.no_progress,
                         column=column)
    if emb.skipped:
        print(report_skipped(emb, args.modality), file=sys.stderr)
    if len(emb.ids) == 0:
        raise DataError("no sample could be embedded", source=args.manifest, field=args.modality)
    rows = rows_for(df, emb.ids)
    scale = logit_scale(model)
    extra = {}
    if prompts is not None:
        require_modality(model, args.text_modality)
        y = zs.label_targets(list(rows[args.label_column]), prompts, source=args.manifest, column=args.label_column)
        clf = zs.text_classifier(lambda t: encode_values(model, args.text_modality, t, source="prompt"), prompts)
        scores = zs.zeroshot_scores(emb.emb, clf, scale)
        classes, task = prompts.classes, f"zeroshot-{prompts.task}"
        extra["prompt_set"] = prompts.name
    else:
        support_df = select_split(full, args.support_split)
        support_df = support_df[support_df[args.label_column].notna()].reset_index(drop=True)
        sup = embed_manifest(model, support_df, args.modality, batch_size=args.batch_size,
                             progress=not args.no_progress, column=column)
        if len(sup.ids) == 0:
            raise DataError(f"empty support set (split {args.support_split!r})", source=args.manifest)
        y_all, classes = encode_labels(list(rows_for(support_df, sup.ids)[args.label_column]) +
                                       list(rows[args.label_column]))
        y_sup, y = y_all[:len(sup.ids)], y_all[len(sup.ids):]
        missing = sorted(set(classes[c] for c in y) - set(classes[c] for c in y_sup))
        if missing:
            raise DataError(f"class(es) {missing} have no example in the support split {args.support_split!r}",
                            source=args.manifest, field=args.label_column)
        present = sorted(set(y_sup.tolist()))
        protos = zs.class_prototypes(sup.emb[np.isin(y_sup, present)], y_sup[np.isin(y_sup, present)], len(classes))
        scores = zs.multiclass_scores(emb.emb, protos, scale)
        task = "zeroshot-prototypes"
        extra["n_support"] = len(sup.ids)
    point, ci = metrics_with_ci(y, scores, rows["patient_id"].astype(str).to_numpy(), classes,
                                n_boot=args.n_boot, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plots = [plot_roc(y, scores, classes, out / "roc.png", title=f"{task} ROC")]
    if y.ndim == 1:
        plots.append(plot_confusion(y, scores.argmax(1), classes, out / "confusion.png"))
    rec = base_record(task, args.model, fp, args.manifest, df, modality=args.modality, n=len(emb.ids),
                      n_patients=int(rows["patient_id"].nunique()),
                      label_column=args.label_column if not binary_cols else None, label_columns=binary_cols or None,
                      classes=list(classes), metrics=point, ci=ci, logit_scale=scale,
                      ci_method=f"percentile, {args.n_boot} cluster-bootstrap replicates over patients",
                      n_skipped=len(emb.skipped), skipped_ids=[s["id"] for s in emb.skipped], **extra)
    paths = write_evaluation(out, rec, [p for p in plots if p is not None])
    from medfm.evaluation.compare import write_predictions

    write_predictions(out, ids=emb.ids, groups=rows["patient_id"].astype(str), task="multilabel" if y.ndim == 2
                      else "multiclass", y_true=y, scores=scores, classes=classes)
    acc = point.get("accuracy", float("nan"))
    print(f"{task}: n={len(emb.ids)} macro AUROC {point['macro_auroc']:.4f}"
          + ("" if y.ndim == 2 else f" accuracy {acc:.4f}") + f"; wrote {paths['results']} and {paths['report']}")
    return 0
