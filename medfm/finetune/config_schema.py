"""The typed schema of a fine-tuning config (``medfm finetune CONFIG``), on :mod:`medfm.schema`.

Validated once, at the CLI/API edge, by :func:`parse_finetune_config` before the base model or any
data is read; messages carry the key path (``optim.lr: expected a number, got 'abc'``), and
:class:`medfm.finetune.FineTuner` receives the typed :class:`FinetuneConfig`. ``data``, ``optim``
and ``train`` are the sections shared with pretraining (:mod:`medfm.train.sections`): fine-tuning
adds its splits to ``data``, ``head_lr`` to ``optim`` and epochs with early stopping to ``train``,
and keeps its own defaults (fp32, AdamW betas 0.9/0.999, no warm-up).

Keys of the previous release (top-level ``device``, ``seed``, ``progress``, ``tensorboard`` and
``columns``; ``optim.epochs``, ``optim.patience``, ``optim.monitor``, ``optim.min_delta``) are
moved to their new place with a warning naming it (:data:`FINETUNE_MOVES`).

Relative paths (``base``, ``data.manifest``, ``data.root``, ``data.cache_dir``) resolve against the
folder of the config file (the working directory for a config given in Python without
``config_dir``): the one rule of :mod:`medfm.paths`, shared with pretraining.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple

from ..errors import ConfigError
from ..schema import apply_moves, validate
from ..train.sections import DataConfig, LoopConfig, OptimConfig

_FRACTION = {"min": 0, "max": 0.99}


@dataclass
class TaskConfig:
    """What the head predicts.

    Attributes:
        kind: ``multiclass``, ``multilabel`` or ``regression``.
        label_column: the manifest column holding the label.
        separator: separator of the labels in a multi-label cell.
        class_balanced: weight classes (multiclass) or positives (multilabel) by inverse frequency.
        empty_is_negative: multi-label only: an empty cell means "no finding" instead of "unknown".
    """

    kind: Literal["multiclass", "multilabel", "regression"] = "multiclass"
    label_column: str = "label"
    separator: str = ";"
    class_balanced: bool = False
    empty_is_negative: bool = False


@dataclass
class LoraSection:
    """LoRA (or DoRA) adapters through peft (``method: lora``).

    Attributes:
        r: adapter rank.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapter's input.
        dora: weight-decomposed LoRA (DoRA) instead of plain LoRA.
        target_modules: ``null``/``auto`` (a preset per tower kind) or a list of module-name patterns.
    """

    r: int = field(default=8, metadata={"min": 1})
    alpha: float = field(default=16, metadata={"min_exclusive": 0})
    dropout: float = field(default=0.0, metadata=_FRACTION)
    dora: bool = False
    target_modules: Any = None


@dataclass
class HeadSection:
    """The task head over the (fused) embeddings.

    Attributes:
        hidden: width of an optional hidden layer (0: a linear head).
        dropout: dropout before the output layer.
    """

    hidden: int = field(default=0, metadata={"min": 0})
    dropout: float = field(default=0.0, metadata=_FRACTION)


@dataclass
class FinetuneData(DataConfig):
    """The shared ``data`` section and fine-tuning's patient-grouped splits.

    Attributes:
        split_column: the column naming each row's split; absent: a deterministic split by patient.
        val_fraction: share of training patients held out for validation when no rows are marked val.
        test_fraction: share of patients held out for testing when the manifest has no split column.
        seed: key of the patient hash that makes the splits.
    """

    split_column: Optional[str] = "split"
    val_fraction: float = field(default=0.15, metadata=_FRACTION)
    test_fraction: float = field(default=0.15, metadata=_FRACTION)
    seed: int = 0


@dataclass
class FinetuneOptim(OptimConfig):
    """The shared ``optim`` section with fine-tuning's defaults and the head's own learning rate.

    Attributes:
        head_lr: the head's learning rate (``null``: ``lr``).
    """

    weight_decay: float = field(default=0.01, metadata={"min": 0})
    betas: Tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = field(default=0, metadata={"min": 0})
    head_lr: Optional[float] = field(default=None, metadata={"min": 0})


#: monitor name → (metric key, higher is better)
MONITORS = {"auroc": ("macro_auroc", True), "auprc": ("macro_auprc", True), "accuracy": ("accuracy", True),
            "f1": ("macro_f1", True), "mae": ("mae", False), "rmse": ("rmse", False), "r2": ("r2", True),
            "loss": ("loss", False)}
_REGRESSION_MONITORS = {"mae", "rmse", "r2"}


@dataclass
class FinetuneTrain(LoopConfig):
    """The shared ``train`` section with fine-tuning's defaults, and epochs with early stopping.

    Attributes:
        epochs: the most epochs.
        patience: epochs without improvement of the monitor before stopping (0: never stop early).
        monitor: the validation metric that picks the best epoch (``auroc``, ``auprc``, ``accuracy``,
            ``f1``, ``mae``, ``rmse``, ``r2``, ``loss``; default: ``auroc``, or ``mae`` for regression).
        min_delta: the least change of the monitor that counts as an improvement.
    """

    precision: Literal["auto", "bf16", "fp32", "32"] = "fp32"
    tensorboard: bool = False
    epochs: int = field(default=20, metadata={"min": 1})
    patience: int = field(default=5, metadata={"min": 0})
    monitor: Optional[Literal["auroc", "auprc", "accuracy", "f1", "mae", "rmse", "r2", "loss"]] = None
    min_delta: float = field(default=0.0, metadata={"min": 0})


@dataclass
class FinetuneEval:
    """The test-split evaluation.

    Attributes:
        n_boot: bootstrap resamples (by patient) of the 95% intervals.
        seed: seed of the bootstrap.
    """

    n_boot: int = field(default=1000, metadata={"min": 0})
    seed: int = 0


@dataclass
class FinetuneConfig:
    """A fine-tuning run (``medfm finetune CONFIG``).

    Attributes:
        base: the base checkpoint folder, or a model config (preset or YAML) started from ``init``.
        init: ``{modality: init spec}``: tower weights imported into the base (``medfm info`` lists formats).
        modalities: towers to fine-tune and fuse (default: every base modality with a manifest column).
        task: what the head predicts.
        method: ``lora`` (adapters), ``full`` (every weight) or ``linear`` (a frozen encoder).
        lora: the adapters of ``method: lora``.
        fusion: how several modalities' embeddings are combined: ``concat`` or ``mean``.
        head: the task head.
        data: the cohort, how it is read, and its splits.
        optim: the optimizer and its schedule.
        train: device, seed, precision, epochs and early stopping.
        eval: the test-split evaluation.
        merge: also write a merged model (adapters folded in) to ``OUT/merged``.
        name: a label for the run.
        description: free text.
    """

    base: Optional[str] = None
    init: Dict[str, Any] = field(default_factory=dict)
    modalities: Optional[List[str]] = None
    task: TaskConfig = field(default_factory=TaskConfig)
    method: Literal["lora", "full", "linear"] = "lora"
    lora: LoraSection = field(default_factory=LoraSection)
    fusion: Literal["concat", "mean"] = "concat"
    head: HeadSection = field(default_factory=HeadSection)
    data: FinetuneData = field(default_factory=FinetuneData)
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)
    train: FinetuneTrain = field(default_factory=FinetuneTrain)
    eval: FinetuneEval = field(default_factory=FinetuneEval)
    merge: bool = False
    name: Optional[str] = None
    description: Optional[str] = None

    def check(self, path: str) -> None:
        if not self.base:
            raise ConfigError("base is required: the directory of a pretrained medfm checkpoint")
        if not self.data.manifest:
            raise ConfigError("data.manifest is required (a CSV/TSV/JSONL/Parquet cohort manifest)")
        regression = self.task.kind == "regression"
        if self.train.monitor is None:
            self.train.monitor = "mae" if regression else "auroc"
        if regression != (self.train.monitor in _REGRESSION_MONITORS) and self.train.monitor != "loss":
            raise ConfigError(f"train.monitor {self.train.monitor!r} does not fit a {self.task.kind} task")


#: keys of the previous release → their place now (each warns once, naming the new key)
FINETUNE_MOVES = {"device": "train.device", "seed": "train.seed", "progress": "train.progress",
                  "tensorboard": "train.tensorboard", "columns": "data.columns", "optim.epochs": "train.epochs",
                  "optim.patience": "train.patience", "optim.monitor": "train.monitor",
                  "optim.min_delta": "train.min_delta"}


def parse_finetune_config(config: Mapping[str, Any]) -> FinetuneConfig:
    """A fine-tuning config as read (YAML, ``--set`` applied) → the typed :class:`FinetuneConfig`.

    Keys of the previous release move to their new place with a :class:`FutureWarning` naming it.

    Raises:
        ConfigError: the first problem, with its key path.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"a fine-tuning config must be a mapping, got {type(config).__name__}")
    return validate(FinetuneConfig, apply_moves(config, FINETUNE_MOVES))
