"""Helpers shared by the CLI commands: config loading with ``--set`` overrides, ``--init`` weight imports."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Optional

from ..io import apply_overrides, load_config_file
from medfm.configs import config_path
from ..models.init import parse_init_arg
from ..data.columns import parse_column_specs, resolve_columns


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

        shipped = config_path(args.config)
        if shipped.is_file():
            path = shipped
    return apply_overrides(load_config_file(path), args.overrides), path.resolve().parent


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
        spec["path"] = str(Path(spec["path"]).expanduser().resolve())
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
