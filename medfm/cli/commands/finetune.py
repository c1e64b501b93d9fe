"""``medfm finetune CONFIG --out DIR [--merge] [--set k=v]``: LoRA / full / linear fine-tuning on a cohort."""
from __future__ import annotations

from medfm.cli.common import lazy_run


from ..common import add_column_args, add_config_args, add_init_args


def register(sub) -> None:

    p = sub.add_parser("finetune", help="LoRA or full fine-tuning with a task head on a cohort",
                       description="Fine-tune a pretrained checkpoint on a labelled manifest (LoRA/DoRA, full or "
                                   "frozen encoder + head), with patient-grouped splits, early stopping and test "
                                   "metrics with patient-level bootstrap CIs. Writes a checkpoint loadable by "
                                   "from_pretrained, metrics.json, history.jsonl, test_predictions.csv.")
    add_config_args(p)
    add_init_args(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--merge", action="store_true", help="also export a merged model to OUT/merged")
    p.add_argument("--base", help="override base (pretrained checkpoint directory)")
    p.add_argument("--manifest", help="override data.manifest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    add_column_args(p)
    p.set_defaults(func=lazy_run("medfm.cli.runners.finetune:run"))
