"""``medfm evaluate retrieval|probe|bioscan``: retrieval metrics, linear/kNN/few-shot probes, BIOSCAN accuracy."""
from __future__ import annotations

from medfm.cli.common import lazy_run

from medfm.cli.common import add_column_args, add_data_args, add_init_args, add_skip_args
from medfm.cli.inference_args import add_inference_args

from .evaluate_clinical import add_clinical_args
from .evaluate_extra import add_compare_parser


def _common(p) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="output directory (results.json, report.md, PNG plots)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (patients resampled); 0 = none")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    add_init_args(p)
    add_column_args(p)
    add_data_args(p)
    add_inference_args(p)
    add_skip_args(p)
    p.add_argument("--baseline", default=None, metavar="NAME",
                   help="also score a classical baseline on the same samples: kmer (kmer<k>) for dna, tfidf for "
                        "text, ecg-features for ecg, tabular for tabular; its metrics go beside the model's as "
                        "baseline/NAME/...")


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="retrieval metrics, BIOSCAN accuracy or probes on frozen embeddings")
    sub = p.add_subparsers(dest="evaluate_command", metavar="{retrieval,probe,bioscan,compare}")
    sub.required = True
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
    r.set_defaults(func=lazy_run("medfm.cli.runners.evaluate:run_retrieval"))
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
    add_clinical_args(b, curve=True)
    b.set_defaults(func=lazy_run("medfm.cli.runners.evaluate:run_probe"))
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
    t.set_defaults(func=lazy_run("medfm.cli.runners.evaluate:run_bioscan"))
