"""``medfm evaluate retrieval|probe|bioscan``: retrieval metrics, linear/kNN/few-shot probes, BIOSCAN accuracy."""
from __future__ import annotations

from medfm.cli.common import (add_column_args, add_data_args, add_init_args, add_skip_args, column_map,
                              data_options, init_overrides)
from medfm.errors import UsageError

from .evaluate_clinical import add_clinical_args, clinical_options
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
    add_skip_args(p)
    p.add_argument("--baseline", default=None, metavar="NAME",
                   help="also score a classical baseline on the same samples: kmer (kmer<k>) for dna, tfidf for "
                        "text, ecg-features for ecg; its metrics go beside the model's as baseline/NAME/...")


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
    add_clinical_args(b, curve=True)
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


def _inputs(args):
    # deferred here and in each run: the evaluation stack (torch, scikit-learn, matplotlib) loads only
    # when a command runs, not for `medfm --help`
    # deferred: keeps `medfm --help` from importing the training/evaluation stack
    from medfm.evaluation.runs import RunInputs

    return RunInputs(model=args.model, manifest=args.manifest, out=args.out, n_boot=args.n_boot,
                     batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress,
                     init=init_overrides(args), columns=column_map(args, args.model), data=data_options(args),
                     baseline=args.baseline, max_skip_fraction=args.max_skip_fraction)


def run_retrieval(args) -> int:
    # deferred: keeps `medfm --help` from importing the training/evaluation stack
    from medfm.evaluation.runs import evaluate_retrieval

    qm, gm = args.query_modality, args.gallery_modality
    run = evaluate_retrieval(_inputs(args), qm, gm, match=args.match, split=args.split)
    m, info = run.result.metrics, run.result.info
    print(f"{qm}_to_{gm}_R@1 {m[f'{qm}_to_{gm}_R@1']:.4f}  {gm}_to_{qm}_R@1 {m[f'{gm}_to_{qm}_R@1']:.4f}"
          f"; wrote {run.paths['results']} and {run.paths['report']}")
    n_rows, n_distinct = info["n_gallery"], info.get("n_gallery_unique", {}).get(f"{qm}_to_{gm}", info["n_gallery"])
    if n_distinct < n_rows:
        print(f"  the {gm} gallery holds {n_distinct} distinct values in {n_rows} rows: each is ranked once "
              f"(R@k and its chance count distinct {gm} values)")
    return 0


def run_probe(args) -> int:
    # deferred: keeps `medfm --help` from importing the training/evaluation stack
    from medfm.evaluation.labels import parse_label_columns
    from medfm.evaluation.runs import evaluate_probe

    try:
        shots = [int(s) for s in args.shots.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--shots must be comma-separated integers, not {args.shots!r}") from None
    run = evaluate_probe(_inputs(args), args.modality, label_column=args.label_column,
                         label_columns=parse_label_columns(args.label_columns), knn_k=args.knn_k, shots=shots,
                         few_shot_seeds=args.few_shot_seeds, test_size=args.test_size, val_size=args.val_size,
                         clinical=clinical_options(args))
    m, c = run.result.metrics, run.result.info["linear_C"]
    if run.result.task == "probe-multilabel":
        print(f"multi-label probe ({len(run.result.info['classes'])} findings, C={c:g}): test macro AUROC linear "
              f"{m['linear/macro_auroc']:.4f}, kNN {m['knn/macro_auroc']:.4f}; wrote {run.paths['results']}")
    else:
        print(f"linear probe (C={c:g}) test accuracy {m['linear/accuracy']:.4f}, kNN "
              f"{m['knn/accuracy']:.4f}; wrote {run.paths['results']} and {run.paths['report']}")
    for name, x in (run.result.info.get("label_efficiency") or {}).get("crossover", {}).items():
        print(f"  label efficiency: {name} " + (f"catches the model at n = {x['n']} per class" if x["n"] is not None
                                                 else "does not catch the model within the data"))
    return 0


def run_bioscan(args) -> int:
    # deferred: keeps `medfm --help` from importing the training/evaluation stack
    from medfm.evaluation.runs import evaluate_bioscan

    ranks = [r.strip() for r in args.ranks.split(",") if r.strip()]
    run = evaluate_bioscan(_inputs(args), args.query_modality, key_modality=args.key_modality,
                           query_split=args.query_split, key_split=args.key_split, train_split=args.train_split,
                           ranks=ranks)
    m = run.result.metrics
    print(f"bioscan: seen {m['seen/n']} / unseen {m['unseen/n']} queries; "
          f"{ranks[-1]} micro accuracy seen {m[f'seen/{ranks[-1]}/micro']:.4f}; wrote {run.paths['results']}")
    return 0
