"""Typed config schemas from dataclasses: one validator, messages with the key path.

A schema is a dataclass whose fields carry type hints (``int``, ``float``, ``bool``, ``str``,
``Optional[...]``, ``List[...]``, ``Dict[str, ...]``, ``Literal[...]``, ``Union[...]``, ``Any``,
nested dataclasses) and optional bounds in ``field(metadata=...)``: ``min``, ``max``,
``min_exclusive``. :func:`validate` checks a plain mapping (from YAML) against it and returns
the dataclass instance, or raises :class:`ConfigError` such as::

    optim.lr: expected a number, got 'abc'
    data.batch_size: must be >= 1, got 0
    train.max_stpes: unknown key; known: accumulation, checkpoint_every, ...

Numbers written as strings (PyYAML reads ``1e-3`` as a string) are accepted for
``float`` fields and converted.

A field documents itself with ``field(metadata={"doc": "..."})`` (or an ``Attributes:`` entry
of its dataclass's docstring); :func:`describe` turns a schema into rows of field, type,
default and doc, which ``medfm info --config-schema`` prints.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
import warnings
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Type, TypeVar, Union

from .errors import ConfigError

T = TypeVar("T")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if origin is Union:
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _check_bounds(value: Any, meta: Mapping[str, Any], path: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{path}: must be >= {meta['min']}, got {_show(value)}")
    if "min_exclusive" in meta and value <= meta["min_exclusive"]:
        raise ConfigError(f"{path}: must be > {meta['min_exclusive']}, got {_show(value)}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{path}: must be <= {meta['max']}, got {_show(value)}")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {_show(value)}")
        return validate(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {_show(value)}")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {_show(value)}") from None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_show(value)}")
        return value
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {_show(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {_show(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
            return [_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        item = args[0] if args else Any
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {_show(value)}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, f"{path}.{k}"): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    raise TypeError(f"schema type {tp!r} at {path} is not supported")


def validate(schema: Type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Check ``data`` against dataclass ``schema``; return the instance (defaults filled in).

    A key the schema does not declare is an unknown key (the message lists the known ones).
    """
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    values: Dict[str, Any] = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"{sub}: unknown key; known: {', '.join(sorted(fields))}")
        f = fields[key]
        coerced = _coerce(value, hints[key], sub)
        _check_bounds(coerced, f.metadata, sub)
        values[key] = coerced
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        sub = f"{path}.{missing[0]}" if path else missing[0]
        raise ConfigError(f"{sub}: required")
    obj = schema(**values)
    check = getattr(obj, "check", None)
    if callable(check):
        check(path)
    return obj


def defaults(schema: type, drop: Sequence[str] = ("name", "description")) -> Dict[str, Any]:
    """A schema's field defaults as plain containers (tuples as lists, as YAML gives them): the one
    place a config's defaults are written. ``drop`` leaves out labels that have no default meaning."""
    out = json.loads(json.dumps(to_dict(schema())))
    return {k: v for k, v in out.items() if k not in drop}


def to_dict(obj: Any) -> Any:
    """A validated schema instance back to plain containers (what a checkpoint records)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ------------------------------------------------------------------ documentation
def type_name(tp: Any) -> str:
    """A schema type as a reader writes it: ``int``, ``list[float]``, ``'gelu' | 'quick_gelu'``, ``str?``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "any"
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        text = " | ".join(type_name(a) for a in inner)
        return f"{text}?" if len(inner) < len(args) else text
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return "[" + ", ".join(type_name(a) for a in args) + "]"
        return f"list[{type_name(args[0]) if args else 'any'}]"
    if origin is dict or tp is dict:
        return f"map[{type_name(args[0])}, {type_name(args[1])}]" if args else "map"
    if dataclasses.is_dataclass(tp):
        return "section"
    return getattr(tp, "__name__", str(tp))


def _docstring_attributes(cls: Any) -> Dict[str, str]:
    """``name: text`` entries of an ``Attributes:`` block of a class docstring."""
    out: Dict[str, str] = {}
    lines = (cls.__doc__ or "").splitlines()
    inside, last = False, None
    for line in lines:
        stripped = line.strip()
        if stripped in ("Attributes:", "Fields:", "Args:"):
            inside = True
            continue
        if not inside:
            continue
        if not stripped:
            if out:
                break
            continue
        key, sep, text = stripped.partition(":")
        if sep and key.isidentifier() and line.startswith(" " * 8) and not line.startswith(" " * 12):
            out[key], last = text.strip(), key
        elif last is not None:
            out[last] += " " + stripped
    return out


