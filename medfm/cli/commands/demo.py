"""``medfm demo --out DIR [--quick] [--seed N]``: the whole loop on the embedded cohort."""
from __future__ import annotations

from medfm.cli.common import lazy_run


def register(sub) -> None:
    p = sub.add_parser("demo", help="generate a small multimodal cohort, pretrain, evaluate and report (CPU, minutes)")
    p.add_argument("--out", default="medfm-demo",
                   help="output directory (cohort, model, report.md, results.json); default ./medfm-demo")
    p.add_argument("--quick", action="store_true", help="a shorter run (fewer samples and steps; about a minute)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cohort and of training (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=lazy_run("medfm.cli.runners.demo:run"))
