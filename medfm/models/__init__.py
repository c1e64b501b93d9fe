"""Models: token embedders, towers, the multimodal model and its factory."""
from . import embedders, hf_tower, vit_tower  # noqa: F401  (register "patch1d/2d/3d", "tokens", "vit", "hf")
from .config import ModelConfig
from .factory import create_model, load_pretrained, resolve_config, resolve_model_config
from .multimodal import MultiModalModel

__all__ = ["create_model", "load_pretrained", "resolve_config", "resolve_model_config", "ModelConfig",
           "MultiModalModel"]
