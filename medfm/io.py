"""Atomic file and directory writes, and small config-file helpers."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping

from .config_files import load_data_file, load_yaml
from .errors import ConfigError


@contextlib.contextmanager
def atomic_directory(path: os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``path`` when the block succeeds.

    A crash inside the block leaves ``path`` as it was (the temporary is removed);
    a crash between the two renames leaves the old copy at ``path.old``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = path.with_name(path.name + ".old")
        if path.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def portable_paths(obj: Any, folder: os.PathLike) -> Any:
    """A copy of a config (nested dicts/lists) whose absolute paths are relative to ``folder``.

    For the configs a run writes beside its outputs (``run_config.json``, ``finetune_config.json``):
    they say where the inputs were as seen from the run folder, never as an absolute path of the
    machine that wrote them. Other values, and ``pathlib`` paths turned into strings, are kept.
    """
    if isinstance(obj, Mapping):
        return {k: portable_paths(v, folder) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable_paths(v, folder) for v in obj]
    if isinstance(obj, os.PathLike):
        obj = os.fspath(obj)
    if isinstance(obj, str) and os.path.isabs(obj):
        try:
            return Path(os.path.relpath(obj, Path(folder).resolve())).as_posix()
        except ValueError:  # another drive (Windows): keep only the name
            return Path(obj).name
    return obj


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_config_file(path: os.PathLike) -> Dict[str, Any]:
    """Read a YAML or JSON config file into a dict, bounded (:mod:`medfm.config_files`); errors name the file."""
    p = Path(path)
    data = load_data_file(p)  # size, nesting and YAML alias expansion bounded
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge; ``override`` wins. Inputs are not modified."""
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(config: Dict[str, Any], overrides) -> Dict[str, Any]:
    """Apply ``["optim.lr=1e-4", "data.batch_size=8"]`` (values parsed as YAML) to a nested dict."""
    out = copy.deepcopy(config)
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        value = load_yaml(raw, f"--set {key}={raw[:80]!r}")  # bounded like a config file
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.setdefault(p, {}), dict):
                raise ConfigError(f"--set {key}: {p!r} is not a mapping")
            node = node[p]
        node[parts[-1]] = value
    return out


def hash_file(path, h=None):
    """Feed a file's bytes (a path, or an open binary handle) into hasher ``h`` (a new sha256 when
    None) in 1 MiB chunks; return ``h``."""
    h = hashlib.sha256() if h is None else h
    with (open(path, "rb") if isinstance(path, (str, os.PathLike)) else contextlib.nullcontext(path)) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h
