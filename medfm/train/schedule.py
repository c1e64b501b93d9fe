"""Learning-rate schedule and optimiser construction.

- :class:`WarmupCosine` — linear warm-up then cosine decay, driven by *progress*
  ``p = max(step / total_steps, elapsed / budget)``. Without a time budget this is the
  usual step schedule; with one (``train.max_minutes``) warm-up and decay are fitted to
  the budget, so a 10-minute run ends at the minimum learning rate instead of stopping
  inside its warm-up.
- :func:`param_groups` — AdamW groups: no weight decay on biases, normalisation layers,
  embeddings (token, position, class/mask tokens, channel embeddings) and the CLIP
  logit scale/bias (as timm, open_clip and Hugging Face recipes).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Hashable, List, Optional, Tuple

import torch
import torch.nn as nn

#: parameter-name fragments that never take weight decay (whatever their shape)
NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "channel_embed", "logit_scale", "logit_bias",
                  "position_embeddings", "token_type_embeddings", "word_embeddings")
#: module types whose parameters never take weight decay
NO_DECAY_MODULES: Tuple[type, ...] = (nn.Embedding, nn.EmbeddingBag, nn.LayerNorm, nn.GroupNorm,
                                      nn.modules.batchnorm._NormBase, nn.LocalResponseNorm)
if hasattr(nn, "RMSNorm"):
    NO_DECAY_MODULES = NO_DECAY_MODULES + (nn.RMSNorm,)


def warmup_cosine_factor(progress: float, warmup: float, min_ratio: float = 0.0, min_span: float = 1e-12) -> float:
    """LR multiplier at ``progress`` ∈ [0, 1]: linear from 0 to 1 over ``[0, warmup]``, then
    cosine from 1 down to ``min_ratio`` at ``progress = 1`` (and ``min_ratio`` after); the decay
    spans at least ``min_span`` of progress (one step of a step schedule)."""
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 0.0)
    rest = (progress - warmup) / max(1.0 - warmup, min_span)
    rest = min(max(rest, 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * rest))


class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up + cosine decay over the *progress* of a run, steps or wall time.

    Progress after ``s`` optimiser steps is ``p = max(s / total_steps, elapsed / budget_s)``
    (the second term only with a time budget). The warm-up covers the first
    ``warmup_steps / total_steps`` of progress; with a budget it is also at most
    ``max_warmup_fraction`` of it (the recipe's 2,000 warm-up steps must not eat a
    10-minute run), and in any case it ends after ``warmup_steps`` steps. The decay
    reaches ``min_ratio`` × base LR at ``p = 1``: at ``total_steps`` or at the end of the
    budget, whichever comes first.

    Without a budget the LR of step ``s`` is ``base × f(s)`` exactly as
    :func:`cosine_with_warmup` (``f`` evaluated at ``s + 1`` during warm-up so the first
    step does not use LR 0). With a budget the LR depends on the measured time, so two
    runs differ as much as their step times do.

    Args:
        optimizer: the optimiser whose groups' ``initial_lr`` are scaled.
        warmup_steps, total_steps: the recipe's step schedule.
        min_ratio: final LR as a fraction of the base LR.
        budget_s: training-time budget in seconds (``None`` = step schedule only).
        elapsed: callable giving the training seconds spent so far (including time
            before a resume); required with ``budget_s``. Not part of ``state_dict``.
        max_warmup_fraction: the longest warm-up, as a fraction of a time budget.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                 min_ratio: float = 0.0, budget_s: Optional[float] = None,
                 elapsed: Optional[Callable[[], float]] = None, max_warmup_fraction: float = 0.1):
        self.warmup_steps, self.total_steps = max(0, int(warmup_steps)), max(1, int(total_steps))
        self.min_ratio = float(min_ratio)
        self.budget_s = None if budget_s is None else max(float(budget_s), 1e-9)
        self.max_warmup_fraction = float(max_warmup_fraction)
        self._elapsed = elapsed
        if self.budget_s is not None and elapsed is None:
            raise ValueError("WarmupCosine: a time budget needs an elapsed() clock")
        super().__init__(optimizer)

    def state_dict(self) -> Dict:
        """Plain numbers only (the clock is not saved; ``torch.load(weights_only=True)`` reads it)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_elapsed")}

    def set_clock(self, elapsed: Optional[Callable[[], float]]) -> None:
        self._elapsed = elapsed

    def progress(self, step: Optional[int] = None) -> Tuple[float, float]:
        """``(p, warm-up length in progress units)`` after ``step`` optimiser steps."""
        s = self.last_epoch if step is None else step
        warm = self.warmup_steps / self.total_steps
        p = s / self.total_steps
        if self.budget_s is not None and self._elapsed is not None:
            self.last_elapsed = float(self._elapsed())  # the clock reading this learning rate used
            p = max(p, self.last_elapsed / self.budget_s)
            warm = min(warm, self.max_warmup_fraction)
        return (p if s > 0 else 0.0), warm

    def factor(self, step: Optional[int] = None) -> float:
        s = self.last_epoch if step is None else step
        p, warm = self.progress(s)
        if self.warmup_steps and s < self.warmup_steps:
            # the first steps use (s + 1) / warmup_steps as the step schedule always did;
            # with a budget the warm-up may end earlier (by progress)
            p_warm = (s + 1) / self.warmup_steps
            if warm <= 0 or p >= warm:
                return warmup_cosine_factor(p, warm, self.min_ratio, 1.0 / self.total_steps)
            return max(p_warm, p / warm) if self.budget_s is not None else p_warm
        return warmup_cosine_factor(max(p, warm), warm, self.min_ratio, 1.0 / self.total_steps)

    def get_lr(self) -> List[float]:
        f = self.factor()
        return [group["initial_lr"] * f for group in self.optimizer.param_groups]


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                       min_ratio: float = 0.0, budget_s: Optional[float] = None,
                       elapsed: Optional[Callable[[], float]] = None) -> WarmupCosine:
    """Linear warm-up from 0 to the base LR over ``warmup_steps``, then cosine decay to ``min_ratio``×LR
    at ``total_steps`` (or at the end of ``budget_s`` seconds: see :class:`WarmupCosine`)."""
    return WarmupCosine(optimizer, warmup_steps, total_steps, min_ratio, budget_s=budget_s, elapsed=elapsed)


