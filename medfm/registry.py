"""Name → factory registries, in the spirit of timm's ``register_model``.

Registries live here: modality adapters, token embedders, towers,
objectives and weight-file formats, plus named model configurations. Modality adapters are found only
through :data:`MODALITIES`; the engine imports ``medfm.modalities`` (and any
``medfm.modalities`` entry point of third-party packages) the first time a
modality is looked up, so that ``medfm/`` never imports a modality by name.
"""
from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Callable, Dict, Iterable, List, Optional

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
        self._loader = loader
        self._loaded = loader is None

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

    def get(self, name: str) -> Any:
        self._ensure_loaded()
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._items)) or '(none)'}"
            ) from None

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._items

    def names(self) -> List[str]:
        self._ensure_loaded()
        return sorted(self._items)

    def items(self) -> Iterable:
        self._ensure_loaded()
        return sorted(self._items.items())


def _load_modalities() -> None:
    importlib.import_module("medfm.modalities")
    try:
        eps = metadata.entry_points(group="medfm.modalities")
    except TypeError:  # pragma: no cover - python < 3.10
        eps = metadata.entry_points().get("medfm.modalities", [])
    for ep in eps:
        ep.load()


def _load_objectives() -> None:
    importlib.import_module("medfm.objectives")


def _load_models() -> None:
    importlib.import_module("medfm.models")


def _load_checkpoint_kinds() -> None:
    importlib.import_module("medfm.finetune.model")  # the built-in kind: a fine-tuned model


MODALITIES = Registry("modality", loader=_load_modalities)
EMBEDDERS = Registry("token embedder", loader=_load_models)
TOWERS = Registry("tower", loader=_load_models)
OBJECTIVES = Registry("objective", loader=_load_objectives)
MODELS = Registry("model config", loader=_load_models)
#: file layouts a tower's weights can be imported from (``model.modalities.<m>.init.format``);
#: the readers live with the modalities (``medfm.modalities.weight_formats``)
WEIGHT_FORMATS = Registry("weight format", loader=_load_modalities)
#: checkpoints built on a base model, keyed by the ``config.json`` section that marks them
#: (``"finetune"``); ``MultiModalModel.from_pretrained`` hands such a directory to the loader,
#: so the model layer never imports the layers above it
CHECKPOINT_KINDS = Registry("checkpoint kind", loader=_load_checkpoint_kinds)

register_modality = MODALITIES.register
register_embedder = EMBEDDERS.register
register_tower = TOWERS.register
register_objective = OBJECTIVES.register
register_model = MODELS.register
register_weight_format = WEIGHT_FORMATS.register
register_checkpoint_kind = CHECKPOINT_KINDS.register


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
