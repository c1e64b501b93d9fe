"""Task heads over fused modality embeddings, and the label encoding of a task.

- :class:`TaskSpec` turns a manifest label column into training targets:
  ``multiclass`` (one class per cell → ``(N,)`` int, -1 = missing), ``multilabel``
  (``"MI;STTC"`` cells → ``(N, C)`` in {0, 1}, -1 = missing), ``regression`` (a float
  column → ``(N,)`` float, NaN = missing; standardised with the training mean/std).
- :func:`fuse` combines the per-modality embeddings of a batch: ``concat`` (zeros in
  place of an absent modality) or ``mean`` (over the modalities a sample has).
- :class:`TaskHead` is ``LayerNorm → [Linear → GELU → Dropout] → Dropout → Linear``.
- :func:`task_loss` is cross-entropy / per-label BCE (optional class-balanced weights) /
  MSE on standardised targets, each ignoring missing labels.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.manifest import is_missing
from ..errors import ConfigError, DataError

log = logging.getLogger("medfm.finetune")

KINDS = ("multiclass", "multilabel", "regression")
FUSIONS = ("concat", "mean")


@dataclass
class TaskSpec:
    """What is predicted and how labels are read.

    Attributes:
        kind: ``multiclass`` | ``multilabel`` | ``regression``.
        label_column: manifest column holding the label.
        classes: class / finding names (empty for regression), learned from the training split.
        separator: separator of multi-label cells.
        class_balanced: weight classes (multiclass) or positives (multilabel) by inverse frequency.
        empty_is_negative: multi-label only: an empty cell means "no finding" instead of "unknown".
        target_mean, target_std: regression targets are standardised with these (training split).
    """

    kind: str
    label_column: str
    classes: List[str] = field(default_factory=list)
    separator: str = ";"
    class_balanced: bool = False
    empty_is_negative: bool = False
    target_mean: float = 0.0
    target_std: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"task.kind must be one of {KINDS}, got {self.kind!r}")
        if not self.label_column:
            raise ConfigError("task.label_column is required")

    @classmethod
    def from_config(cls, cfg: Any) -> "TaskSpec":
        """From the config's ``task`` section: a :class:`~medfm.finetune.config_schema.TaskConfig` or a mapping."""
        if is_dataclass(cfg):
            cfg = asdict(cfg)
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"task: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(cfg))

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def n_outputs(self) -> int:
        return 1 if self.kind == "regression" else len(self.classes)

    # ----------------------------------------------------------- labels
    def _cells(self, df: pd.DataFrame) -> List[Any]:
        if self.label_column not in df.columns:
            raise DataError(f"label column {self.label_column!r} not in the manifest",
                            source=df.attrs.get("source"), field=self.label_column)
        return list(df[self.label_column])

    def _split_cell(self, v: Any) -> List[str]:
        return [t.strip() for t in str(v).split(self.separator) if t.strip()]

    def fit(self, train_df: pd.DataFrame) -> "TaskSpec":
        """Learn classes (and the regression mean/std) from the training split."""
        cells = [v for v in self._cells(train_df) if not is_missing(v)]
        if not cells:
            raise DataError(f"no training row has a {self.label_column!r} label", source=train_df.attrs.get("source"),
                            field=self.label_column)
        if self.kind == "multiclass":
            self.classes = sorted({str(v).strip() for v in cells})
            if len(self.classes) < 2:
                raise DataError(f"multiclass task needs >= 2 classes in the training split, found {self.classes}",
                                source=train_df.attrs.get("source"), field=self.label_column)
        elif self.kind == "multilabel":
            self.classes = sorted({t for v in cells for t in self._split_cell(v)})
        else:
            y = self.encode(train_df)
            y = y[~np.isnan(y)]
            self.target_mean = float(y.mean())
            self.target_std = float(y.std()) if y.size > 1 and y.std() > 0 else 1.0
        return self

    def encode(self, df: pd.DataFrame) -> np.ndarray:
        """Targets of every row: ``(N,)`` int64 / ``(N, C)`` int64 / ``(N,)`` float64 (see module doc)."""
        cells = self._cells(df)
        ids = list(df["id"]) if "id" in df.columns else list(range(len(cells)))
        if self.kind == "regression":
            out = np.full(len(cells), np.nan)
            for i, v in enumerate(cells):
                if is_missing(v):
                    continue
                try:
                    out[i] = float(v)
                except (TypeError, ValueError):
                    raise DataError(f"regression target {v!r} is not a number", source=ids[i],
                                    field=self.label_column) from None
                if not np.isfinite(out[i]):
                    raise DataError(f"regression target {v!r} is not finite", source=ids[i], field=self.label_column)
            return out
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = 0
        if self.kind == "multiclass":
            out = np.full(len(cells), -1, dtype=np.int64)
            for i, v in enumerate(cells):
                if not is_missing(v):
                    out[i] = index.get(str(v).strip(), -1)
                    unknown += out[i] < 0
        else:
            out = np.full((len(cells), len(self.classes)), -1, dtype=np.int64)
            for i, v in enumerate(cells):
                if is_missing(v):
                    if self.empty_is_negative:
                        out[i] = 0
                    continue
                out[i] = 0
                for t in self._split_cell(v):
                    if t in index:
                        out[i, index[t]] = 1
                    else:
                        unknown += 1
        if unknown:
            log.warning("%d label value(s) of %r not seen in the training split are ignored", unknown,
                        self.label_column)
        return out

    def loss_weights(self, y_train: np.ndarray) -> Optional[torch.Tensor]:
        """Class-balanced weights from training targets: ``(C,)`` CE class weights (multiclass,
        ``N / (C * n_c)``) or BCE ``pos_weight`` (multilabel, ``n_neg / n_pos``); ``None`` if off."""
        if not self.class_balanced or self.kind == "regression":
            return None
        c = len(self.classes)
        if self.kind == "multiclass":
            y = y_train[y_train >= 0]
            counts = np.bincount(y, minlength=c).astype(np.float64)
            w = len(y) / (c * np.maximum(counts, 1.0))
        else:
            known = y_train >= 0
            pos = ((y_train == 1) & known).sum(0).astype(np.float64)
            neg = ((y_train == 0) & known).sum(0).astype(np.float64)
            w = neg / np.maximum(pos, 1.0)
        return torch.tensor(w, dtype=torch.float32)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Head output ``(B, C)`` → probabilities (softmax / sigmoid) or ``(B,)`` values in target units."""
        if self.kind == "multiclass":
            return logits.float().softmax(-1)
        if self.kind == "multilabel":
            return logits.float().sigmoid()
        return logits.float()[:, 0] * self.target_std + self.target_mean


def task_loss(spec: TaskSpec, logits: torch.Tensor, targets: torch.Tensor,
              weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Loss of a batch, ignoring missing labels; 0 (with a graph) when none is labelled.

    Args:
        logits: ``(B, n_outputs)``.
        targets: ``(B,)`` long (multiclass), ``(B, C)`` long (multilabel), ``(B,)`` float (regression).
        weights: from :meth:`TaskSpec.loss_weights`.
    """
    logits = logits.float()
    if spec.kind == "multiclass":
        keep = targets >= 0
        if not keep.any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits[keep], targets[keep], weight=weights)
    if spec.kind == "multilabel":
        known = (targets >= 0).float()
        if known.sum() == 0:
            return logits.sum() * 0.0
        per = F.binary_cross_entropy_with_logits(logits, targets.clamp_min(0).float(), reduction="none",
                                                 pos_weight=weights)
        return (per * known).sum() / known.sum()
    keep = ~torch.isnan(targets)
    if not keep.any():
        return logits.sum() * 0.0
    z = (targets[keep].float() - spec.target_mean) / spec.target_std
    return F.mse_loss(logits[keep, 0], z)


