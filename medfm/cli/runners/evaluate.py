"""What ``medfm evaluate`` runs (its parser: :mod:`medfm.cli.commands.evaluate`)."""
from __future__ import annotations

from medfm.cli.runners.evaluate_clinical import clinical_options

from medfm.cli.common import column_map, data_options, init_overrides
from medfm.cli.inference_args import inference_options
from medfm.errors import UsageError
from medfm.evaluation.runs import RunInputs
from medfm.evaluation.runs import evaluate_retrieval
from medfm.evaluation.labels import parse_label_columns
from medfm.evaluation.runs import evaluate_probe
from medfm.evaluation.runs import evaluate_bioscan


def _inputs(args):
    # deferred here and in each run: the evaluation stack (torch, scikit-learn, matplotlib) loads only
    # when a command runs, not for `medfm --help`

    return RunInputs(model=args.model, manifest=args.manifest, out=args.out, n_boot=args.n_boot,
                     batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress,
                     init=init_overrides(args), columns=column_map(args, args.model),
                     data={**data_options(args), **inference_options(args)},
                     baseline=args.baseline, max_skip_fraction=args.max_skip_fraction)


def run_retrieval(args) -> int:
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
    ranks = [r.strip() for r in args.ranks.split(",") if r.strip()]
    run = evaluate_bioscan(_inputs(args), args.query_modality, key_modality=args.key_modality,
                           query_split=args.query_split, key_split=args.key_split, train_split=args.train_split,
                           ranks=ranks)
    m = run.result.metrics
    print(f"bioscan: seen {m['seen/n']} / unseen {m['unseen/n']} queries; "
          f"{ranks[-1]} micro accuracy seen {m[f'seen/{ranks[-1]}/micro']:.4f}; wrote {run.paths['results']}")
    return 0
