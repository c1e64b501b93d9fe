"""Where each registry of :mod:`medfm.registry` finds its entries: the built-in modules and the
third-party entry points, imported the first time the registry is used.

The registries sit at the bottom of the engine and every module that registers into them imports
:mod:`medfm.registry`; the names of those modules therefore live here, above them, and
``import medfm`` (run before any ``medfm.*`` module) installs the loaders. Nothing below imports
this module, so importing by name here is no cycle (``tests/test_layering.py`` reads these names
as edges).

Built-in towers: add the module that registers them to :func:`load_towers`.
"""
from __future__ import annotations

import importlib

from .registry import EMBEDDERS, MODALITIES, MODELS, OBJECTIVES, SOURCES, TOWERS, WEIGHT_FORMATS


def entry_points(group: str):
    """The installed packages' entry points of ``group`` (``medfm.modalities``, ...)."""
    from importlib import metadata  # deferred: the plug-in scan (~0.1 s of imports) only when a registry is used

    try:
        return metadata.entry_points(group=group)
    except TypeError:  # pragma: no cover - python < 3.10
        return metadata.entry_points().get(group, [])


def load_modalities() -> None:
    """Declare the built-in adapters, weight formats and scanners; load third-party adapters."""
    importlib.import_module("medfm.modalities")
    for ep in entry_points("medfm.modalities"):
        ep.load()


def load_objectives() -> None:
    """Declare the built-in objectives; load third-party ones (an objective may own parameters:
    :class:`medfm.train.task.PretrainTask`)."""
    importlib.import_module("medfm.objectives")
    for ep in entry_points("medfm.objectives"):
        ep.load()


def load_towers() -> None:
    """Register the built-in token embedders ("patch1d/2d/3d", "tokens") and towers ("vit", "hf")."""
    importlib.import_module("medfm.models.embedders")
    importlib.import_module("medfm.models.hf_tower")
    importlib.import_module("medfm.models.vit_tower")


def load_models() -> None:
    importlib.import_module("medfm.models.presets")  # registers configs/models/*.yaml (no torch)
    importlib.import_module("medfm.modalities.family_specs")  # registers the family presets (no torch)


def install() -> None:
    """Give every registry its loader (run by ``import medfm``)."""
    for registry in (MODALITIES, WEIGHT_FORMATS, SOURCES):
        registry.set_loader(load_modalities)
    EMBEDDERS.set_loader(load_towers)
    TOWERS.set_loader(load_towers)
    # towers whose backbone a library builds (timm, transformers, MONAI): imported when first used
    TOWERS.declare("timm", "medfm.models.timm_tower", summary="timm backbone (medfm.models.timm_tower)")
    TOWERS.declare("hf_encoder", "medfm.models.hf_encoder_tower",
                   summary="hf_encoder backbone (medfm.models.hf_encoder_tower)")
    TOWERS.declare("monai", "medfm.models.monai_tower", summary="monai backbone (medfm.models.monai_tower)")
    OBJECTIVES.set_loader(load_objectives)
    MODELS.set_loader(load_models)


install()
