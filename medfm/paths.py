"""The one rule for relative paths a user gives medfm.

* **A path typed on the command line resolves against the working directory** — ``--manifest``,
  ``--base``, ``--init MOD=PATH``, ``--init-from``, ``--out`` and ``--set KEY=PATH`` for the
  path keys of :data:`PATH_KEYS`. The CLI makes them absolute (:func:`command_line_path`,
  :func:`command_line_overrides`) *before* the config-relative rule below runs, so ``--set
  data.manifest=my_ecgs.csv`` means ``./my_ecgs.csv`` whichever config it edits.
* **A path written inside the user's own config file resolves against that file's folder**
  (``config_dir``: the CLI passes the YAML file's folder; :func:`config_path`).
* **A shipped recipe found by name** (``ecg_mae_cpu.yaml`` from the installed ``configs/``)
  has no folder of its own for this rule: ``config_dir`` is ``None`` and its relative paths,
  if any, resolve against the working directory. A user's path never resolves inside the
  package. (Model configs and prompt sets named in a recipe are still found by name among the
  shipped ones.)
* A config given in Python without a file (``config_dir=None``) resolves against the working
  directory.
* **Manifest cells resolve against the manifest's folder** (:mod:`medfm.data.dataset`), and
  reading them is confined (:mod:`medfm.data.confine`).

``~`` is expanded everywhere. Keys: ``data.manifest``, ``data.root``, ``data.cache_dir``,
``data.shards`` (a URL is left alone), ``train.init_from`` (pretraining), ``base`` (fine-tuning),
``model`` (a file; a preset name stays a name).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, List, Optional

import yaml

from .errors import ConfigError

#: config keys whose value is a path: made absolute when given with ``--set``
PATH_KEYS = ("data.manifest", "data.root", "data.cache_dir", "data.shards", "train.init_from")
#: config keys whose value is a path *or a name* (a preset, a shipped config): made absolute when
#: given with ``--set`` and the path exists relative to the working directory
PATH_OR_NAME_KEYS = ("base", "model")


def is_url(value: str) -> bool:
    """``s3://...``, ``https://...``, ``file://...``: not a local path."""
    return "://" in value


def command_line_path(value: os.PathLike, *, may_be_name: bool = False) -> str:
    """A path typed on the command line, absolute against the working directory.

    ``may_be_name``: a value that does not exist relative to the working directory is kept as
    typed (a preset or shipped config name, looked up by name later). URLs are kept as typed.
    """
    s = str(value)
    if is_url(s):
        return s
    p = Path(s).expanduser()
    if p.is_absolute():
        return str(p)
    if may_be_name and not p.exists():
        return s
    return os.path.abspath(p)


def command_line_overrides(overrides: Iterable[str]) -> List[str]:
    """``--set KEY=VALUE`` items with the path values of :data:`PATH_KEYS` / :data:`PATH_OR_NAME_KEYS`
    made absolute against the working directory (the values of other keys are untouched)."""
    out = []
    for item in overrides or ():
        key, sep, raw = str(item).partition("=")
        k = key.strip()
        if sep and k in PATH_KEYS + PATH_OR_NAME_KEYS:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = None  # apply_overrides names the problem
            if isinstance(value, str) and value:
                item = f"{key}={json.dumps(command_line_path(value, may_be_name=k in PATH_OR_NAME_KEYS))}"
        out.append(item)
    return out


def config_path(value: os.PathLike, config_dir: Optional[os.PathLike], key: str) -> Path:
    """``value`` from a config resolved by the rule above (whether it exists is the reader's check).

    Raises:
        ConfigError: a relative path that is missing under the config's folder but exists
            relative to the working directory (the other rule); the message names ``key``.
    """
    p = Path(str(value)).expanduser()
    if p.is_absolute() or config_dir is None:
        return p
    resolved = Path(config_dir) / p
    if not resolved.exists() and p.exists():
        raise ConfigError(f"{key}: {resolved} does not exist; {p} exists relative to the working directory, but a "
                          "relative path in a config file resolves against the config's folder: give it with "
                          f"--set {key}={p} (the command line resolves against the working directory), as an "
                          "absolute path, or relative to the config")
    return resolved


def optional_config_path(value: Optional[str], config_dir: Optional[os.PathLike], key: str) -> Optional[str]:
    """:func:`config_path` for an optional key (``None`` and URLs pass unchanged), as a string."""
    if not value or is_url(str(value)):
        return value
    return str(config_path(value, config_dir, key))
