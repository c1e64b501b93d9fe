"""The masked-feature objective (TIP): reconstruct the masked features of table-like towers.

For every modality of the batch whose tower has ``masked_feature_loss`` (the ``tabular`` tower),
a share ``mask_ratio`` of each sample's measured features is masked and predicted — numeric
values by regression, categories and codes by classification (the tower's heads). It sits beside
``clip``/``gram``/``masked`` in one objective list, so ``{ecg, tabular}`` trains in one run with
samples that lack either modality::

    objectives: [{name: clip}, {name: masked_features, weight: 0.5, mask_ratio: 0.3}]
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn

from medfm.errors import ConfigError
from medfm.registry import register_objective

from .composite import unwrap_model
from .contrastive import mean_over_modalities
from .masked import _ratio

__all__ = ["MaskedFeatureObjective"]


@register_objective("masked_features")
class MaskedFeatureObjective(nn.Module):
    """Mean over table modalities of ``tower.masked_feature_loss(x, mask, mask_ratio, ...)["loss"]``.

    Args:
        modalities: the modalities to train (default: every modality of the batch whose tower
            has ``masked_feature_loss``); naming one whose tower has none is a :class:`ConfigError`.
        mask_ratio: share of a sample's measured features masked (``None``: the tower's, TIP's 0.3).
        numeric_weight: weight of the regression of masked numeric values inside a tower's loss.
        categorical_weight: weight of the classification of masked categories and codes.

    Returns ``{"loss", "<mod>": float, "n_terms": float}``.
    """

    def __init__(self, modalities: Optional[Sequence[str]] = None, mask_ratio: Optional[float] = None,
                 numeric_weight: float = 1.0, categorical_weight: float = 1.0):
        super().__init__()
        self.modalities = None if modalities is None else list(modalities)
        self.mask_ratio = None if mask_ratio is None else _ratio(mask_ratio, "masked_features.mask_ratio")
        self.numeric_weight, self.categorical_weight = float(numeric_weight), float(categorical_weight)

    def forward(self, model: nn.Module, batch: Dict, cache: Optional[Dict] = None) -> Dict:
        core = unwrap_model(model)

        def loss_of(mod: str, inp: Dict) -> Optional[torch.Tensor]:
            tower = core.tower(mod)
            if not hasattr(tower, "masked_feature_loss"):
                if self.modalities is not None:
                    raise ConfigError(f"masked_features: the {mod!r} tower has no masked features "
                                      f"({type(tower).__name__}); list table modalities only")
                return None
            return tower.masked_feature_loss(inp["x"], inp.get("mask"), self.mask_ratio, self.numeric_weight,
                                             self.categorical_weight)["loss"]

        return mean_over_modalities(batch, self.modalities, loss_of,
                                    fallback=(getattr(core, "logit_scale", None), *list(core.parameters())[:1]))
