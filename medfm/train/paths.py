"""The one rule for relative paths in a run or fine-tuning config.

**A relative path in a config resolves against the folder of the config file it came
from** (``config_dir``: the CLI passes the YAML file's folder). A config given without a
file (the Python API with ``config_dir=None``) resolves against the working directory.
``~`` is expanded. The CLI's own path flags (``--manifest``, ``--base``) are made absolute
against the working directory before they enter the config.

Applies to ``data.manifest`` and ``data.root`` (pretraining) and ``base`` and
``data.manifest`` (fine-tuning).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..errors import ConfigError


def config_path(value: os.PathLike, config_dir: Optional[os.PathLike], key: str) -> Path:
    """``value`` resolved by the rule above (whether it exists is the reader's check).

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
                          "relative path in a config resolves against the config's folder: give it as an absolute "
                          "path (or one relative to the config)")
    return resolved
