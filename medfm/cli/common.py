"""Helpers shared by the CLI commands: config loading with ``--set`` overrides, ``--init`` weight imports."""
from __future__ import annotations

import importlib

import argparse
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..errors import UsageError
from ..io import apply_overrides, load_config_file
from medfm.configs import config_path as shipped_config
from ..models.init import parse_init_arg
from ..data.columns import parse_column_specs, resolve_columns
from ..paths import command_line_overrides, command_line_path


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")


def load_run_config(args: argparse.Namespace) -> Tuple[Dict[str, Any], Optional[Path]]:
    """``(config, config_dir)``: the YAML file named on the command line with ``--set`` overrides
    applied, and the folder its relative paths resolve against (:mod:`medfm.paths`).

    A config may be a shipped recipe given by name (``ct_mae.yaml``) when no such file exists
    locally; its ``config_dir`` is ``None`` (the working directory), never the package's folder.
    ``--set`` path values are made absolute against the working directory first.
    """
    path = Path(args.config).expanduser()
    config_dir: Optional[Path] = path.resolve().parent
    if not path.is_file():
        shipped = shipped_config(args.config)
        if shipped.is_file():
            path, config_dir = shipped, None
    config = apply_overrides(load_config_file(path), command_line_overrides(args.overrides))
    return config, config_dir


# ------------------------------------------------------------------ data.* options of commands without a config
def add_data_args(parser: argparse.ArgumentParser) -> None:
    """``--data-root``, ``--no-confine-paths``, ``--limit``: a run config's ``data.root``,
    ``data.confine_paths`` and ``data.limits`` for the commands that take no config."""
    g = parser.add_argument_group("data options (a run config's data.root, data.confine_paths, data.limits)")
    g.add_argument("--data-root", metavar="DIR",
                   help="the one folder the manifest's path cells must stay inside (default: the manifest's folder "
                        "and the data roots `medfm manifest` recorded beside it)")
    g.add_argument("--no-confine-paths", action="store_true",
                   help="read the manifest's path cells wherever they lead")
    g.add_argument("--limit", dest="limits", action="append", default=None, metavar="KEY=VALUE",
                   help="an input-size limit: max_file_mb, max_elements or max_sample_mb (repeatable)")


def data_options(args: argparse.Namespace) -> Dict[str, Any]:
    """``{"root": absolute path or None, "confine": bool}`` from :func:`add_data_args` flags."""
    root = getattr(args, "data_root", None)
    return {"root": command_line_path(root) if root else None,
            "confine": not getattr(args, "no_confine_paths", False)}


def limit_values(args: argparse.Namespace) -> Dict[str, float]:
    """``{key: value}`` of the ``--limit KEY=VALUE`` flags (checked by :func:`medfm.limits.set_limits`)."""
    out: Dict[str, float] = {}
    for item in getattr(args, "limits", None) or ():
        key, sep, raw = str(item).partition("=")
        try:
            out[key.strip()] = float(raw)
        except ValueError:
            raise UsageError(f"--limit expects KEY=NUMBER, got {item!r}") from None
        if not sep:
            raise UsageError(f"--limit expects KEY=NUMBER, got {item!r}")
    return out


# ------------------------------------------------------------------ --init
def add_init_args(parser: argparse.ArgumentParser) -> None:
    """``--init MOD=PATH[,format=F][,strict][,tower=T][,heads=N]`` (repeatable): start a tower from a file."""
    parser.add_argument("--init", action="append", default=[], metavar="MOD=PATH[,format=F][,strict]",
                        help="start the MOD tower from weights on disk (timm/MAE/RETFound/OCTCube .pth or "
                             ".safetensors, MONAI ViT, open_clip checkpoint, Hugging Face folder, medfm checkpoint; "
                             "`medfm info` lists the formats); repeatable")


def init_overrides(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """``{modality: init spec}`` from ``--init`` flags; paths made absolute (relative to the working directory)."""

    out: Dict[str, Dict[str, Any]] = {}
    for text in getattr(args, "init", None) or []:
        mod, spec = parse_init_arg(text)
        spec["path"] = command_line_path(spec["path"])
        out[mod] = spec
    return out



def add_column_args(parser: argparse.ArgumentParser, *, bare_means: Optional[str] = None) -> None:
    """``--column MODALITY=COLUMN`` (repeatable): where a modality's cells are in the manifest.

    Default: the mapping recorded in the checkpoint the command loads, else the modality's name.
    ``bare_means`` names the argument (e.g. ``"modality"``) whose value a bare ``--column COL`` maps.
    """
    extra = f"; a bare COLUMN applies to --{bare_means}" if bare_means else ""
    parser.add_argument("--column", dest="columns", action="append", default=[], metavar="MODALITY=COLUMN",
                        help="manifest column of a modality (repeatable); default: the mapping recorded in the "
                             f"checkpoint, else the modality's name{extra}")
    parser.set_defaults(_column_bare=bare_means)


def column_map(args: argparse.Namespace, model_dir: Any = None) -> Dict[str, str]:
    """``{modality: column}``: ``--column`` flags over the mapping recorded in ``model_dir``."""

    bare = getattr(args, "_column_bare", None)
    flags = parse_column_specs(getattr(args, "columns", []) or [],
                               default_modality=getattr(args, bare, None) if bare else None)
    return resolve_columns(flags, model_dir)


def add_skip_args(parser: argparse.ArgumentParser) -> None:
    """``--max-skip-fraction F``: the command fails when a larger share of the rows that hold its modality
    could not be used (rows without the modality do not count; :mod:`medfm.data.skips`)."""
    parser.add_argument("--max-skip-fraction", type=float, default=None, metavar="F",
                        help="fail (exit 1, with a summary by reason) when more than this share of the rows "
                             "holding the modality are unreadable (default 0.5; rows without it do not count)")


def lazy_run(target: str):
    """``func`` of a subcommand: ``"medfm.cli.runners.embed:run"`` is imported when the command runs.

    Building the parser imports every command module (:func:`medfm.cli.build_parser`), so a command
    module holds its parser alone and what it runs lives in :mod:`medfm.cli.runners`, which imports
    its training/evaluation stack at module top (as pip's command table does)."""
    module, name = target.split(":")

    def run(args) -> int:
        return getattr(importlib.import_module(module), name)(args)

    run.target = target
    return run
