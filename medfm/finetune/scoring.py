"""What a fine-tuned model is judged by during and after training: predictions over a loader, the task's
metrics with patient-level bootstrap intervals, and early stopping on the best epoch.

Classification and regression metrics come from :mod:`medfm.metrics`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Tuple

import numpy as np
import torch

from ..data import move_batch
from ..metrics import cluster_bootstrap, metrics_with_ci, regression_metrics
from .heads import TaskSpec
from .model import FineTunedModel

__all__ = ["labelled", "task_metrics", "predict_scores", "predict_loader", "EarlyStopping"]


def labelled(task: TaskSpec, y: np.ndarray) -> np.ndarray:
    """Boolean ``(N,)``: rows with a usable label."""
    if task.kind == "multiclass":
        return y >= 0
    if task.kind == "multilabel":
        return (y >= 0).any(1)
    return ~np.isnan(y)


def task_metrics(task: TaskSpec, y: np.ndarray, scores: np.ndarray, groups=None, n_boot: int = 0,
                 seed: int = 0) -> Tuple[Dict[str, float], Dict[str, Tuple[float, float]]]:
    """Point metrics and patient-level bootstrap CIs (``n_boot`` > 0) on labelled rows.

    Classification metrics come from :mod:`medfm.metrics`.
    """
    keep = labelled(task, y)
    y, scores = y[keep], scores[keep]
    groups = None if groups is None else np.asarray(groups)[keep]
    if len(y) == 0:
        return {}, {}
    if task.kind == "regression":
        point = regression_metrics(y, scores)
        ci = cluster_bootstrap(regression_metrics, y, scores, groups, n_boot=n_boot, seed=seed) if n_boot else {}
        return point, ci
    return metrics_with_ci(y, scores, groups, task.classes, n_boot=n_boot, seed=seed)


def predict_scores(model: FineTunedModel, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(logits (B, n_outputs), scores)`` of a collated batch: :meth:`FineTunedModel.predict`."""
    return model.predict(batch)


@torch.no_grad()
def predict_loader(model, loader, device) -> Dict[str, Any]:
    """Run the head over a loader → ``{"index": (N,), "id", "patient_id", "logits": (N, K), "scores"}``."""
    model.eval()
    idx, ids, pids, logits, scores, skipped = [], [], [], [], [], 0
    for batch in loader:
        skipped += batch["n_skipped"]
        if not batch["id"]:
            continue
        batch = move_batch(batch, device)
        lg, sc = predict_scores(model, batch)
        idx.append(batch["index"].cpu())
        ids += batch["id"]
        pids += batch["patient_id"]
        logits.append(lg.float().cpu())
        scores.append(sc.float().cpu())
    k = model.task_head.n_outputs
    return {"index": torch.cat(idx).numpy() if idx else np.zeros(0, int), "id": ids, "patient_id": pids,
            "logits": torch.cat(logits) if logits else torch.zeros(0, k),
            "scores": torch.cat(scores).numpy() if scores else np.zeros((0, k)), "n_skipped": skipped}


class EarlyStopping:
    """Best-epoch tracking: an epoch improves when its score beats the best by more than
    ``min_delta`` (a NaN score never improves); the first epoch is kept as best in any case.
    :attr:`should_stop` once ``patience`` (> 0) epochs in a row did not improve.

    Args:
        higher: whether a higher score is better.
        min_delta: the least change that counts as an improvement.
        patience: epochs without improvement before stopping (0 = never stop).
    """

    def __init__(self, higher: bool, min_delta: float = 0.0, patience: int = 0):
        self.higher, self.min_delta, self.patience = higher, float(min_delta), int(patience)
        self.best_score, self.best_state, self.best_epoch, self.best_val = None, None, 0, {}
        self.bad, self.should_stop = 0, False

    def update(self, score: float, epoch: int, state: Callable[[], Any], val: Mapping[str, Any]) -> bool:
        """Record an epoch's ``score``; ``state()`` is called (a copy of the weights) when it is
        the best so far. Returns whether it improved."""
        improved = score == score and (self.best_score is None or (
            score > self.best_score + self.min_delta if self.higher else score < self.best_score - self.min_delta))
        if improved or self.best_state is None:
            self.best_score, self.best_state, self.best_epoch, self.best_val = score, state(), epoch, val
            self.bad = 0 if improved else self.bad + 1
        else:
            self.bad += 1
        self.should_stop = self.patience > 0 and self.bad >= self.patience
        return improved
