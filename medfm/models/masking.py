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


def mlm_mask(x: torch.Tensor, mask: torch.Tensor, *, mask_ratio: float, mask_id: int, vocab_size: int,
                  special_ids: Sequence[int] = (), generator: Optional[torch.Generator] = None):
    """BERT-style masking.

    Chooses ``round(mask_ratio * n)`` of the ``n`` real, non-special tokens of each
    row (at least one when ``n > 0``); of those, 80% become ``mask_id``, 10% a random
    non-special token, 10% stay.

    Args:
        x: ``(B, L)`` token ids.  mask: ``(B, L)`` 1 = real token.
    Returns:
        ``(inputs (B, L), chosen (B, L) bool)``.
    """
    device = x.device
    special = torch.as_tensor(sorted(set(int(s) for s in special_ids)), dtype=x.dtype, device=device)
    cand = mask.bool()
    if special.numel():
        cand &= ~torch.isin(x, special)
    n_cand = cand.sum(1)
    n_pick = torch.round(n_cand.float() * float(mask_ratio)).long()
    n_pick = torch.where(n_cand > 0, n_pick.clamp(min=1), n_pick).clamp(max=n_cand)
    noise = torch.rand(x.shape, generator=generator, device=device)
    noise = noise.masked_fill(~cand, 2.0)
    ranks = noise.argsort(1).argsort(1)
    chosen = ranks < n_pick[:, None]
    r = torch.rand(x.shape, generator=generator, device=device)
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    if special.numel():
        allowed[special[special < vocab_size]] = False
    allowed_ids = allowed.nonzero().squeeze(1)
    rand_tok = allowed_ids[torch.randint(len(allowed_ids), x.shape, generator=generator, device=device)]
    inputs = torch.where(chosen & (r < 0.8), torch.full_like(x, mask_id), x)
    inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), rand_tok.to(x.dtype), inputs)
    return inputs, chosen
