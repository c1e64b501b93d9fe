"""``medfm zeroshot``: zero-shot classification from a prompt set (or class prototypes)."""
from __future__ import annotations

from medfm.cli.common import (add_column_args, add_data_args, add_init_args, add_skip_args, column_map,
                              data_options, init_overrides)

from .evaluate_clinical import add_clinical_args, clinical_options


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
    p.add_argument("--prompts", action="append", default=None, metavar="FILE|FOLDER",
                   help="prompt set YAML (see configs/prompts/) or a folder of them; repeatable. Several sets: the "
                        "headline uses their ensemble, and each set is also scored alone (mean and spread per metric); "
                        "shipped folders: ptbxl_superclasses, chexpert14, bold_orders (configs/prompts/sets/)")
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
    add_init_args(p)
    add_column_args(p)
    add_data_args(p)
    add_skip_args(p)
    add_clinical_args(p, curve=False)
    p.set_defaults(func=run)


def run(args) -> int:
    # deferred: the evaluation stack (torch, scikit-learn, matplotlib) loads only when the command runs
    from medfm.evaluation.labels import parse_label_columns
    # deferred: keeps `medfm --help` from importing the training/evaluation stack
    from medfm.evaluation.runs import RunInputs, evaluate_zeroshot

    inputs = RunInputs(model=args.model, manifest=args.manifest, out=args.out, n_boot=args.n_boot,
                       batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress,
                       init=init_overrides(args), columns=column_map(args, args.model), data=data_options(args),
                       max_skip_fraction=args.max_skip_fraction)
    run = evaluate_zeroshot(inputs, args.modality, label_column=args.label_column,
                            label_columns=parse_label_columns(args.label_columns), prompts=args.prompts,
                            prototypes=args.prototypes, support_split=args.support_split, split=args.split,
                            text_modality=args.text_modality, clinical=clinical_options(args))
    res = run.result
    print(f"{res.task}: n={res.n} macro AUROC {res.metrics['macro_auroc']:.4f}"
          + (f" accuracy {res.metrics['accuracy']:.4f}" if "accuracy" in res.metrics else "")
          + f"; wrote {run.paths['results']} and {run.paths['report']}")
    return 0
