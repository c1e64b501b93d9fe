"""Contrastive alignment of more than two modalities, with missing modalities.

Inputs everywhere: ``embeddings {modality: (B, D)}`` (L2-normalised; rows of absent
samples may hold anything, they are never used) and ``present {modality: (B,) bool}``.

- ``"pairs"``: mean of a pairwise loss (CLIP or SigLIP) over all modality pairs;
- ``"anchored"``: the same over the pairs (anchor, other) only;
- ``"gram"``: the GRAM loss (Cicchetti et al., 2024): the volume of the parallelotope
  spanned by one embedding per modality as a (negative) similarity.

Each pair uses only the rows where both modalities are present; a pair with fewer
than 2 such rows (over all ranks) contributes nothing, and the mean runs over the
pairs that do contribute. With none, the loss is a graph-connected 0 (no NaN).
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .contrastive import _row_targets, pair_loss, scale_from_log, zero_loss
from .gather import GlobalView, gather_view

__all__ = ["modality_pairs", "multimodal_contrastive_loss", "gram_volume", "gram_loss"]

MODES = ("pairs", "anchored")


def modality_pairs(names: Sequence[str], mode: str = "pairs", anchor: Optional[str] = None) -> List[Tuple[str, str]]:
    """The modality pairs a mode uses: all pairs, or ``(anchor, other)`` pairs."""
    names = list(names)
    if mode == "pairs":
        return list(itertools.combinations(names, 2))
    if mode == "anchored":
        anchor = names[0] if anchor is None else anchor
        if anchor not in names:
            raise ValueError(f"anchor {anchor!r} is not among the modalities {names}")
        return [(anchor, m) for m in names if m != anchor]
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def _as_view(embeddings, present, labels, keys=None) -> GlobalView:
    return embeddings if isinstance(embeddings, GlobalView) else gather_view(embeddings, present, labels, keys)


def multimodal_contrastive_loss(
    embeddings,
    present: Optional[Dict[str, torch.Tensor]],
    logit_scale: torch.Tensor,
    logit_bias: Optional[torch.Tensor] = None,
    *,
    kind: str = "clip",
    mode: str = "pairs",
    anchor: Optional[str] = None,
    labels: Optional[torch.Tensor] = None,
    hard_negative_beta: float = 0.0,
    keys: Optional[Dict[str, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Mean pairwise contrastive loss over the modality pairs of ``mode``.

    Args:
        embeddings: ``{modality: (B, D)}`` or an already gathered :class:`GlobalView`
            (then ``present``/``labels`` are taken from it).
        present: ``{modality: (B,) bool}``; ``None`` = all present.
        kind: ``"clip"`` or ``"siglip"``.
        mode: ``"pairs"`` or ``"anchored"`` (anchor defaults to the first modality).
        labels: optional ``(B,)`` long for label-aware targets (-1 = unlabelled).
        keys: optional ``{modality: (B,) long}`` content keys (-1 = none): rows with an equal
            key in either modality of a pair are positives (duplicate-aware targets).
    Returns:
        ``(loss, logs)``; logs hold ``"<a>-<b>"`` → float pair loss and ``"n_pairs"``.
    """
    view = _as_view(embeddings, present, labels, keys)
    use_labels = view.labels is not None
    terms, logs = [], {}
    for a, b in modality_pairs(list(view.local), mode, anchor):
        loss, n = pair_loss(
            view, a, b, logit_scale, logit_bias,
            kind=kind, use_labels=use_labels, hard_negative_beta=hard_negative_beta,
        )
        if n >= 2:
            terms.append(loss)
            logs[f"{a}-{b}"] = float(loss.detach())
    logs["n_pairs"] = float(len(terms))
    if not terms:
        return zero_loss(*view.local.values(), logit_scale, logit_bias), logs
    return torch.stack(terms).mean(), logs


