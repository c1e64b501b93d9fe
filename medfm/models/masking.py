"""Random token masking for MAE and MLM."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch


def random_masking(batch: int, num_tokens: int, mask_ratio: float, device=None,
                   generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random split of ``N`` tokens into visible and masked (MAE).

    Returns:
        ids_keep: ``(B, N_vis)`` indices of visible tokens, ``N_vis = round(N * (1 - ratio))`` (≥ 1).
        ids_restore: ``(B, N)`` permutation that puts [visible, masked] back in token order.
        mask: ``(B, N)`` float, 1 = masked (to reconstruct), 0 = visible.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n_keep = max(1, int(round(num_tokens * (1.0 - mask_ratio))))
    noise = torch.rand(batch, num_tokens, device=device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :n_keep]
    mask = torch.ones(batch, num_tokens, device=device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, ids_restore, mask


def mlm_mask(ids: torch.Tensor, mask_ratio: float, *, mask_id: int, vocab_size: int,
             special_ids: Sequence[int], attention_mask: Optional[torch.Tensor] = None,
             generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick ``mask_ratio`` of the real, non-special tokens; 80% → mask_id, 10% random, 10% kept.

    Args:
        ids: ``(B, L)`` token ids. attention_mask: ``(B, L)`` 1 = real token.

    Returns:
        (corrupted ids ``(B, L)``, chosen ``(B, L)`` bool — the positions the loss is computed on).
    """
    eligible = torch.ones_like(ids, dtype=torch.bool)
    for s in special_ids:
        eligible &= ids != s
    if attention_mask is not None:
        eligible &= attention_mask.bool()
    prob = torch.rand(ids.shape, device=ids.device, generator=generator)
    chosen = (prob < mask_ratio) & eligible
    # at least one masked token per sequence that has an eligible token
    none = ~chosen.any(dim=1) & eligible.any(dim=1)
    if none.any():
        first = torch.where(eligible, prob, torch.full_like(prob, 2.0)).argmin(dim=1)
        chosen[none, first[none]] = True
    action = torch.rand(ids.shape, device=ids.device, generator=generator)
    corrupted = ids.clone()
    corrupted[chosen & (action < 0.8)] = mask_id
    rand_pos = chosen & (action >= 0.8) & (action < 0.9)
    if rand_pos.any():
        corrupted[rand_pos] = torch.randint(0, vocab_size, (int(rand_pos.sum()),), device=ids.device, generator=generator)
    return corrupted, chosen
