"""What ``medfm pretrain`` runs (its parser: :mod:`medfm.cli.commands.pretrain`)."""
from __future__ import annotations

import json
from pathlib import Path
from ...models.init import model_config_with_init
from ...paths import command_line_path
from ..common import column_map, init_overrides, load_run_config
from ...train import Trainer
from ...train.distributed import cleanup
from ...train.run_config import parse_run_config


def run(args) -> int:
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
