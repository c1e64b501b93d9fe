"""The symmetric CLIP loss of one rank as one autograd function: one ``(n, n)`` matrix kept, not four.

Through autograd, ``CE(s·a·bᵀ) + CE(s·b·aᵀ)`` keeps the logits and both directions' log-softmax
outputs for backward and builds their gradients separately. Here the forward keeps only the
logits and the row and column log-sum-exps; the backward writes both softmaxes into one buffer:

    loss  = ½ Σ_i [(lse_row_i − L_ii) + (lse_col_i − L_ii)],   L = s · a · bᵀ
    ∂L    = ½ g (softmax_row(L) + softmax_col(L) − 2 I)
    ∂a    = s · ∂L · b,   ∂b = s · ∂Lᵀ · a,   ∂s = Σ (∂L · b) ⊙ a

Values are those of :func:`torch.nn.functional.cross_entropy` up to float rounding.
"""
from __future__ import annotations

import torch

_BLOCK = 128  # rows/columns per block of the log-sum-exp and softmax passes (bounds the temporaries)


class _SymmetricClip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        logits = (scale * a) @ b.t()
        n = logits.shape[0]  # log-sum-exps by blocks: no second (n, n) temporary
        lse_r = torch.cat([torch.logsumexp(logits[s:s + _BLOCK], 1) for s in range(0, n, _BLOCK)])
        lse_c = torch.cat([torch.logsumexp(logits[:, s:s + _BLOCK], 0) for s in range(0, n, _BLOCK)])
        diag = logits.diagonal()
        loss = 0.5 * ((lse_r - diag).sum() + (lse_c - diag).sum())
        ctx.save_for_backward(a, b, scale, logits, lse_r, lse_c)
        return loss

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, b, scale, logits, lse_r, lse_c = ctx.saved_tensors
        grad = torch.sub(logits, lse_r[:, None]).exp_()  # the one (n, n) buffer of the backward
        for s in range(0, logits.shape[0], _BLOCK):
            grad[s:s + _BLOCK] += (logits[s:s + _BLOCK] - lse_c[None, :]).exp_()
        grad.diagonal().sub_(2.0)
        grad.mul_(0.5 * g)
        grad = grad.to(a.dtype)
        ga = grad @ b
        gs = (ga.float() * a.float()).sum().to(scale.dtype).reshape(scale.shape)
        gb = grad.t() @ a
        return ga * scale, gb * scale, gs


def symmetric_clip_sum(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``CE_sum(s·a·bᵀ, i) / 2 + CE_sum(s·b·aᵀ, i) / 2`` for ``a, b (n, D)`` whose row i pairs; scalar sum."""
    return _SymmetricClip.apply(a, b, scale)
