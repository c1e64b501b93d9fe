"""Reading config files safely: YAML and JSON with size, nesting and alias expansion bounded.

Every YAML or JSON file a person writes or downloads — run and fine-tune configs, model presets,
prompt sets, recipes, checkpoint ``config.json`` files — and every ``--set`` value is read here.
A YAML anchor may be reused (``*name``) as YAML allows, but the document *as it would be
expanded* must stay small: a 1 KB "billion laughs" alias bomb (nine aliases of nine aliases …)
expands to hundreds of millions of nodes and is refused at once, before anything walks, copies or
serialises it. Limits (fixed; no config file needs more):

==================  ===========  ======================================================
limit               value        what it bounds
==================  ===========  ======================================================
file size           16 MiB       bytes read (counted while reading)
nesting depth       64           mappings and lists inside each other (aliases expanded)
expanded nodes      1 000 000    nodes of the document with every alias expanded
expanded text       64 MiB       characters of the scalars with every alias expanded
==================  ===========  ======================================================

A recursive alias (``&a [*a]``) is refused too. Errors are :class:`~medfm.errors.ConfigError`
naming the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml

from .errors import ConfigError, DataError
from .input_files import open_regular

MAX_CONFIG_BYTES = 16 * 2 ** 20
MAX_DEPTH = 64
MAX_NODES = 1_000_000
MAX_CHARS = 64 * 2 ** 20


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader; :func:`load_yaml` checks the composed node graph before constructing."""


def _expanded_size(root: yaml.Node, source: str) -> Tuple[int, int, int]:
    """``(nodes, scalar characters, depth)`` of the document with aliases expanded, computed once per
    distinct node (iteratively: no recursion limit), stopping as soon as a limit is passed."""
    memo: Dict[int, Tuple[int, int, int]] = {}
    on_path = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = _children(node)
            nodes, chars, depth = 1, 0, 0
            for k in kids:
                n, c, d = memo[id(k)]
                nodes, chars, depth = nodes + n, chars + c, max(depth, d)
            size = (nodes, chars, depth + (1 if kids or not isinstance(node, yaml.ScalarNode) else 0))
            _check(size, source)
            memo[key] = size
            continue
        if key in memo:
            continue
        if key in on_path:
            raise ConfigError(f"{source}: a YAML alias refers to the node that contains it (a recursive "
                              "structure); write the value out")
        if isinstance(node, yaml.ScalarNode):
            memo[key] = (1, len(node.value), 0)
            continue
        on_path.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in memo)
    return memo[id(root)]


def _children(node: yaml.Node):
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return []


def _check(size: Tuple[int, int, int], source: str) -> None:
    nodes, chars, depth = size
    if nodes > MAX_NODES or chars > MAX_CHARS:
        raise ConfigError(f"{source}: the YAML expands to more than {MAX_NODES:,} values or {MAX_CHARS // 2 ** 20} "
                          "MiB of text once its aliases (*name) are expanded (an alias bomb?); write the values "
                          "out or use fewer aliases")
    if depth > MAX_DEPTH:
        raise ConfigError(f"{source}: values nested more than {MAX_DEPTH} levels deep")


def load_yaml(text: str, source: str = "<yaml>") -> Any:
    """One YAML document (``None`` when empty), bounded as the module docstring says."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: over {MAX_CONFIG_BYTES // 2 ** 20} MiB; not a config file")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: values nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def _json_depth(obj: Any) -> int:
    depth, level = 0, [obj]
    while level:
        depth += 1
        if depth > MAX_DEPTH + 1:
            return depth
        level = [v for o in level if isinstance(o, (dict, list))
                 for v in (o.values() if isinstance(o, dict) else o)]
    return depth - 1


def load_json(text: str, source: str = "<json>") -> Any:
    """One JSON document, with the size and nesting limits of the module docstring."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: over {MAX_CONFIG_BYTES // 2 ** 20} MiB; not a config file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not valid JSON: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: values nested more than {MAX_DEPTH} levels deep") from None
    if _json_depth(data) > MAX_DEPTH:
        raise ConfigError(f"{source}: values nested more than {MAX_DEPTH} levels deep")
    return data


def read_config_text(path: os.PathLike) -> str:
    """The text of a config file: a regular file, at most 16 MiB (counted while reading), UTF-8."""
    p = Path(path)
    try:
        data = _read_capped(p)
    except DataError as e:
        raise ConfigError(f"{p}: {e.reason}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_capped(p: Path) -> bytes:
    with open_regular(p, what="config file") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise DataError(f"over {MAX_CONFIG_BYTES // 2 ** 20} MiB; not a config file", source=str(p))
    return data


def load_data_file(path: os.PathLike, *, kind: Optional[str] = None) -> Any:
    """A YAML or JSON file (``kind`` ``"json"``/``"yaml"``, default by suffix: ``.json`` is JSON),
    any top-level type, bounded. Raises :class:`ConfigError` naming the file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    text = read_config_text(p)
    kind = kind or ("json" if p.suffix.lower() == ".json" else "yaml")
    return load_json(text, str(p)) if kind == "json" else load_yaml(text, str(p))
