"""The typed schema of a fine-tuning config (``medfm finetune CONFIG``), on :mod:`medfm.schema`.

Checked by :func:`medfm.finetune.finetuner.resolve_config` before the base model or any data is
read; messages carry the key path (``optim.lr: expected a number, got 'abc'``). Cross-field
rules (a monitor that fits the task kind) stay in ``resolve_config``.

Relative paths (``base``, ``data.manifest``, ``data.root``, ``data.cache_dir``) resolve against the
folder of the config file
(the working directory for a config given in Python without ``config_dir``): the one rule of
:mod:`medfm.paths`, shared with pretraining.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Optional

from ..schema import to_dict, validate
from ..train.run_config import LimitsConfig, confine_paths_field, limits_field, root_field

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
class FinetuneData:
    """The cohort and its patient-grouped splits.

    Attributes:
        manifest: the cohort manifest (CSV, TSV, JSONL or Parquet).
        batch_size: samples per step.
        num_workers: data-loading processes.
        split_column: the column naming each row's split; absent: a deterministic split by patient.
        val_fraction: share of training patients held out for validation when no rows are marked val.
        test_fraction: share of patients held out for testing when the manifest has no split column.
        seed: key of the patient hash that makes the splits.
        cache_dir: where preprocessed samples are cached (``null``: no cache).
        max_skip_fraction: the run fails (exit 1, no model card) when a larger share of the training rows that hold
            one of its modalities had a cell it could not use (:mod:`medfm.data.skips`).
    """

    manifest: Optional[str] = None
    batch_size: int = field(default=16, metadata={"min": 1})
    num_workers: int = field(default=0, metadata={"min": 0})
    split_column: Optional[str] = "split"
    val_fraction: float = field(default=0.15, metadata=_FRACTION)
    test_fraction: float = field(default=0.15, metadata=_FRACTION)
    seed: int = 0
    cache_dir: Optional[str] = None
    root: Optional[str] = root_field()
    confine_paths: bool = confine_paths_field()
    limits: LimitsConfig = limits_field()
    max_skip_fraction: float = field(default=0.5, metadata={"min": 0, "max": 1})


@dataclass
class FinetuneOptim:
    """AdamW, early stopping and the schedule.

    Attributes:
        lr: learning rate of the adapters (and of the encoder with ``method: full``).
        head_lr: the head's learning rate (``null``: ``lr``).
        weight_decay: decoupled weight decay (never on norms, biases or embeddings).
        epochs: the most epochs.
        patience: epochs without improvement of the monitor before stopping (0: never stop early).
        monitor: the validation metric that picks the best epoch (``auroc``, ``auprc``, ``accuracy``,
            ``f1``, ``mae``, ``rmse``, ``r2``, ``loss``; default: ``auroc``, or ``mae`` for regression).
        min_delta: the least change of the monitor that counts as an improvement.
        warmup_steps: linear warm-up steps before the cosine decay.
        grad_clip: global gradient-norm clip (``null``: none).
    """

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
        columns: ``{modality: column}`` where a modality's cells are not in a column of its name.
        task: what the head predicts.
        method: ``lora`` (adapters), ``full`` (every weight) or ``linear`` (a frozen encoder).
        lora: the adapters of ``method: lora``.
        fusion: how several modalities' embeddings are combined: ``concat`` or ``mean``.
        head: the task head.
        data: the cohort and its splits.
        optim: the optimizer and early stopping.
        eval: the test-split evaluation.
        merge: also write a merged model (adapters folded in) to ``OUT/merged``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seed of the head, the adapters and the data order.
        progress: show a progress bar.
        tensorboard: also write the history as TensorBoard scalars to ``OUT/tb``.
        name: a label for the run.
        description: free text.
    """

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