def no_decay_names(model: nn.Module) -> List[str]:
    """Names of the trainable parameters that take no weight decay (see :func:`param_groups`)."""
    out: List[str] = []
    seen = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if (p.ndim < 2 or isinstance(module, NO_DECAY_MODULES) or "norm" in type(module).__name__.lower()
                    or any(s in full for s in NO_DECAY_NAMES)):
                out.append(full)
    return out


def param_groups(model: nn.Module, weight_decay: float,
                 key: Optional[Callable[[str, nn.Parameter], Hashable]] = None) -> List[Dict]:
    """AdamW groups: the one weight-decay policy of pretraining and fine-tuning.

    No decay for: every parameter with fewer than 2 dimensions (biases, norm scales,
    scalar logit scale/bias), every parameter of an embedding or normalisation layer
    (``nn.Embedding``, ``nn.EmbeddingBag``, ``nn.LayerNorm``, batch/group/RMS norms,
    any module whose class name contains ``Norm``), and learned position embeddings,
    class/mask tokens and channel embeddings (:data:`NO_DECAY_NAMES`). Everything
    else (linear and convolution weights) takes ``weight_decay``. Frozen parameters
    are left out; a shared tensor appears once.

    Args:
        key: optional ``(name, parameter) -> tag``. Without it the groups are
            ``[decay, no_decay]``; with it there is one group per ``(tag, decays)`` in the
            order first met in ``model.parameters()``, each carrying ``"tag"`` (e.g. the
            fine-tuning head, which may take its own learning rate).
    """
    skip = set(no_decay_names(model))
    if key is None:
        decay, no_decay, seen = [], [], set()
        for name, p in model.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if name in skip else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups: Dict[Tuple[Hashable, bool], List[nn.Parameter]] = {}
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        groups.setdefault((key(name, p), name not in skip), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decays else 0.0, "tag": tag}
            for (tag, decays), ps in groups.items()]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05, betas=(0.9, 0.95), eps: float = 1e-8,
                    key: Optional[Callable[[str, nn.Parameter], Hashable]] = None,
                    lr_of: Optional[Dict[Hashable, float]] = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` with the one weight-decay policy
    (:func:`param_groups`); the optimiser of pretraining and fine-tuning.

    Args:
        key, lr_of: optional tagging of parameters (see :func:`param_groups`); a group whose
            tag is in ``lr_of`` takes that learning rate, every other group ``lr``.
    """
    groups = param_groups(model, weight_decay, key=key)
    if key is not None:
        for g in groups:
            g["lr"] = float((lr_of or {}).get(g["tag"], lr))
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
