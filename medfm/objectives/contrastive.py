"""Pairwise contrastive losses on L2-normalised features (open_clip ``loss.py`` style).

Every loss here works on *local rows × global columns* (see :mod:`.distributed`):
in a single process rows and columns are the same batch; in a ``torch.distributed``
run the columns are all ranks' rows gathered with gradient and each rank computes
only its own rows of the logits.

Notation: ``za, zb`` are ``(B, D)`` L2-normalised features of two modalities,
``s = exp(logit_scale).clamp(max=100)`` the inverse temperature, ``b`` the SigLIP bias.

- CLIP / InfoNCE: ``(CE(s·za·zbᵀ, i) + CE(s·zb·zaᵀ, i)) / 2``.
- SigLIP: ``-1/B Σ_i Σ_j log σ(y_ij (s·za_i·zb_j + b))`` with ``y_ij = ±1``.
- Label-aware (CLIBD): all pairs sharing an integer label (≥ 0) are positives; the
  target distribution is uniform over a row's positives; label -1 = unlabelled, only
  its own pair is positive.
- Duplicate-aware: samples ``i, j`` whose content key (e.g. the hash of the normalised
  report text, see :mod:`medfm.data.dataset`) is equal in modality ``a`` *or* in ``b``
  are positives of each other: ``a_i`` is as much the partner of ``b_j`` as of ``b_i``
  when ``a_i == a_j`` (identical reports are not negatives). Same soft targets as the
  label-aware loss; key -1 = no key.
- Hard negatives (Robinson et al., ICLR 2021): each negative's term is re-weighted by
  ``w_ij = exp(β cos_ij) / mean_{k∈neg(i)} exp(β cos_ik)`` (weights average to 1 over a
  row's negatives); ``β = 0`` is exactly the plain loss.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .gather import GlobalView, gather_view
from .clip_fused import symmetric_clip_sum

__all__ = [
    "MAX_LOGIT_SCALE",
    "scale_from_log",
    "zero_loss",
    "positive_mask",
    "duplicate_mask",
    "hard_negative_log_weights",
    "similarity_logits",
    "clip_rows",
    "siglip_rows",
    "pair_loss",
    "clip_loss",
    "siglip_loss",
]

MAX_LOGIT_SCALE = 100.0


def scale_from_log(logit_scale: Union[torch.Tensor, float]) -> torch.Tensor:
    """``exp(logit_scale).clamp(max=100)``: the inverse temperature (scalar tensor)."""
    return torch.as_tensor(logit_scale).exp().clamp(max=MAX_LOGIT_SCALE)


def zero_loss(*tensors: Optional[torch.Tensor]) -> torch.Tensor:
    """A scalar 0 connected to ``tensors`` (finite zero gradients, DDP sees them used)."""
    out = None
    for t in tensors:
        if t is None or not torch.is_tensor(t):
            continue
        term = t.float().sum() * 0.0
        out = term if out is None else out + term
    return torch.zeros(()) if out is None else out


def mean_over_modalities(batch: Dict, modalities: Optional[Sequence[str]],
                         loss_of: Callable[[str, Dict], Optional[torch.Tensor]],
                         fallback: Sequence[Optional[torch.Tensor]]) -> Dict:
    """``{"loss": mean of loss_of(mod, inputs), mod: float loss, ..., "n_terms": float}`` over the modalities
    present in ``batch`` (all of them when ``modalities`` is None); ``loss_of`` may return None to skip one.
    ``n_terms`` counts the modalities that gave a loss (a run where it stays 0 learned nothing from this
    objective: :mod:`medfm.data.skips`). With none the loss is :func:`zero_loss` of ``fallback`` (DDP still
    sees those used)."""
    inputs = batch.get("inputs", {})
    losses, logs = [], {}
    for mod in (list(inputs) if modalities is None else modalities):
        inp = inputs.get(mod)
        if inp is None or inp["x"].shape[0] == 0:
            continue
        loss = loss_of(mod, inp)
        if loss is None:
            continue
        losses.append(loss)
        logs[mod] = float(loss.detach())
    logs["n_terms"] = float(len(losses))
    return {"loss": torch.stack(losses).mean() if losses else zero_loss(*fallback), **logs}


def positive_mask(
    targets: torch.Tensor,
    n_cols: int,
    row_labels: Optional[torch.Tensor] = None,
    col_labels: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Boolean ``(n_rows, n_cols)`` positives: own pair, plus same label when labelled.

    Args:
        targets: ``(n_rows,)`` column index of each row's own pair.
        row_labels / col_labels: ``(n_rows,)`` / ``(n_cols,)`` long, -1 = unlabelled.
    """
    n_rows = targets.shape[0]
    if row_labels is None:
        pos = torch.zeros(n_rows, n_cols, dtype=torch.bool, device=targets.device)
    else:
        pos = (row_labels[:, None] == col_labels[None, :]) & (row_labels[:, None] >= 0)
    pos[torch.arange(n_rows, device=targets.device), targets] = True
    return pos