def gram_volume(anchor: torch.Tensor, others: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Volumes of the parallelotopes spanned by ``anchor_i`` and the vectors ``others_j``.

    ``V_ij = sqrt(det G_ij)`` with ``G_ij`` the ``k × k`` Gram matrix of
    ``[anchor_i, others_j,0, ..., others_j,k-2]``; ``det`` is clamped at ``eps``.

    Args:
        anchor: ``(n, D)``.
        others: ``(m, k-1, D)``, the other k-1 modalities of sample j.
    Returns: ``(n, m)`` volumes (float32 or float64).
    """
    if anchor.dtype not in (torch.float32, torch.float64):
        anchor, others = anchor.float(), others.float()
    n, m, k1 = anchor.shape[0], others.shape[0], others.shape[1]
    aa = (anchor * anchor).sum(-1)                                   # (n,)
    ao = torch.einsum("nd,mkd->nmk", anchor, others)                 # (n, m, k-1)
    oo = others @ others.transpose(1, 2)                             # (m, k-1, k-1)
    top = torch.cat([aa[:, None, None].expand(n, m, 1), ao], -1)     # (n, m, k)
    lower = torch.cat([ao.unsqueeze(-1), oo.unsqueeze(0).expand(n, m, k1, k1)], -1)  # (n, m, k-1, k)
    gram = torch.cat([top.unsqueeze(2), lower], 2)                   # (n, m, k, k)
    return torch.linalg.det(gram).clamp(min=eps).sqrt()


def gram_loss(
    embeddings,
    present: Optional[Dict[str, torch.Tensor]],
    logit_scale: torch.Tensor,
    *,
    anchor: Optional[str] = None,
    modalities: Optional[Sequence[str]] = None,
    eps: float = 1e-8,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """GRAM contrastive loss over ``k ≥ 2`` modalities.

    logits ``= -V / τ`` with ``1/τ = exp(logit_scale).clamp(max=100)`` and ``V`` from
    :func:`gram_volume`; cross-entropy anchor→rest (over the other samples' tuples j)
    and rest→anchor (over anchors i), averaged. Uses only rows where all ``k``
    modalities are present; fewer than 2 such rows → graph-connected 0.

    Returns: ``(loss, logs)`` with ``"n_rows"``.
    """
    view = _as_view(embeddings, present, None)
    names = list(view.local) if modalities is None else list(modalities)
    missing = [m for m in names if m not in view.local]
    if missing:
        raise ValueError(f"gram: modalities {missing} have no embeddings in this batch")
    if len(names) < 2:
        raise ValueError("gram needs at least 2 modalities")
    anchor = names[0] if anchor is None else anchor
    if anchor not in names:
        raise ValueError(f"anchor {anchor!r} is not among the modalities {names}")
    rest = [m for m in names if m != anchor]
    valid_local = torch.stack([view.present[m] for m in names]).all(0)
    valid_full = torch.stack([view.present_full[m] for m in names]).all(0)
    n = int(valid_full.sum())
    if n < 2:
        return zero_loss(*(view.local[m] for m in names), logit_scale), {"n_rows": float(n)}
    a_loc = view.local[anchor][valid_local]
    a_all = view.full[anchor][valid_full]
    o_loc = torch.stack([view.local[m][valid_local] for m in rest], 1)   # (n_loc, k-1, D)
    o_all = torch.stack([view.full[m][valid_full] for m in rest], 1)     # (n, k-1, D)
    targets = _row_targets(valid_local, valid_full, view.offset)
    scale = scale_from_log(logit_scale)
    logits_a2r = -scale * gram_volume(a_loc, o_all, eps)                 # (n_loc, n)
    logits_r2a = -scale * gram_volume(a_all, o_loc, eps).t()             # (n_loc, n)
    total = 0.5 * (
        F.cross_entropy(logits_a2r, targets, reduction="sum")
        + F.cross_entropy(logits_r2a, targets, reduction="sum")
    )
    return total * (view.world_size / n), {"n_rows": float(n)}
