"""Lazy package exports (PEP 562): a package names what it exports and from which submodule,
and the submodule is imported on first attribute access.

So ``import medfm`` and ``medfm --help`` import no torch, while ``medfm.create_model`` and
``from medfm.models import MultiModalModel`` work as before::

    __getattr__, __dir__ = lazy_exports(__name__, {".factory": ["create_model", "load_pretrained"]})
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Dict, Iterable, List, Tuple


def lazy_exports(package: str, exports: Dict[str, Iterable[str]]) -> Tuple[Callable[[str], object],
                                                                             Callable[[], List[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a module (relative to ``package``
    when it starts with a dot) to the names it provides. A submodule's own name (``medfm.models``)
    is imported on access as well. A resolved name is cached in the package's namespace."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        namespace = sys.modules[package].__dict__
        if name in where:
            value = getattr(importlib.import_module(where[name], package), name)
        elif not name.startswith("__"):
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> List[str]:
        return sorted(set(sys.modules[package].__dict__) | set(where))

    return __getattr__, __dir__
