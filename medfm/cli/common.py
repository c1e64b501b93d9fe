"""Helpers shared by the CLI commands: config loading with ``--set`` overrides."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict

from ..io import apply_overrides, load_config_file


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")


def load_run_config(args: argparse.Namespace) -> Dict[str, Any]:
    """The YAML file named on the command line with ``--set`` overrides applied.

    A config may be a shipped one given by name (``ct_mae.yaml``) when no such file exists locally.
    """
    path = Path(args.config)
    if not path.is_file():
        from medfm.configs import config_path

        shipped = config_path(args.config)
        if shipped.is_file():
            path = shipped
    return apply_overrides(load_config_file(path), args.overrides), path.resolve().parent
