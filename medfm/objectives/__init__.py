"""Modality-agnostic training objectives.

Pairwise losses (:mod:`.contrastive`), more than two modalities (:mod:`.multi`),
cross-rank gathering (:mod:`.distributed`), the masked-modelling wrapper
(:mod:`.masked`) and the registered objective classes with their config-built
weighted sum (:mod:`.composite`). Importing this package declares ``"clip"``,
``"siglip"``, ``"gram"``, ``"masked"``, ``"masked_features"``, ``"views"`` and ``"cleanclip"`` in :data:`medfm.registry.OBJECTIVES`
(each module registers its own when the objective is first used); names are imported on
first use (:mod:`medfm.lazy`), so listing the objectives imports no torch.
"""
from medfm.lazy import lazy_exports
from medfm.registry import OBJECTIVES

#: objective name -> the module that registers it
BUILTIN = {"clip": ".composite", "siglip": ".composite", "gram": ".composite", "masked": ".masked",
           "views": ".views", "masked_features": ".masked_features", "cleanclip": ".cleanclip"}
for _name, _module in BUILTIN.items():
    OBJECTIVES.declare(_name, __name__ + _module)

__getattr__, __dir__ = lazy_exports(__name__, {
    ".composite": ["ClipObjective", "CompositeObjective", "ContrastiveObjective", "GramObjective", "SigLipObjective",
                   "build_objective", "cached_embeddings", "unwrap_model"],
    ".contrastive": ["clip_loss", "hard_negative_log_weights", "pair_loss", "scale_from_log", "siglip_loss"],
    ".gather": ["GlobalView", "gather_features", "gather_nograd", "gather_view", "is_distributed", "world_info"],
    ".masked": ["MaskedObjective"],
    ".masked_features": ["MaskedFeatureObjective"],
    ".views": ["ViewsObjective"],
    ".cleanclip": ["CleanClipObjective"],
    ".multi": ["gram_loss", "gram_volume", "modality_pairs", "multimodal_contrastive_loss"],
})

__all__ = [
    "ClipObjective", "CompositeObjective", "ContrastiveObjective", "GramObjective", "SigLipObjective",
    "MaskedObjective", "MaskedFeatureObjective", "ViewsObjective", "CleanClipObjective", "build_objective",
    "cached_embeddings", "unwrap_model",
    "clip_loss", "siglip_loss", "pair_loss", "hard_negative_log_weights", "scale_from_log",
    "multimodal_contrastive_loss", "gram_loss", "gram_volume", "modality_pairs",
    "GlobalView", "gather_features", "gather_nograd", "gather_view", "is_distributed", "world_info",
]
