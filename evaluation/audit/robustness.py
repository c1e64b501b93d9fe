"""Adversarial robustness: PGD under an L∞ budget, clean vs attacked.

Projected gradient descent (Madry et al.): ``δ`` starts uniform in ``[-ε, ε]``, takes ``steps`` signed
gradient steps of ``2.5 ε / steps`` that *raise* the loss of the right answer, is projected back onto
the ε-ball and the input range after each (budgets in data units, :func:`~.inputs.input_budget`).
Two metrics, each attacked on its own:

* retrieval R@1, modality → report among the evaluated rows' reports (a retrieved report with the same
  normalised text as the row's own counts as right); loss: multi-positive InfoNCE;
* zero-shot accuracy from a prompt set (when one is given and rows have labels); loss: cross-entropy
  of the prompt classifier's logits.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .inputs import Pairs, encode_texts, input_budget

__all__ = ["pgd", "robustness_audit"]


def pgd(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: torch.Tensor, lo: Optional[float],
        hi: Optional[float], *, steps: int = 10, seed: int = 0) -> torch.Tensor:
    """``x + δ`` with ``|δ| ≤ eps`` (elementwise, broadcast) that maximises ``loss_fn`` (a scalar); input range ``[lo, hi]``."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.as_tensor(eps, dtype=x.dtype)
    alpha = 2.5 * eps / max(1, steps)
    delta = (torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1) * eps

    def clamp(v):
        return v.clamp(lo, hi) if lo is not None else v

    delta = clamp(x + delta) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = loss_fn(x + delta)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = delta + alpha * grad.sign()
            delta = torch.maximum(torch.minimum(delta, eps), -eps)
            delta = clamp(x + delta) - x
    return (x + delta).detach()


def _encode(model, pairs: Pairs, x: torch.Tensor) -> torch.Tensor:
    return model.encode(pairs.modality, x, pairs.mask).float()


def robustness_audit(model: Any, pairs: Pairs, budgets: Sequence[Tuple[float, str]], *, steps: int = 10,
                     prompts: Any = None, text_modality: str = "text", seed: int = 0) -> List[Dict[str, Any]]:
    """Rows ``{modality, budget, metric, clean, attacked, n}``; ``budgets``: ``(value in data units, label)``."""
    texts = sorted(set(pairs.reports))
    pos = {t: i for i, t in enumerate(texts)}
    raw = {}
    for t, r in zip(pairs.texts, pairs.reports):
        raw.setdefault(r, t)
    with torch.no_grad():
        T = encode_texts(model, [raw[t] for t in texts], text_modality)
    target = torch.tensor([pos[r] for r in pairs.reports])
    scale = float(min(100.0, model.logit_scale.detach().exp().item())) if hasattr(model, "logit_scale") else 100.0
    metrics: Dict[str, Any] = {"retrieval_r@1": (T, target)}
    if prompts is not None:
        # deferred: the prompt classifier of the zero-shot protocol
        from medfm.evaluation.zeroshot import text_classifier

        labelled = [lab in prompts.classes for lab in pairs.labels]
        if any(labelled):
            C = torch.as_tensor(text_classifier(lambda p: encode_texts(model, list(p), text_modality).numpy(),
                                                prompts)["positive"], dtype=torch.float32)
            ys = torch.tensor([prompts.classes.index(lab) if ok else -1 for lab, ok in zip(pairs.labels, labelled)])
            metrics["zeroshot_accuracy"] = (C, ys)
    rows = []
    for name, (W, y) in metrics.items():
        keep = y >= 0
        x = pairs.x[keep]
        y = y[keep]
        sub = pairs.select(keep.numpy())

        def loss_fn(xa, W=W, y=y, sub=sub):
            return torch.nn.functional.cross_entropy(scale * _encode(model, sub, xa) @ W.T, y)

        with torch.no_grad():
            clean = float((((_encode(model, sub, x) @ W.T).argmax(1)) == y).float().mean())
        for b, label in budgets:
            eps, (lo, hi) = input_budget(model, sub, b)
            xa = pgd(loss_fn, x, eps, lo, hi, steps=steps, seed=seed) if b > 0 else x
            with torch.no_grad():
                att = float((((_encode(model, sub, xa) @ W.T).argmax(1)) == y).float().mean())
            rows.append({"modality": pairs.modality, "budget": label, "metric": name, "clean": clean,
                         "attacked": att, "n": int(len(y)), "steps": steps})
    return rows
