"""medfm: multimodal foundation models for medicine and biology.

Public API::

    import medfm
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"ct": {}, "text": {}}})
    z = model.encode("ct", x)                 # (B, embed_dim), L2-normalised
    adapter = medfm.get_modality("ecg")       # readers + preprocessing of a modality
    model.save_pretrained("ckpt"); model = medfm.load_pretrained("ckpt")

The model names are imported on first use (:mod:`medfm.lazy`): ``import medfm`` imports no torch.
``load_pretrained`` loads a checkpoint folder of any kind (:mod:`medfm.pretrained`; the folder's
layout: :mod:`medfm.checkpoint`).
"""
from . import plugins  # noqa: F401  (gives each registry its loader: built-in modules, entry points)
from .errors import CheckpointError, ConfigError, DataError, MedFMError, UsageError
from .lazy import lazy_exports
from .registry import (MODALITIES, OBJECTIVES, MODELS, get_modality, list_modalities, register_embedder,
                       register_modality, register_model, register_objective, register_tower)

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(__name__, {".models": ["MultiModalModel", "create_model"],
                                               ".pretrained": ["load_pretrained"]})

__all__ = [
    "MedFMError", "UsageError", "ConfigError", "DataError", "CheckpointError",
    "MultiModalModel", "create_model", "load_pretrained",
    "get_modality", "list_modalities", "register_modality", "register_embedder", "register_model",
    "register_objective", "register_tower", "MODALITIES", "OBJECTIVES", "MODELS",
]
