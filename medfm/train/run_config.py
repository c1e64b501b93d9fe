"""The typed schema of a pretraining run config (``medfm pretrain CONFIG``).

Validated up front — before the manifest or any data file is read — by
:func:`validate_run_config`, with the key path in every message
(``optim.lr: expected a number, got 'abc'``). Sections and keys::

    model:       a preset name, a YAML/JSON path, or a mapping (checked by create_model)
    data:        manifest, split, columns, label_columns, batch_size, num_workers, cache_dir,
                 root, confine_paths, limits {max_file_mb, max_elements, max_sample_mb,
                 max_text_mb, max_header_mb}, shards, shuffle_buffer, max_skip_fraction
    objectives:  a list of {name, weight, ...objective options}
    optim:       lr, weight_decay, betas, warmup_steps, min_lr_ratio, grad_clip
    train:       max_steps, accumulation, precision, checkpoint_every, keep_checkpoints,
                 log_every, seed, grad_checkpointing, strategy, device, tensorboard,
                 progress, resume, force_resume, init_from, max_minutes, num_threads
    requires:    accelerator (any | gpu), cpu_variant, note

Relative paths (``data.manifest``, ``data.root``) resolve against the folder of the config
file (the working directory for a config given in Python without ``config_dir``): the one
rule of :mod:`medfm.paths`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

from ..errors import ConfigError
from ..schema import to_dict, validate


def _min(v, **more):
    return {"min": v, **more}


@dataclass
class LimitsConfig:
    """See :mod:`medfm.limits`; ``None`` keeps the default (or the environment's value).

    Attributes:
        max_file_mb: bytes on disk of one input, in MiB.
        max_elements: the product of the dimensions a file's header declares.
        max_sample_mb: memory of one decoded sample as float32, in MiB.
    """

    max_file_mb: Optional[float] = field(default=None, metadata={"min_exclusive": 0})
    max_elements: Optional[float] = field(default=None, metadata={"min_exclusive": 0})
    max_sample_mb: Optional[float] = field(default=None, metadata={"min_exclusive": 0})
    max_text_mb: Optional[float] = field(default=None, metadata={"min_exclusive": 0})
    max_header_mb: Optional[float] = field(default=None, metadata={"min_exclusive": 0})


def root_field() -> Any:
    """``data.root``, shared by the pretraining and fine-tuning schemas."""
    return field(default=None, metadata={"doc": "the one folder path cells must stay inside (default: the manifest's "
                                                "folder and the data roots `medfm manifest` recorded in its sidecar; "
                                                "medfm.data.confine)"})


def confine_paths_field() -> Any:
    """``data.confine_paths``, shared by the pretraining and fine-tuning schemas."""
    return field(default=True, metadata={"doc": "refuse (as counted skips) manifest paths that leave the data roots"})


def limits_field() -> Any:
    """``data.limits``, shared by the pretraining and fine-tuning schemas."""
    return field(default_factory=LimitsConfig, metadata={"doc": "input-size limits checked before decoding "
                                                                "(medfm.limits)"})


@dataclass
class DataConfig:
    """Where the samples come from and how they are batched.

    Attributes:
        manifest: the cohort manifest (CSV, TSV, JSONL or Parquet); required unless ``shards`` is given.
        split: rows of this split train (``null``: every row); used when the manifest has a ``split`` column.
        columns: ``{modality: column}`` where a modality's cells are not in a column of its name.
        label_columns: label columns passed to label-aware objectives.
        batch_size: samples per step and rank.
        num_workers: data-loading processes per rank.
        cache_dir: where preprocessed samples are cached (``null``: no cache).
        shards: a folder or URL pattern written by ``medfm shard``, streamed instead of the manifest.
        shuffle_buffer: samples held for shuffling when streaming shards.
        max_skip_fraction: the run fails (exit 1, no model) when a larger share of the rows that hold one of
            its modalities had a cell it could not use; rows holding none of them do not count (:mod:`medfm.data.skips`).
    """

    manifest: Optional[str] = None
    split: Optional[str] = "train"
    columns: Dict[str, str] = field(default_factory=dict)
    label_columns: List[str] = field(default_factory=list)
    batch_size: int = field(default=16, metadata=_min(1))
    num_workers: int = field(default=0, metadata=_min(0))
    cache_dir: Optional[str] = None
    root: Optional[str] = root_field()
    confine_paths: bool = confine_paths_field()
    limits: LimitsConfig = limits_field()
    shards: Optional[str] = None
    shuffle_buffer: int = field(default=1000, metadata=_min(1))
    max_skip_fraction: float = field(default=0.5, metadata={"min": 0, "max": 1})

    def check(self, path: str) -> None:
        if not self.manifest and not self.shards:
            raise ConfigError("data.manifest is required (a CSV/TSV/JSONL/Parquet cohort manifest), "
                              "or data.shards (a folder/URL written by `medfm shard`)")


@dataclass
class ObjectiveConfig:
    """One loss term; options other than ``name``/``weight`` go to the objective (checked there)."""

    name: str
    weight: float = field(default=1.0, metadata=_min(0))


@dataclass
class OptimConfig:
    """AdamW and its schedule (linear warm-up, cosine decay; fitted to ``train.max_minutes`` when given).

    Attributes:
        lr: peak learning rate.
        weight_decay: decoupled weight decay (never on norms, biases, embeddings or the logit scale).
        betas: AdamW betas.
        warmup_steps: linear warm-up steps.
        min_lr_ratio: the learning rate at the end of the cosine, as a fraction of ``lr``.
        grad_clip: global gradient-norm clip (``null``: none).
    """

    lr: float = field(default=1e-3, metadata=_min(0))
    weight_decay: float = field(default=0.05, metadata=_min(0))
    betas: Tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = field(default=10, metadata=_min(0))
    min_lr_ratio: float = field(default=0.0, metadata={"min": 0, "max": 1})
    grad_clip: Optional[float] = field(default=1.0, metadata=_min(0))

    def check(self, path: str) -> None:
        for i, b in enumerate(self.betas):
            if not 0 <= b < 1:
                raise ConfigError(f"optim.betas[{i}]: must be in [0, 1), got {b!r}")


@dataclass
class TrainConfig:
    """How long and where the run trains, and what it writes.

    Attributes:
        max_steps: optimizer steps.
        accumulation: micro-batches per optimizer step.
        precision: ``auto`` (bf16 on a bf16-capable GPU, else fp32), ``bf16`` or ``fp32``.
        checkpoint_every: steps between resumable checkpoints (0 or ``null``: only the final model).
        keep_checkpoints: how many resumable checkpoints are kept.
        log_every: steps between lines of ``metrics.jsonl``.
        seed: seed of the weights, the data order and the augmentations.
        grad_checkpointing: recompute trunk activations in the backward pass (less memory).
        strategy: ``ddp`` or ``fsdp`` under ``torchrun``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        tensorboard: also write TensorBoard scalars to ``OUT/tb``.
        progress: show a progress bar.
        resume: continue from the newest intact checkpoint in ``OUT/checkpoints``.
        force_resume: resume even when the batch size, seed, accumulation, objectives or manifest
            differ from the checkpoint's (they change the data order or the objective; refused otherwise).
        init_from: a checkpoint whose tensors start the model wherever names and shapes match.
        max_minutes: a wall-time budget of the whole command — start-up, reading the data, training and the
            final save; time before a resume included. ``medfm pretrain`` counts from the start of its process
            (:mod:`medfm.clock`), the Python ``Trainer`` from its construction. A step that would end past the budget (less the time a
            final save takes) is not started; warm-up and decay are fitted to it.
        num_threads: torch intra-op CPU threads for the run (``null``: torch's default, one per core the
            process may use, or ``OMP_NUM_THREADS``). The shipped ``*_cpu`` recipes and ``medfm demo``
            pin 1: their tiny models spend each step in many small ops, where a second thread adds
            fork/join cost and waits for a core another process holds.
    """

    max_steps: int = field(default=100, metadata=_min(1))
    accumulation: int = field(default=1, metadata=_min(1))
    precision: Literal["auto", "bf16", "fp32", "32"] = "auto"
    checkpoint_every: Optional[int] = field(default=50, metadata=_min(0))
    keep_checkpoints: int = field(default=2, metadata=_min(1))
    log_every: int = field(default=1, metadata=_min(1))
    seed: int = 0
    grad_checkpointing: bool = False
    strategy: Literal["ddp", "fsdp"] = "ddp"
    device: str = "auto"
    tensorboard: bool = True
    progress: bool = True
    resume: bool = True
    force_resume: bool = False
    init_from: Optional[str] = None
    max_minutes: Optional[float] = field(default=None, metadata=_min(0))
    num_threads: Optional[int] = field(default=None, metadata=_min(1))


@dataclass
class RequiresConfig:
    """What a recipe needs to run at its intended speed (checked before any data is read).

    Attributes:
        accelerator: ``gpu``: started where no CUDA device is visible, the run stops at once and names
            ``cpu_variant``, unless asked to run anyway (``--allow-slow`` or an explicit ``train.device: cpu``).
            ``any``: no check.
        cpu_variant: the recipe sized for a CPU (a shipped config name or a path beside this one).
        note: why, in a few words (e.g. the memory it needs), printed with the refusal.
    """

    accelerator: Literal["any", "gpu"] = "any"
    cpu_variant: Optional[str] = None
    note: Optional[str] = None


def check_accelerator(requires: Mapping[str, Any], device: str, *, cuda: bool, allow_slow: bool = False,
                      recipe: Optional[str] = None) -> None:
    """Refuse to start a GPU-sized recipe (``requires.accelerator: gpu``) where no GPU is visible.

    ``device`` is ``train.device``: an explicit ``cpu`` (or ``allow_slow``) runs it anyway.

    Raises:
        ConfigError: naming the recipe, its ``note`` and its ``cpu_variant``.
    """
    req = requires or {}
    if req.get("accelerator", "any") != "gpu" or cuda or allow_slow or str(device) == "cpu":
        return
    name = recipe or "this recipe"
    why = f" ({req['note']})" if req.get("note") else ""
    variant = (f"use {req['cpu_variant']}, the same recipe sized for a CPU" if req.get("cpu_variant")
               else "no CPU variant ships: lower data.batch_size and the model size")
    raise ConfigError(f"{name} is sized for a GPU{why} and this machine has no CUDA device: {variant}; "
                      "to run it here anyway pass --allow-slow (or --set train.device=cpu)")


@dataclass
class RunConfig:
    """A pretraining run (``medfm pretrain CONFIG``).

    Attributes:
        model: a preset name, a model YAML file, or a model config mapping (the model schema).
        data: where the samples come from.
        objectives: loss terms ``{name, weight, ...options}``, summed with their weights.
        optim: the optimizer and its schedule.
        train: steps, precision, checkpoints and logging.
        requires: the hardware a recipe is sized for (a GPU recipe refuses a CPU-only machine).
        name: a label for the run.
        description: free text.
    """

    model: Union[str, Dict[str, Any]] = field(default_factory=lambda: {"name": "medfm-tiny"})
    data: DataConfig = field(default_factory=DataConfig)
    objectives: List[Dict[str, Any]] = field(default_factory=lambda: [{"name": "clip", "weight": 1.0}])
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    requires: RequiresConfig = field(default_factory=RequiresConfig)
    name: Optional[str] = None
    description: Optional[str] = None

    def check(self, path: str) -> None:
        if not self.objectives:
            raise ConfigError("objectives: at least one objective is needed")
        for i, obj in enumerate(self.objectives):
            if not isinstance(obj, Mapping):
                raise ConfigError(f"objectives[{i}]: expected a mapping with a name, got {obj!r}")
            # name and weight typed; the objective's own options are checked by build_objective
            typed = validate(ObjectiveConfig, {k: v for k, v in obj.items() if k in ("name", "weight")},
                             f"objectives[{i}]")
            obj.update({"name": typed.name, **({"weight": typed.weight} if "weight" in obj else {})})


def validate_run_config(run: Mapping[str, Any], tolerated: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Validate a merged run config; return it as plain containers with numbers converted.

    ``tolerated``: keys accepted without a type, per section (``{"train": {...}}``): settings
    another part of the code base added to ``DEFAULT_RUN`` before the schema knew them.

    Raises:
        ConfigError: the first problem, with its key path.
    """
    obj = validate(RunConfig, run, extra_keys=tolerated)
    return to_dict(obj)
