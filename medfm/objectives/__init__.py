"""Modality-agnostic training objectives.

Pairwise losses (:mod:`.contrastive`), more than two modalities (:mod:`.multi`),
cross-rank gathering (:mod:`.distributed`), the masked-modelling wrapper
(:mod:`.masked`) and the registered objective classes with their config-built
weighted sum (:mod:`.composite`). Importing this package registers ``"clip"``,
``"siglip"``, ``"gram"``, ``"masked"`` and ``"views"`` in :data:`medfm.registry.OBJECTIVES`.
"""
from .composite import (
    ClipObjective,
    CompositeObjective,
    ContrastiveObjective,
    GramObjective,
    SigLipObjective,
    build_objective,
    cached_embeddings,
    unwrap_model,
)
from .contrastive import clip_loss, hard_negative_log_weights, pair_loss, scale_from_log, siglip_loss
from .gather import GlobalView, gather_features, gather_nograd, gather_view, is_distributed, world_info
from .masked import MaskedObjective
from .views import ViewsObjective
from .multi import gram_loss, gram_volume, modality_pairs, multimodal_contrastive_loss

__all__ = [
    "ClipObjective", "CompositeObjective", "ContrastiveObjective", "GramObjective", "SigLipObjective",
    "MaskedObjective", "ViewsObjective", "build_objective", "cached_embeddings", "unwrap_model",
    "clip_loss", "siglip_loss", "pair_loss", "hard_negative_log_weights", "scale_from_log",
    "multimodal_contrastive_loss", "gram_loss", "gram_volume", "modality_pairs",
    "GlobalView", "gather_features", "gather_nograd", "gather_view", "is_distributed", "world_info",
]
