"""``medfm evaluate compare``: the paired test of two evaluations (its parser and run; evaluate.py adds it)."""
from __future__ import annotations

from medfm.cli.common import lazy_run


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
    c.set_defaults(func=lazy_run("medfm.cli.runners.evaluate_extra:run_compare"))
