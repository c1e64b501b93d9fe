"""What ``medfm finetune`` runs (its parser: :mod:`medfm.cli.commands.finetune`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from ...io import apply_overrides
from ...paths import command_line_overrides, command_line_path
from ..common import column_map, init_overrides, load_run_config
from ...finetune import finetune
from ...finetune.config_schema import FINETUNE_MOVES, parse_finetune_config
from ...schema import apply_moves, move_override_keys


def run(args) -> int:
    # keys of the previous release move to their new place (each warns, naming the new key): in the file first,
    # then in the --set items, so a --set of either spelling overrides the file's value
    config, config_dir = load_run_config(argparse.Namespace(**{**vars(args), "overrides": []}))
    config = apply_overrides(apply_moves(config, FINETUNE_MOVES),
                             command_line_overrides(move_override_keys(args.overrides, FINETUNE_MOVES)))
    inits = init_overrides(args)
    if inits:
        config["init"] = {**(config.get("init") or {}), **inits}
    data = config.setdefault("data", {})
    if args.manifest is not None:
        data["manifest"] = command_line_path(args.manifest)
    if args.base is not None:
        config["base"] = command_line_path(args.base, may_be_name=True)
    if args.merge:
        config["merge"] = True
    if args.no_progress:
        config.setdefault("train", {})["progress"] = False
    # --column flags over data.columns; the fine-tuner adds the base checkpoint's recorded mapping below both
    # (the base resolved by the one path rule of medfm.paths, beside the config file)
    if isinstance(data, dict):
        data["columns"] = {**(data.get("columns") or {}), **column_map(args)}
    cfg = parse_finetune_config(config)  # validated once, here; the fine-tuner receives the typed config
    result = finetune(cfg, Path(args.out), config_dir=config_dir)
    summary = {k: result[k] for k in ("out", "method", "task", "monitor", "best_epoch", "epochs_run",
                                      "n_trainable", "n_total") if k in result}
    key = result["monitor"] if result["monitor"] != "loss" else ("mae" if result["task"] == "regression"
                                                                  else "macro_auroc")
    if key in result["test"]:
        summary[f"test_{key}"] = result["test"][key]
        if key in result["test_ci"]:
            summary[f"test_{key}_ci"] = result["test_ci"][key]
    if "merged" in result:
        summary["merged"] = result["merged"]
    print(json.dumps(summary))
    return 0
