"""``medfm zeroshot``: zero-shot classification from a prompt set (or class prototypes)."""
from __future__ import annotations

from medfm.cli.common import lazy_run

from .evaluate_clinical import add_clinical_args

from medfm.cli.common import add_column_args, add_data_args, add_init_args, add_skip_args
from medfm.cli.inference_args import add_inference_args


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
    add_inference_args(p)
    add_skip_args(p)
    add_clinical_args(p, curve=False)
    p.set_defaults(func=lazy_run("medfm.cli.runners.zeroshot:run"))