def describe(schema: Type[Any], prefix: str = "") -> List[Dict[str, Any]]:
    """One row per field of ``schema`` and its nested sections, in declaration order.

    Returns ``[{"field": "optim.lr", "type": "float", "default": 0.001, "doc": "...", ...}]``;
    bounds (``min``, ``max``, ``min_exclusive``) are added where the field has them, and a
    nested section adds a row for itself (type ``section``) before its fields.
    """
    hints = typing.get_type_hints(schema)
    attr_docs = _docstring_attributes(schema)
    rows: List[Dict[str, Any]] = []
    for f in dataclasses.fields(schema):
        path = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        section = dataclasses.is_dataclass(tp)
        class_doc = (tp.__doc__ or "").strip() if section else ""
        if class_doc.startswith(f"{tp.__name__}("):  # the signature dataclasses write for an undocumented class
            class_doc = ""
        doc = f.metadata.get("doc") or attr_docs.get(f.name) or (class_doc.splitlines()[0] if class_doc else "")
        row = {"field": path, "type": type_name(tp), "default": None if section else to_dict(default), "doc": doc}
        row.update({k: f.metadata[k] for k in ("min", "max", "min_exclusive") if k in f.metadata})
        rows.append(row)
        if section:
            rows.extend(describe(tp, path))
    return rows


# ------------------------------------------------------------------ deprecations
_WARNED: set = set()


def warn_moved(where: str, new_place: str, key: Optional[Hashable] = None) -> None:
    """A :class:`FutureWarning` that the setting at ``where`` moved (``new_place`` says where).

    Shown once per process for each ``key`` (default: ``where``), however often a config is resolved.
    """
    key = where if key is None else key
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(f"{where} is deprecated; {new_place}", FutureWarning, stacklevel=3)


def apply_moves(config: Mapping[str, Any], moves: Mapping[str, str]) -> Dict[str, Any]:
    """``config`` with settings of an earlier release moved to their keys of this one, each with a
    :class:`FutureWarning` that names the new key (old configs keep working for one release).

    Args:
        config: a config as read (YAML, ``--set`` applied); not modified.
        moves: ``{"old.dotted.key": "new.dotted.key"}``.

    Raises:
        ConfigError: both the old and the new key are set.
    """
    out = copy.deepcopy(dict(config)) if _moved_any(config, moves) else dict(config)
    for old, new in moves.items():
        *old_parents, old_leaf = old.split(".")
        holder = _section(out, old_parents)
        if holder is None or old_leaf not in holder:
            continue
        value = holder.pop(old_leaf)
        *new_parents, new_leaf = new.split(".")
        target = out
        for part in new_parents:
            nxt = target.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{'.'.join(new_parents)}: expected a mapping, got {_show(nxt)}")
            target = nxt
        if new_leaf in target:
            raise ConfigError(f"{old} and {new} are both set: {old} is the key of an earlier release; keep {new}")
        target[new_leaf] = value
        warn_moved(old, f"write {new} instead (the old key works for one more release)")
    return out


def move_override_keys(overrides: Sequence[str], moves: Mapping[str, str]) -> List[str]:
    """``--set KEY=VALUE`` items whose key (or a key below it) moved, rewritten to the new key, each with the
    warning of :func:`apply_moves`: ``optim.epochs=3`` → ``train.epochs=3``, ``columns.ecg=x`` → ``data.columns.ecg=x``."""
    out = []
    for item in overrides or ():
        key, sep, value = str(item).partition("=")
        k = key.strip()
        for old, new in moves.items():
            if sep and (k == old or k.startswith(old + ".")):
                warn_moved(old, f"write {new} instead (the old key works for one more release)")
                item = f"{new}{k[len(old):]}={value}"
                break
        out.append(item)
    return out


def _section(config: Any, parts: Sequence[str]) -> Optional[Dict[str, Any]]:
    for part in parts:
        if not isinstance(config, Mapping) or not isinstance(config.get(part), Mapping):
            return None
        config = config[part]
    return config if isinstance(config, dict) else None


def _moved_any(config: Mapping[str, Any], moves: Mapping[str, str]) -> bool:
    for old in moves:
        *parents, leaf = old.split(".")
        holder = _section(config, parents)
        if holder is not None and leaf in holder:
            return True
    return False
