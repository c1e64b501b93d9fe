"""The typed schema of a pretraining run config (``medfm pretrain CONFIG``).

Validated once, at the CLI/API edge — before the manifest or any data file is read — by
:func:`parse_run_config`, with the key path in every message
(``optim.lr: expected a number, got 'abc'``); :class:`medfm.train.Trainer` receives the typed
:class:`RunConfig`. ``data``, ``optim`` and ``train`` are the sections shared with fine-tuning
(:mod:`medfm.train.sections`); pretraining adds to ``data`` (split, label_columns, shards,
shuffle_buffer) and ``train`` (max_steps, checkpoints, resume, strategy, time budget). Sections::

    model:       a preset name, a YAML/JSON path, or a mapping (checked by create_model)
    data:        DataConfig + split, label_columns, shards, shuffle_buffer
    objectives:  a list of {name, weight, ...objective options}
    optim:       OptimConfig (lr, weight_decay, betas, warmup_steps, min_lr_ratio, grad_clip)
    train:       LoopConfig + max_steps, checkpoint_every, keep_checkpoints, log_every,
                 grad_checkpointing, strategy, resume, force_resume, init_from, max_minutes
    requires:    accelerator (any | gpu), cpu_variant, note

Relative paths (``data.manifest``, ``data.root``) resolve against the folder of the config
file (the working directory for a config given in Python without ``config_dir``): the one
rule of :mod:`medfm.paths`.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Optional, Union

from ..errors import ConfigError
from ..schema import to_dict, validate
from .sections import DataConfig, LimitsConfig, LoopConfig, OptimConfig

__all__ = ["RunConfig", "PretrainData", "PretrainTrain", "RequiresConfig", "ObjectiveConfig", "LimitsConfig",
           "DataConfig", "OptimConfig", "LoopConfig", "parse_run_config", "validate_run_config", "check_accelerator"]


def _min(v, **more):
    return {"min": v, **more}


@dataclass
class PretrainData(DataConfig):
    """The shared ``data`` section and what pretraining adds: the split it trains on, labels for label-aware
    objectives, and streamed shards.

    Attributes:
        manifest: the cohort manifest (CSV, TSV, JSONL or Parquet); required unless ``shards`` is given.
        split: rows of this split train (``null``: every row); used when the manifest has a ``split`` column.
        label_columns: label columns passed to label-aware objectives.
        shards: a folder or URL pattern written by ``medfm shard``, streamed instead of the manifest.
        shuffle_buffer: samples held for shuffling when streaming shards.
    """

    split: Optional[str] = "train"
    label_columns: List[str] = field(default_factory=list)
    shards: Optional[str] = None
    shuffle_buffer: int = field(default=1000, metadata=_min(1))

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
class PretrainTrain(LoopConfig):
    """The shared ``train`` section and what pretraining adds: how long, checkpoints, resume, sharding.

    Attributes:
        max_steps: optimizer steps.
        checkpoint_every: steps between resumable checkpoints (0 or ``null``: only the final model).
        keep_checkpoints: how many resumable checkpoints are kept.
        log_every: steps between lines of ``metrics.jsonl``.
        grad_checkpointing: recompute trunk activations in the backward pass (less memory).
        strategy: ``ddp`` or ``fsdp`` under ``torchrun``.
        resume: continue from the newest intact checkpoint in ``OUT/checkpoints``.
        force_resume: resume even when the batch size, seed, accumulation, objectives or manifest
            differ from the checkpoint's (they change the data order or the objective; refused otherwise).
        init_from: a checkpoint whose tensors start the model wherever names and shapes match.
        max_minutes: a wall-time budget of the whole command — start-up, reading the data, training and the
            final save; time before a resume included. ``medfm pretrain`` counts from the start of its process
            (:mod:`medfm.clock`), the Python ``Trainer`` from its construction. A step that would end past the budget (less the time a
            final save takes) is not started; warm-up and decay are fitted to it.
    """

    max_steps: int = field(default=100, metadata=_min(1))
    checkpoint_every: Optional[int] = field(default=50, metadata=_min(0))
    keep_checkpoints: int = field(default=2, metadata=_min(1))
    log_every: int = field(default=1, metadata=_min(1))
    grad_checkpointing: bool = False
    strategy: Literal["ddp", "fsdp"] = "ddp"
    resume: bool = True
    force_resume: bool = False
    init_from: Optional[str] = None
    max_minutes: Optional[float] = field(default=None, metadata=_min(0))


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


def check_accelerator(requires: RequiresConfig, device: str, *, cuda: bool, allow_slow: bool = False,
                      recipe: Optional[str] = None) -> None:
    """Refuse to start a GPU-sized recipe (``requires.accelerator: gpu``) where no GPU is visible.

    ``device`` is ``train.device``: an explicit ``cpu`` (or ``allow_slow``) runs it anyway.

    Raises:
        ConfigError: naming the recipe, its ``note`` and its ``cpu_variant``.
    """
    if requires.accelerator != "gpu" or cuda or allow_slow or device == "cpu":
        return
    name = recipe or "this recipe"
    why = f" ({requires.note})" if requires.note else ""
    variant = (f"use {requires.cpu_variant}, the same recipe sized for a CPU" if requires.cpu_variant
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
        train: how long it trains, checkpoints and resume.
        requires: the hardware a recipe is sized for (a GPU recipe refuses a CPU-only machine).
        name: a label for the run.
        description: free text.
    """

    model: Union[str, Dict[str, Any]] = field(default_factory=lambda: {"name": "medfm-tiny"})
    data: PretrainData = field(default_factory=PretrainData)
    objectives: List[Dict[str, Any]] = field(default_factory=lambda: [{"name": "clip", "weight": 1.0}])
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: PretrainTrain = field(default_factory=PretrainTrain)
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


def parse_run_config(config: Mapping[str, Any]) -> RunConfig:
    """A run config as read (YAML, ``--set`` applied) → the typed :class:`RunConfig` (defaults filled in).

    The one validation of a pretraining config, at the CLI/API edge, before the manifest or any data
    file is read.

    Raises:
        ConfigError: the first problem, with its key path.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"a run config must be a mapping, got {type(config).__name__}")
    known = [f.name for f in dataclasses.fields(RunConfig)]
    unknown = sorted(set(config) - set(known), key=str)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config section; known: {', '.join(sorted(known))}")
    # objectives are edited in place by RunConfig.check (names and weights typed): work on a copy
    return validate(RunConfig, copy.deepcopy(dict(config)))


def validate_run_config(run: Mapping[str, Any]) -> Dict[str, Any]:
    """:func:`parse_run_config` as plain containers (what a checkpoint's ``run_config.json`` records)."""
    return to_dict(parse_run_config(run))
