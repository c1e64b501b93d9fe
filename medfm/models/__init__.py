"""Models: token embedders, towers, the multimodal model and its factory."""
from . import embedders, vit_tower  # noqa: F401  (register "patch1d/2d/3d", "tokens", "vit")
from .config import ModelConfig
from .factory import create_model, load_pretrained, resolve_config, resolve_model_config
from .multimodal import MultiModalModel

try:  # the Hugging Face tower registers itself as "hf"
    from . import hf_tower  # noqa: F401
except ModuleNotFoundError as e:  # pragma: no cover - only while the module is being written
    if e.name != f"{__name__}.hf_tower":
        raise

__all__ = ["create_model", "load_pretrained", "resolve_config", "resolve_model_config", "ModelConfig",
           "MultiModalModel"]
