"""Name → factory registries, in the spirit of timm's ``register_model``.

Registries live here: modality adapters, token embedders, towers,
objectives and weight-file formats, plus named model configurations. Modality adapters are found only
through :data:`MODALITIES`. This module names no module that registers into it (every such
module imports it: naming one here would be an import cycle): each registry's *loader* — which
imports the built-in modules and the third-party entry points the first time the registry is
used — is installed from above by :mod:`medfm.plugins` (``import medfm`` installs them).

Built-in entries are *declared* (:meth:`Registry.declare`): name, the module that registers it,
and what ``medfm info`` lists (a modality's input kind and suffixes, a format's description).
The module is imported the first time the entry itself is needed, so listing what exists
(``medfm --help``, ``medfm info``) imports neither torch nor any adapter.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .errors import ConfigError


class Registry:
    """A mapping of names to classes or functions, filled by decorators.

    Example:
        >>> EMBEDDERS = Registry("token embedder")
        >>> @EMBEDDERS.register("patch2d")
        ... class PatchEmbed2D: ...
    """

    def __init__(self, kind: str, loader: Optional[Callable[[], None]] = None):
        self.kind = kind
        self._items: Dict[str, Any] = {}
        #: name -> (module that registers it when imported, what is known of it without importing)
        self._declared: Dict[str, Tuple[str, Dict[str, Any]]] = {}
        self._loader = loader
        self._loaded = loader is None

    def set_loader(self, loader: Callable[[], None]) -> None:
        """Install what finds the entries (built-in modules, entry points), run once on first use."""
        self._loader, self._loaded = loader, False

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            self._loader()

    def register(self, name: Optional[str] = None, *, override: bool = False) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            key = name or getattr(obj, "name", None) or obj.__name__
            if key in self._items and not override and self._items[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return deco

    def declare(self, name: str, module: str, **meta: Any) -> None:
        """Announce ``name`` without importing it: importing ``module`` registers it.

        ``meta`` is what is known of the entry before the import (``describe`` returns it); the
        test of the built-in declarations checks it against the registered object.
        """
        self._declared[name] = (module, dict(meta))

    def _resolve(self, name: str) -> None:
        if name in self._items or name not in self._declared:
            return
        module = self._declared[name][0]
        importlib.import_module(module)
        if name not in self._items:
            raise ConfigError(f"{self.kind} {name!r} is declared in {module}, which did not register it")

    def get(self, name: str) -> Any:
        self._ensure_loaded()
        self._resolve(name)
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names()) or '(none)'}"
                              ) from None

    def describe(self, name: str) -> Optional[Dict[str, Any]]:
        """What the declaration of ``name`` says (no import), or ``None`` for an undeclared entry."""
        self._ensure_loaded()
        declared = self._declared.get(name)
        return dict(declared[1]) if declared else None

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._items or name in self._declared

    def names(self) -> List[str]:
        """Every name, declared or registered; imports nothing beyond the loader."""
        self._ensure_loaded()
        return sorted(set(self._items) | set(self._declared))

    def items(self) -> Iterable:
        """``(name, object)`` of every entry, sorted; imports the modules of declared entries."""
        self._ensure_loaded()
        for name in sorted(self._declared):
            self._resolve(name)
        return sorted(self._items.items())


MODALITIES = Registry("modality")
EMBEDDERS = Registry("token embedder")
TOWERS = Registry("tower")
OBJECTIVES = Registry("objective")
MODELS = Registry("model config")
#: file layouts a tower's weights can be imported from (``model.modalities.<m>.init.format``);
#: the readers live with the modalities (``medfm.modalities.weight_formats``)
WEIGHT_FORMATS = Registry("weight format")
#: manifest scanners of ``medfm manifest`` (:mod:`medfm.data.cohort`): name → scanner class
#: (``detect(path) -> bool``, ``scan(path, ctx) -> Iterator[Entry | Unreadable]``); built-ins in ``medfm.modalities``
SOURCES = Registry("manifest source")

register_modality = MODALITIES.register
register_embedder = EMBEDDERS.register
register_tower = TOWERS.register
register_objective = OBJECTIVES.register
register_model = MODELS.register
register_weight_format = WEIGHT_FORMATS.register


def get_modality(name: str, **options: Any):
    """Instantiate the adapter registered as ``name`` with ``options``.

    ``options["adapter"]`` names the registered adapter when ``name`` is a second modality
    of the same kind, e.g. ``get_modality("impression", adapter="text")`` for a findings ↔
    impression model with two text towers; the adapter remembers it (``config()`` returns
    it, so checkpoints rebuild the same adapter).
    """
    kind = options.pop("adapter", None) or name
    adapter = MODALITIES.get(kind)(**options)
    if kind != name:
        adapter.alias_of = kind
    return adapter


def list_modalities() -> List[str]:
    return MODALITIES.names()
