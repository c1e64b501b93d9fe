"""``medfm pretrain CONFIG --out DIR``: contrastive and/or masked pretraining on a manifest."""
from __future__ import annotations

from medfm.cli.common import lazy_run

from ..common import add_column_args, add_config_args, add_init_args


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="contrastive and/or masked pretraining on a manifest")

    add_config_args(p)
    add_init_args(p)
    p.add_argument("--out", required=True, help="output directory (checkpoint loadable by from_pretrained)")
    p.add_argument("--manifest", help="override data.manifest")
    p.add_argument("--max-steps", type=int, help="override train.max_steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-resume", action="store_true",
                   help="start afresh even when OUT/checkpoints holds a checkpoint (default: resume from it)")
    p.add_argument("--force-resume", action="store_true",
                   help="resume even when batch size, seed, accumulation, objectives or manifest changed "
                        "(they change the data order or the objective; refused otherwise)")
    p.add_argument("--init-from", metavar="DIR", help="start from the weights of this checkpoint (matching tensors)")
    p.add_argument("--allow-slow", action="store_true",
                   help="run a recipe sized for a GPU (requires.accelerator: gpu) on a machine without one")

    add_column_args(p)
    p.set_defaults(func=lazy_run("medfm.cli.runners.pretrain:run"))
