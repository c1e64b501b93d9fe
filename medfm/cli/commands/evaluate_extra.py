"""``medfm evaluate compare``: the paired test of two evaluations (its parser and run; evaluate.py adds it)."""
from __future__ import annotations

from pathlib import Path

from medfm.errors import UsageError
from medfm.io import atomic_write_text, portable_paths, write_json


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
    # deferred: the evaluation stack (scipy, scikit-learn) loads only when the command runs
    from medfm.evaluation.compare import compare_predictions, comparison_markdown, load_predictions

    if args.n_boot < 1:
        raise UsageError("--n-boot must be at least 1")
    a, b = load_predictions(args.results_a), load_predictions(args.results_b)
    res = compare_predictions(a, b, n_boot=args.n_boot, seed=args.seed, source=f"{args.results_a} vs {args.results_b}")
    out = Path(args.out or b["dir"])
    out.mkdir(parents=True, exist_ok=True)
    res = portable_paths(res, out)  # the compared folders relative to OUT: no absolute path of this machine
    write_json(out / "comparison.json", res)
    atomic_write_text(out / "comparison.md", comparison_markdown(res))
    key = next((k for k in ("macro_auroc", "accuracy") if k in res["metrics"]), next(iter(res["metrics"]), None))
    if key:
        v = res["metrics"][key]
        print(f"{key}: A {v['a']:.4f}  B {v['b']:.4f}  diff {v['diff']:+.4f} "
              f"(95% CI {v['ci'][0]:+.4f} to {v['ci'][1]:+.4f}, p={v['p_value']:.3g}); "
              f"{len(res['delong'])} DeLong test(s); wrote {out / 'comparison.md'}")
    return 0
