"""medfm: multimodal foundation models for medicine and biology.

Public API::

    import medfm
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"ct": {}, "text": {}}})
    z = model.encode("ct", x)                 # (B, embed_dim), L2-normalised
    adapter = medfm.get_modality("ecg")       # readers + preprocessing of a modality
    model.save_pretrained("ckpt"); model = medfm.load_pretrained("ckpt")
"""
from .errors import CheckpointError, ConfigError, DataError, MedFMError, UsageError
from .models import MultiModalModel, create_model, load_pretrained
from .registry import (MODALITIES, OBJECTIVES, MODELS, get_modality, list_modalities, register_embedder,
                       register_modality, register_model, register_objective, register_tower)

__version__ = "0.1.0"

__all__ = [
    "MedFMError", "UsageError", "ConfigError", "DataError", "CheckpointError",
    "MultiModalModel", "create_model", "load_pretrained",
    "get_modality", "list_modalities", "register_modality", "register_embedder", "register_model",
    "register_objective", "register_tower", "MODALITIES", "OBJECTIVES", "MODELS",
]