def fuse(embeddings: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor], modalities: Sequence[str],
         fusion: str = "concat") -> torch.Tensor:
    """Combine per-modality embeddings of one batch.

    Args:
        embeddings: ``{modality: (B, D)}`` (zero rows where absent, as ``encode_batch`` gives).
        present: ``{modality: BoolTensor(B)}``.
        modalities: order of the concatenation.
        fusion: ``concat`` → ``(B, M*D)`` with zeros for an absent modality; ``mean`` → ``(B, D)``
            mean over the modalities the sample has (zeros when it has none).
    """
    zs = []
    for m in modalities:
        z = embeddings[m]
        p = present.get(m)
        mask = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device) if p is None else p.to(z.device, z.dtype)
        zs.append(z * mask[:, None])
    if fusion == "concat":
        return torch.cat(zs, dim=-1)
    if fusion == "mean":
        count = sum((present[m].to(zs[0].device, zs[0].dtype) if m in present else torch.zeros_like(zs[0][:, 0]))
                    for m in modalities)
        return torch.stack(zs).sum(0) / count.clamp_min(1.0)[:, None]
    raise ConfigError(f"fusion must be one of {FUSIONS}, got {fusion!r}")


class TaskHead(nn.Module):
    """Fusion of modality embeddings + a small head.

    Args:
        modalities: the modalities it reads, in concatenation order.
        embed_dim: ``D`` of each embedding.
        n_outputs: classes / findings / 1 for regression.
        fusion: ``concat`` or ``mean`` (see :func:`fuse`).
        hidden: width of an optional hidden layer (0 = linear head).
        dropout: dropout before the output layer.
    """

    def __init__(self, modalities: Sequence[str], embed_dim: int, n_outputs: int, fusion: str = "concat",
                 hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if n_outputs < 1:
            raise ConfigError("the task head needs at least one output")
        self.modalities = list(modalities)
        self.fusion = fusion
        self.embed_dim, self.n_outputs, self.hidden, self.dropout = int(embed_dim), int(n_outputs), int(hidden), float(dropout)
        in_dim = self.embed_dim * (len(self.modalities) if fusion == "concat" else 1)
        layers: List[nn.Module] = [nn.LayerNorm(in_dim)]
        if self.hidden > 0:
            layers += [nn.Linear(in_dim, self.hidden), nn.GELU(), nn.Dropout(self.dropout)]
            in_dim = self.hidden
        layers += [nn.Dropout(self.dropout), nn.Linear(in_dim, self.n_outputs)]
        self.net = nn.Sequential(*layers)

    def config(self) -> Dict[str, Any]:
        """Constructor arguments (stored in the checkpoint's ``config.json``)."""
        return {"modalities": self.modalities, "embed_dim": self.embed_dim, "n_outputs": self.n_outputs,
                "fusion": self.fusion, "hidden": self.hidden, "dropout": self.dropout}

    def forward(self, embeddings: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{modality: (B, D)}`` + ``{modality: BoolTensor(B)}`` → logits ``(B, n_outputs)``."""
        return self.net(fuse(embeddings, present, self.modalities, self.fusion))
