"""The typed schema of a fine-tuning config (``medfm finetune CONFIG``), on :mod:`medfm.schema`.

Checked by :func:`medfm.finetune.finetuner.resolve_config` before the base model or any data is
read; messages carry the key path (``optim.lr: expected a number, got 'abc'``). Cross-field
rules (a monitor that fits the task kind) stay in ``resolve_config``.

Relative paths (``base``, ``data.manifest``) resolve against the folder of the config file
(the working directory for a config given in Python without ``config_dir``): the one rule of
:mod:`medfm.train.paths`, shared with pretraining.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Optional

from ..schema import to_dict, validate

_FRACTION = {"min": 0, "max": 0.99}


@dataclass
class TaskConfig:
    kind: Literal["multiclass", "multilabel", "regression"] = "multiclass"
    label_column: str = "label"
    separator: str = ";"
    class_balanced: bool = False
    empty_is_negative: bool = False


@dataclass
class LoraSection:
    r: int = field(default=8, metadata={"min": 1})
    alpha: float = field(default=16, metadata={"min_exclusive": 0})
    dropout: float = field(default=0.0, metadata=_FRACTION)
    dora: bool = False
    target_modules: Any = None


@dataclass
class HeadSection:
    hidden: int = field(default=0, metadata={"min": 0})
    dropout: float = field(default=0.0, metadata=_FRACTION)


@dataclass
class FinetuneData:
    manifest: Optional[str] = None
    batch_size: int = field(default=16, metadata={"min": 1})
    num_workers: int = field(default=0, metadata={"min": 0})
    split_column: Optional[str] = "split"
    val_fraction: float = field(default=0.15, metadata=_FRACTION)
    test_fraction: float = field(default=0.15, metadata=_FRACTION)
    seed: int = 0
    cache_dir: Optional[str] = None


@dataclass
class FinetuneOptim:
    lr: float = field(default=1e-3, metadata={"min": 0})
    head_lr: Optional[float] = field(default=None, metadata={"min": 0})
    weight_decay: float = field(default=0.01, metadata={"min": 0})
    epochs: int = field(default=20, metadata={"min": 1})
    patience: int = field(default=5, metadata={"min": 0})
    monitor: Optional[str] = None
    min_delta: float = field(default=0.0, metadata={"min": 0})
    warmup_steps: int = field(default=0, metadata={"min": 0})
    grad_clip: Optional[float] = field(default=1.0, metadata={"min": 0})


@dataclass
class FinetuneEval:
    n_boot: int = field(default=1000, metadata={"min": 0})
    seed: int = 0


@dataclass
class FinetuneConfig:
    base: Optional[str] = None
    init: Dict[str, Any] = field(default_factory=dict)
    modalities: Optional[List[str]] = None
    columns: Dict[str, str] = field(default_factory=dict)
    task: TaskConfig = field(default_factory=TaskConfig)
    method: Literal["lora", "full", "linear"] = "lora"
    lora: LoraSection = field(default_factory=LoraSection)
    fusion: Literal["concat", "mean"] = "concat"
    head: HeadSection = field(default_factory=HeadSection)
    data: FinetuneData = field(default_factory=FinetuneData)
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)
    eval: FinetuneEval = field(default_factory=FinetuneEval)
    merge: bool = False
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    tensorboard: bool = False
    name: Optional[str] = None
    description: Optional[str] = None


def validate_finetune_config(cfg: Mapping[str, Any], tolerated: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Validate a merged fine-tuning config; return it as plain containers with numbers converted."""
    return to_dict(validate(FinetuneConfig, cfg, extra_keys=tolerated))
