"""The masked-modelling objective: MAE for patch towers, MLM for token towers.

The masking itself (random per-sample masks, visible-token encoding, the light
decoder, per-patch normalised targets) lives in the model's towers; this module only
asks ``model.masked_loss`` for every modality present in the batch and averages.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from medfm.errors import ConfigError
from medfm.registry import register_objective

from .composite import unwrap_model
from .contrastive import mean_over_modalities

__all__ = ["MaskedObjective", "parse_mask_ratio"]

MaskRatio = Union[None, float, Mapping[str, float]]


def _ratio(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected a number in [0, 1), got {value!r}")
    try:
        r = float(value)
    except ValueError:
        raise ConfigError(f"{where}: expected a number in [0, 1), got {value!r}") from None
    if not 0.0 <= r < 1.0:
        raise ConfigError(f"{where}: must be in [0, 1), got {value!r}")
    return r


def parse_mask_ratio(value: MaskRatio, modalities: Optional[Sequence[str]] = None,
                     where: str = "masked.mask_ratio") -> Dict[str, float]:
    """The objective's ``mask_ratio`` as ``{modality or "default": ratio}`` (empty: the towers' own).

    ``0.75`` → ``{"default": 0.75}``; ``{oct: 0.9, default: 0.75}`` as given. A key that is not
    ``default`` must be one of ``modalities`` when the objective names them.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        return {"default": _ratio(value, where)}
    out = {str(k): _ratio(v, f"{where}.{k}") for k, v in value.items()}
    if modalities is not None:
        stray = sorted(set(out) - set(modalities) - {"default"})
        if stray:
            raise ConfigError(f"{where}.{stray[0]}: not among the objective's modalities {list(modalities)}")
    return out


@register_objective("masked")
class MaskedObjective(nn.Module):
    """Mean of ``model.masked_loss(mod, x, mask=..., mask_ratio=...)["loss"]`` over modalities.

    The objective owns ``mask_ratio`` — it is set here and nowhere else (adapters and tower
    overrides no longer take it). Per modality the ratio is, first found:

    1. ``mask_ratio[<modality>]`` (the per-modality override: ``{oct: 0.9, default: 0.75}``);
    2. ``mask_ratio["default"]``, or ``mask_ratio`` when it is a plain number;
    3. the modality's own ratio, from its published recipe (the adapter's ``mask_ratio``:
       OCT 0.9 as OCTCube, CT / X-ray / ECG 0.75 as MAE, DNA 0.5 as BarcodeBERT, text 0.15 as BERT).

    Args:
        modalities: modalities to reconstruct; ``None`` = every modality with at least
            one present row in the batch.
        mask_ratio: a number in ``[0, 1)`` for every modality, or a mapping of modality names
            (and ``default``) to numbers; ``None`` = each modality's own ratio.

    Called as ``objective(model, batch, cache)`` with the collated batch
    (``batch["inputs"][mod] = {"x": (n_present, ...), optional "mask": (n_present, L)}``).
    Returns ``{"loss": scalar, "<mod>": float, ...}``; a batch without any such
    modality gives a graph-connected 0 loss.
    """

    def __init__(self, modalities: Optional[Sequence[str]] = None,
                 mask_ratio: Union[None, float, Mapping[str, float]] = None):
        super().__init__()
        self.modalities = None if modalities is None else list(modalities)
        self.ratios = parse_mask_ratio(mask_ratio, self.modalities)
        self.mask_ratio = mask_ratio
        self._checked = False

    def ratio_for(self, modality: str) -> Optional[float]:
        """The ratio this objective asks of ``modality`` (``None``: the modality's own)."""
        return self.ratios.get(modality, self.ratios.get("default"))

    def _check_model(self, model: nn.Module) -> None:
        """A per-modality key the model has no tower for is a typo: an error, once."""
        self._checked = True
        names = getattr(unwrap_model(model), "modalities", None)
        if isinstance(names, (list, tuple)) and names:
            stray = sorted(set(self.ratios) - set(names) - {"default"})
            if stray:
                raise ConfigError(f"masked.mask_ratio.{stray[0]}: the model has no {stray[0]!r} modality "
                                  f"(it has: {', '.join(names)})")

    def forward(self, model: nn.Module, batch: Dict, cache: Optional[Dict] = None) -> Dict:
        if not self._checked and len(self.ratios) > int("default" in self.ratios):
            self._check_model(model)
        def loss_of(mod: str, inp: Dict) -> torch.Tensor:
            return model.masked_loss(mod, inp["x"], mask=inp.get("mask"), mask_ratio=self.ratio_for(mod))["loss"]

        return mean_over_modalities(batch, self.modalities, loss_of,
                                    fallback=(getattr(model, "logit_scale", None), *list(model.parameters())[:1]))