def duplicate_mask(row_keys: Optional[torch.Tensor], col_keys: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Boolean ``(n_rows, n_cols)``: equal content keys (≥ 0); ``None`` when either is ``None``."""
    if row_keys is None or col_keys is None:
        return None
    return (row_keys[:, None] == col_keys[None, :]) & (row_keys[:, None] >= 0)


def hard_negative_log_weights(cos: torch.Tensor, pos: torch.Tensor, beta: float) -> torch.Tensor:
    """``log w_ij`` of the hard-negative re-weighting; 0 on positives.

    ``w_ij = exp(β cos_ij) / mean_{k∈neg(i)} exp(β cos_ik)`` for negatives ``j``.
    Rows with no negatives get all-zero log weights. Shapes: ``cos, pos (n, m)``.
    """
    neg = ~pos
    n_neg = neg.sum(1, keepdim=True)
    has_neg = n_neg > 0
    bc = beta * cos
    fill = torch.where(has_neg, torch.full_like(bc[:, :1], -math.inf), torch.zeros_like(bc[:, :1]))
    lse = torch.logsumexp(torch.where(neg, bc, fill.expand_as(bc)), dim=1, keepdim=True)
    log_w = bc - lse + torch.log(n_neg.clamp(min=1).to(bc.dtype))
    return torch.where(neg, log_w, torch.zeros_like(log_w))


def similarity_logits(rows: torch.Tensor, cols: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(scale · rows) @ colsᵀ`` → ``(n, m)``; scaling the ``(n, D)`` side keeps the
    scale's gradient off the ``(n, m)`` matrix (as open_clip)."""
    return (scale * rows) @ cols.t()


def clip_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    pos: Optional[torch.Tensor] = None,
    scale: Optional[torch.Tensor] = None,
    hard_negative_beta: float = 0.0,
) -> torch.Tensor:
    """Sum over rows of the InfoNCE cross-entropy, one direction.

    Args:
        logits: ``(n, m)`` = ``s · rows @ colsᵀ`` (see :func:`similarity_logits`).
        targets: ``(n,)`` column of each row's own pair.
        pos: optional ``(n, m)`` positives (label-aware); soft targets uniform over them.
        scale: the inverse temperature, needed with ``hard_negative_beta`` (cos = logits / s).
        hard_negative_beta: concentration β of the negative re-weighting (0 = off).
    Returns: scalar, the *sum* (not mean) of the ``n`` row losses.
    """
    if hard_negative_beta:
        if pos is None:
            pos = positive_mask(targets, logits.shape[1])
        logits = logits + hard_negative_log_weights(logits / scale, pos, hard_negative_beta)
    if pos is None:
        return F.cross_entropy(logits, targets, reduction="sum")
    soft = pos.to(logits.dtype)
    soft = soft / soft.sum(1, keepdim=True)
    return -(soft * F.log_softmax(logits, dim=1)).sum()


def siglip_rows(
    logits: torch.Tensor,
    bias: torch.Tensor,
    pos: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    hard_negative_beta: float = 0.0,
) -> torch.Tensor:
    """Sum over rows of ``-Σ_j log σ(y_ij (logits_ij + b))``; ``y = +1`` on ``pos``, else -1.

    Args:
        logits: ``(n, m)`` = ``s · rows @ colsᵀ`` without the bias.
        bias: scalar SigLIP bias ``b``.
        pos: ``(n, m)`` bool positives.
        scale, hard_negative_beta: with β > 0 the negative terms are multiplied by
            ``w_ij`` (mean 1 per row, :func:`hard_negative_log_weights` of cos = logits / s).
    Returns: scalar sum over the ``n`` rows.
    """
    sign = pos.to(logits.dtype) * 2 - 1
    terms = -F.logsigmoid(sign * (logits + bias))
    if hard_negative_beta:
        terms = terms * hard_negative_log_weights(logits / scale, pos, hard_negative_beta).exp()
    return terms.sum()


def _row_targets(valid_local: torch.Tensor, valid_full: torch.Tensor, offset: int) -> torch.Tensor:
    """Column index (among the valid global columns) of each valid local row."""
    col_pos = torch.cumsum(valid_full.long(), 0) - 1
    local_idx = torch.nonzero(valid_local, as_tuple=False).squeeze(1) + offset
    return col_pos[local_idx]


