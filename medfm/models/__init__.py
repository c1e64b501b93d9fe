"""Models: token embedders, towers, the multimodal model and its factory.

Names are imported on first use (:mod:`medfm.lazy`), so the light modules of this package
(:mod:`.config`, :mod:`.presets`, :mod:`.init`) import no torch. The model layer loads base
checkpoints only (``MultiModalModel.from_pretrained``); :func:`medfm.load_pretrained` decides
which class loads a checkpoint folder of any kind. The built-in
embedders and towers register when :data:`medfm.registry.TOWERS` / ``EMBEDDERS`` is first used.
"""
from medfm.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".config": ["ModelConfig"],
    ".factory": ["create_model", "resolve_config", "resolve_model_config"],
    ".multimodal": ["MultiModalModel"],
})

__all__ = ["create_model", "resolve_config", "resolve_model_config", "ModelConfig",
           "MultiModalModel"]
