"""``create_model`` and ``resolve_config``: a model config (preset name, file, mapping) → a model.

Presets are the YAML files of ``configs/models/`` (:mod:`medfm.models.presets`); the defaults of
every field are those of the typed schema :class:`medfm.models.config.ModelConfig`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from ..checkpoint import is_checkpoint
from ..errors import ConfigError
from ..io import deep_merge, load_config_file
from ..registry import MODELS, get_modality
from ..schema import to_dict
from .config import ModelConfig, map_moved_settings, model_defaults, validate_model_config
from .init import apply_init, prepare_init
from .multimodal import MultiModalModel
from .presets import preset_config
from medfm.configs import config_path

ModelSource = Union[str, os.PathLike, Mapping[str, Any], ModelConfig]


def _shipped(name: str) -> Optional[Path]:
    """A config shipped in ``medfm.configs`` (e.g. ``models/small_3d.yaml``), or None."""

    p = config_path(name)
    return p if p.is_file() else None


def _source(config: ModelSource, base_dir: Optional[os.PathLike]) -> Tuple[Dict[str, Any], Optional[Path], str]:
    """``(the user's mapping, base_dir, label for messages)`` of a name, file, mapping or ModelConfig."""
    if isinstance(config, ModelConfig):
        return to_dict(config), base_dir, "model"
    if isinstance(config, (str, Path)):
        s = str(config)
        if s in MODELS:
            return {"name": s}, base_dir, "model"
        path = Path(s) if Path(s).is_file() else _shipped(s)
        if path is None:
            raise ConfigError(f"unknown model {s!r}: not a preset ({', '.join(MODELS.names())}) nor a config file")
        cfg = load_config_file(path)
        cfg = cfg.get("model", cfg) if isinstance(cfg, Mapping) else cfg
        if isinstance(cfg, (str, Path)):  # a run config whose model: is a preset name or another file
            return _source(cfg, path.resolve().parent)
        return cfg, path.resolve().parent, str(path)
    if not isinstance(config, Mapping):
        raise ConfigError(f"model: expected a preset name, a config file or a mapping, got {config!r}")
    return dict(config), base_dir, "model"


def resolve_model_config(config: ModelSource, base_dir: Optional[os.PathLike] = None) -> ModelConfig:
    """Name, YAML/JSON path, mapping or :class:`ModelConfig` → the checked, complete :class:`ModelConfig`.

    Order: the schema's field defaults, then the preset named by ``name`` (and those it extends),
    then the given config. The given config is checked first (an unknown key is a
    :class:`ConfigError` with its path, before anything is built or read); deprecated places of a
    setting warn and are mapped (:func:`medfm.models.config.map_moved_settings`).
    ``modalities.<m>.init`` entries are moved to ``init`` with their format resolved
    (:mod:`medfm.models.init`); relative init paths resolve against the YAML file's folder
    (or ``base_dir``, the folder of the run config a mapping came from).
    """
    src, base_dir, where = _source(config, base_dir)
    label = "" if where != "model" else "model"
    try:
        validate_model_config(src, label)
        src = map_moved_settings(src, label)
        name = src.get("name")
        base = model_defaults()
        if name is not None:
            if name not in MODELS:
                raise ConfigError(f"{label + '.' if label else ''}name: unknown model preset {name!r}; "
                                  f"available: {', '.join(MODELS.names())}")
            base = deep_merge(base, preset_config(str(name)))
        merged = prepare_init(deep_merge(base, src), base_dir)
        return validate_model_config(merged, label)
    except ConfigError as e:
        if where == "model":
            raise
        raise ConfigError(f"{where}: {e}") from None


def resolve_config(config: ModelSource, base_dir: Optional[os.PathLike] = None) -> Dict[str, Any]:
    """:func:`resolve_model_config` as plain containers (the form saved in ``config.json``).

    ``name`` is left out when no preset was named and ``init`` when no weights are imported.
    """
    cfg = to_dict(resolve_model_config(config, base_dir))
    if cfg.get("name") is None:
        cfg.pop("name", None)
    if not cfg.get("init"):
        cfg.pop("init", None)
    return cfg


def create_model(config: Union[str, os.PathLike, Mapping[str, Any]], pretrained: Optional[os.PathLike] = None,
                 adapters: Optional[Dict[str, Any]] = None) -> MultiModalModel:
    """Build a :class:`MultiModalModel`.

    Args:
        config: a preset name (``"medfm-tiny"``), a YAML/JSON file, a dict, a
            :class:`~medfm.models.config.ModelConfig`, or a checkpoint directory.
            ``config["modalities"]`` maps modality names to adapter options;
            ``config["towers"][name]`` overrides parts of the tower config the adapter proposes.
        pretrained: a checkpoint directory whose weights are loaded (strictly). A checkpoint
            directory (as ``config`` or ``pretrained``) must hold the complete base layout: a
            fine-tuned folder that holds only what was trained is a :class:`CheckpointError`
            (:func:`medfm.load_pretrained` loads it as a ``FineTunedModel``).
            ``config["modalities"][m]["init"]`` imports a tower's weights from a timm / MAE /
            RETFound / OCTCube / MONAI / open_clip / Hugging Face / medfm file instead
            (:mod:`medfm.models.init`); the report is ``model.init_reports``.
        adapters: ready adapter instances (e.g. with a fitted tokenizer); others are
            built from ``config["modalities"]``.

    Example:
        >>> model = create_model({"name": "medfm-tiny", "modalities": {"ecg": {}, "text": {}}})
        >>> z = model.encode("ecg", torch.randn(2, 12, 5000))   # (2, 64)
    """
    if isinstance(config, (str, os.PathLike)) and is_checkpoint(config):
        model = MultiModalModel.from_pretrained(config)
        if pretrained is not None:
            raise ConfigError("give a checkpoint directory either as config or as pretrained, not both")
        return model
    cfg = resolve_config(config)
    init = cfg.pop("init", None)
    adapters = dict(adapters or {})
    for name, options in cfg.get("modalities", {}).items():
        if name not in adapters:
            try:
                adapters[name] = get_modality(name, **(options or {}))
            except ConfigError as e:
                raise ConfigError(f"model.modalities.{name}: {e}") from None
    if not adapters:
        raise ConfigError("the model config names no modality (config['modalities'] is empty)")
    unknown = sorted(set(cfg.get("towers", {})) - set(adapters))
    if unknown:
        raise ConfigError(f"model.towers.{unknown[0]}: not a modality of this model (it has: {', '.join(adapters)})")
    towers = {}
    for name, adapter in adapters.items():
        towers[name] = deep_merge(adapter.tower_config(), cfg.get("towers", {}).get(name, {}))
    cfg["towers"] = towers
    cfg["modalities"] = {name: a.config() for name, a in adapters.items()}
    model = MultiModalModel(cfg, adapters)
    if pretrained is not None:
        weights = MultiModalModel.from_pretrained(pretrained)
        model.load_state_dict(weights.state_dict(), strict=True)
    if init:
        apply_init(model, init)
    return model