def pair_loss(
    view: GlobalView,
    a: str,
    b: str,
    logit_scale: torch.Tensor,
    logit_bias: Optional[torch.Tensor] = None,
    *,
    kind: str = "clip",
    use_labels: bool = False,
    hard_negative_beta: float = 0.0,
    use_keys: bool = True,
) -> Tuple[torch.Tensor, int]:
    """Contrastive loss between modalities ``a`` and ``b`` of a gathered view.

    With ``use_keys`` (default) rows whose content key in ``a`` or ``b`` is equal
    (``view.keys``) are positives of each other (duplicate-aware targets; see the
    module doc). Only rows where both are present count. Returns ``(loss, n)`` where ``n`` is the
    global number of such rows; when ``n < 2`` the loss is a graph-connected 0.
    The loss is this rank's share: its mean over ranks is the global mean.
    """
    valid_local = view.present[a] & view.present[b]
    valid_full = view.present_full[a] & view.present_full[b]
    n = int(valid_full.sum())
    za, zb = view.local[a], view.local[b]
    if n < 2:
        return zero_loss(za, zb, logit_scale, logit_bias), n
    if n == valid_full.shape[0]:  # everything present: no copies
        rows_a, rows_b, cols_a, cols_b = za, zb, view.full[a], view.full[b]
        targets = torch.arange(za.shape[0], device=za.device) + view.offset
    else:
        rows_a, rows_b = za[valid_local], zb[valid_local]
        cols_a, cols_b = view.full[a][valid_full], view.full[b][valid_full]
        targets = _row_targets(valid_local, valid_full, view.offset)
    pos = None
    if use_labels and view.labels is not None:
        pos = positive_mask(targets, n, view.labels[valid_local], view.labels_full[valid_full])
    if use_keys:
        for m in (a, b):
            if m in view.keys and bool((view.keys_full[m] >= 0).any()):
                dup = duplicate_mask(view.keys[m][valid_local], view.keys_full[m][valid_full])
                pos = (positive_mask(targets, n) if pos is None else pos) | dup
    scale = scale_from_log(logit_scale)
    single = view.world_size == 1  # rows == columns: one matrix serves both directions
    if kind == "clip" and single and pos is None and not hard_negative_beta:

        total = symmetric_clip_sum(rows_a, rows_b, scale)
    elif kind == "clip":
        logits_ab = similarity_logits(rows_a, cols_b, scale)
        logits_ba = logits_ab.t() if single else similarity_logits(rows_b, cols_a, scale)
        total = 0.5 * (
            clip_rows(logits_ab, targets, pos, scale, hard_negative_beta)
            + clip_rows(logits_ba, targets, pos, scale, hard_negative_beta)
        )
    elif kind == "siglip":
        if logit_bias is None:
            raise ValueError("siglip needs a logit_bias")
        if pos is None:
            pos = positive_mask(targets, n)
        logits = similarity_logits(rows_a, cols_b, scale)
        total = siglip_rows(logits, logit_bias, pos, scale, hard_negative_beta)
    else:
        raise ValueError(f"unknown contrastive kind {kind!r} (expected 'clip' or 'siglip')")
    return total * (view.world_size / n), n


def _pairwise(za, zb, logit_scale, logit_bias, kind, labels, valid, hard_negative_beta, keys=(None, None)):
    present = None if valid is None else {"a": valid, "b": valid}
    keys = {m: k for m, k in zip(("a", "b"), keys) if k is not None}
    view = gather_view({"a": za, "b": zb}, present, labels, keys)
    return pair_loss(
        view, "a", "b", logit_scale, logit_bias,
        kind=kind, use_labels=labels is not None, hard_negative_beta=hard_negative_beta,
    )[0]


def clip_loss(
    za: torch.Tensor,
    zb: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    labels: Optional[torch.Tensor] = None,
    valid: Optional[torch.Tensor] = None,
    hard_negative_beta: float = 0.0,
    keys_a: Optional[torch.Tensor] = None,
    keys_b: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Symmetric CLIP/InfoNCE loss (label-aware when ``labels`` is given).

    Args:
        za, zb: ``(B, D)`` L2-normalised features, row i of both is a pair.
        logit_scale: scalar log inverse temperature (a Parameter).
        labels: optional ``(B,)`` long; same label ≥ 0 = positive, -1 = unlabelled.
        valid: optional ``(B,)`` bool, rows to use (others are ignored).
        hard_negative_beta: β of the hard-negative re-weighting; 0 = plain CLIP.
        keys_a, keys_b: optional ``(B,)`` long content keys of ``za`` / ``zb`` rows (-1 = none);
            rows with an equal key in either are positives (duplicate-aware targets).
    Returns: scalar loss (this rank's share in a distributed run; see module doc).
    """
    return _pairwise(za, zb, logit_scale, None, "clip", labels, valid, hard_negative_beta, (keys_a, keys_b))


def siglip_loss(
    za: torch.Tensor,
    zb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    labels: Optional[torch.Tensor] = None,
    valid: Optional[torch.Tensor] = None,
    hard_negative_beta: float = 0.0,
    keys_a: Optional[torch.Tensor] = None,
    keys_b: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """SigLIP sigmoid loss, normalised by the number of rows (Zhai et al., 2023).

    Same arguments as :func:`clip_loss` plus ``logit_bias`` (scalar Parameter).
    """
    return _pairwise(za, zb, logit_scale, logit_bias, "siglip", labels, valid, hard_negative_beta,
                     (keys_a, keys_b))
