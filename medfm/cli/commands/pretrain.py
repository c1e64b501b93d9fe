"""``medfm pretrain CONFIG --out DIR``: contrastive and/or masked pretraining on a manifest."""
from __future__ import annotations

import json
from pathlib import Path
from ...models.init import model_config_with_init
from ...paths import command_line_path
from ..common import add_column_args, add_config_args, add_init_args, column_map, init_overrides, load_run_config


def run(args) -> int:
    # deferred: keeps `medfm --help` from importing the training/evaluation stack
    from ...train import Trainer
    from ...train.distributed import cleanup
    from ...train.run_config import parse_run_config

    config, config_dir = load_run_config(args)
    inits = init_overrides(args)
    if inits:
        config["model"] = model_config_with_init(config.get("model", {"name": "medfm-tiny"}), inits, config_dir)
    if args.max_steps is not None:
        config.setdefault("train", {})["max_steps"] = args.max_steps
    if args.manifest is not None:
        config.setdefault("data", {})["manifest"] = command_line_path(args.manifest)
    if args.no_resume:
        config.setdefault("train", {})["resume"] = False
    if args.force_resume:
        config.setdefault("train", {})["force_resume"] = True
    if args.init_from:
        config.setdefault("train", {})["init_from"] = command_line_path(args.init_from)
    if args.no_progress:
        config.setdefault("train", {})["progress"] = False
    if args.columns:
        config.setdefault("data", {}).setdefault("columns", {}).update(column_map(args))
    cfg = parse_run_config(config)  # validated once, here; the trainer receives the typed config
    try:
        # train.max_minutes bounds the whole command: its clock starts with the process
        trainer = Trainer(cfg, Path(args.out), config_dir=config_dir, started_at=getattr(args, "started_at", None),
                          allow_slow=args.allow_slow)
        last = trainer.fit()
        if trainer.dist.is_main:
            print(json.dumps({"out": str(args.out), **{k: last[k] for k in ("step", "loss", "n_skipped") if k in last}}))
    finally:
        cleanup()
    return 0


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
    p.set_defaults(func=run)
