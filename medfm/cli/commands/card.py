"""``medfm card MODEL_DIR``: (re)write the model card README.md of a checkpoint folder."""
from __future__ import annotations

from medfm.cli.common import lazy_run


def register(sub) -> None:
    p = sub.add_parser("card", help="write the checkpoint's model card (README.md) with the latest results beside it",
                       description="Hugging Face model-card layout: modalities, architecture, training manifest hash "
                                   "and size, objectives, steps, source weights (name + sha256) and the latest "
                                   "evaluation results (results.json files that name this checkpoint).")
    p.add_argument("model_dir", help="checkpoint directory")
    p.set_defaults(func=lazy_run("medfm.cli.runners.card:run"))
