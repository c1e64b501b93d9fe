"""``create_model`` and the named model presets (open_clip ``factory.py`` style)."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from ..errors import ConfigError
from ..io import deep_merge, load_config_file
from ..registry import MODELS, get_modality, register_model
from .init import apply_init, prepare_init
from .multimodal import CONFIG_NAME, DEFAULT_CONFIG, MultiModalModel


@register_model("medfm-tiny")
def medfm_tiny() -> Dict[str, Any]:
    """Unit tests and the demo: 2 blocks of width 64."""
    return {"embed_dim": 64, "trunk": {"width": 64, "depth": 2, "heads": 2},
            "decoder": {"width": 32, "depth": 1, "heads": 2}}


@register_model("medfm-small")
def medfm_small() -> Dict[str, Any]:
    return {"embed_dim": 256, "trunk": {"width": 384, "depth": 6, "heads": 6},
            "decoder": {"width": 256, "depth": 2, "heads": 8}}


@register_model("medfm-base")
def medfm_base() -> Dict[str, Any]:
    """ViT-B/16-sized trunk (as MAE, RETFound, OCTCube)."""
    return {"embed_dim": 512, "trunk": {"width": 768, "depth": 12, "heads": 12},
            "decoder": {"width": 512, "depth": 8, "heads": 16}}


def _shipped(name: str) -> Optional[Path]:
    """A config shipped in ``medfm.configs`` (e.g. ``models/small_3d.yaml``), or None."""
    from medfm.configs import config_path

    p = config_path(name)
    return p if p.is_file() else None


def resolve_config(config: Union[str, os.PathLike, Mapping[str, Any]],
                   base_dir: Optional[os.PathLike] = None) -> Dict[str, Any]:
    """Name, YAML/JSON path or dict → a config dict merged over the defaults and its preset ``name``.

    ``modalities.<m>.init`` entries are moved to ``config["init"]`` with their format resolved
    (see :mod:`medfm.models.init`); relative init paths resolve against the YAML file's folder
    (or ``base_dir``, the folder of the run config a dict came from).
    """
    if isinstance(config, (str, Path)):
        s = str(config)
        if s in MODELS:
            cfg: Dict[str, Any] = {"name": s}
        elif Path(s).is_file() or _shipped(s) is not None:
            path = Path(s) if Path(s).is_file() else _shipped(s)
            base_dir = path.resolve().parent
            cfg = load_config_file(path)
            cfg = cfg.get("model", cfg)
        else:
            raise ConfigError(f"unknown model {s!r}: not a preset ({', '.join(MODELS.names())}) nor a config file")
    else:
        cfg = copy.deepcopy(dict(config))
    base = copy.deepcopy(DEFAULT_CONFIG)
    name = cfg.get("name")
    if name is not None:
        base = deep_merge(base, MODELS.get(name)())
    return prepare_init(deep_merge(base, cfg), base_dir)


def create_model(config: Union[str, os.PathLike, Mapping[str, Any]], pretrained: Optional[os.PathLike] = None,
                 adapters: Optional[Dict[str, Any]] = None) -> MultiModalModel:
    """Build a :class:`MultiModalModel`.

    Args:
        config: a preset name (``"medfm-tiny"``), a YAML/JSON file, a dict, or a checkpoint
            directory. ``config["modalities"]`` maps modality names to adapter options;
            ``config["towers"][name]`` overrides parts of the tower config the adapter proposes.
        pretrained: a checkpoint directory whose weights are loaded (strictly).
            ``config["modalities"][m]["init"]`` imports a tower's weights from a timm / MAE /
            RETFound / OCTCube / MONAI / open_clip / Hugging Face / medfm file instead
            (:mod:`medfm.models.init`); the report is ``model.init_reports``.
        adapters: ready adapter instances (e.g. with a fitted tokenizer); others are
            built from ``config["modalities"]``.

    Example:
        >>> model = create_model({"name": "medfm-tiny", "modalities": {"ecg": {}, "text": {}}})
        >>> z = model.encode("ecg", torch.randn(2, 12, 5000))   # (2, 64)
    """
    if isinstance(config, (str, Path)) and (Path(config) / CONFIG_NAME).is_file():
        model = MultiModalModel.from_pretrained(config)
        if pretrained is not None:
            raise ConfigError("give a checkpoint directory either as config or as pretrained, not both")
        return model
    cfg = resolve_config(config)
    init = cfg.pop("init", None)
    adapters = dict(adapters or {})
    for name, options in cfg.get("modalities", {}).items():
        if name not in adapters:
            adapters[name] = get_modality(name, **(options or {}))
    if not adapters:
        raise ConfigError("the model config names no modality (config['modalities'] is empty)")
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


def load_pretrained(directory: os.PathLike) -> MultiModalModel:
    """Load a checkpoint directory written by ``save_pretrained`` (base or fine-tuned)."""
    return MultiModalModel.from_pretrained(directory)
