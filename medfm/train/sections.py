"""The config sections pretraining and fine-tuning share: one vocabulary for both runners.

``data`` (:class:`DataConfig`), ``optim`` (:class:`OptimConfig`) and ``train`` (:class:`LoopConfig`)
are the same typed sections in a run config (``medfm pretrain``) and a fine-tune config
(``medfm finetune``). What differs between the runners is a subclass that adds its own fields
(steps and checkpoints for pretraining, epochs and early stopping for fine-tuning) or gives a
field another default (fine-tuning: fp32, torch's AdamW betas); the shared fields — their names,
types, bounds and meaning — are declared once, here. The training core is built from them
(:meth:`medfm.train.loop.TrainCore.from_config`), so both runners get precision, accumulation,
betas, clipping, path confinement and input limits by construction.

``medfm info --config-schema`` prints each shared section once, and each config names the
sections it uses and its own fields (:func:`shared_section_of`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, Literal, Optional, Tuple, Type

from ..errors import ConfigError


def _min(v, **more):
    return {"min": v, **more}


@dataclass
class LimitsConfig:
    """Input-size limits checked before decoding (:mod:`medfm.limits`); ``null`` keeps the default
    (or the environment's value).

    Attributes:
        max_file_mb: bytes on disk of one input, in MiB.
        max_elements: the product of the dimensions a file's header declares.
        max_sample_mb: memory of one decoded sample as float32, in MiB.
        max_text_mb: one text value as UTF-8 (an inline cell, a ``.txt`` report, one FASTA/TSV record), in MiB.
        max_header_mb: a header read before its library parses it (a WFDB ``.hea``, a JSON sidecar), in MiB.
    """

    max_file_mb: Optional[float] = field(default=None, metadata={"min_exclusive": 0})
    max_elements: Optional[float] = field(default=None, metadata={"min_exclusive": 0})
    max_sample_mb: Optional[float] = field(default=None, metadata={"min_exclusive": 0})
    max_text_mb: Optional[float] = field(default=None, metadata={"min_exclusive": 0})
    max_header_mb: Optional[float] = field(default=None, metadata={"min_exclusive": 0})

    def as_kwargs(self) -> Dict[str, float]:
        """The limits that are set, as keyword arguments of :func:`medfm.limits.limits`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class DataConfig:
    """Where the samples come from, how they are read and batched (shared by pretraining and fine-tuning).

    Attributes:
        manifest: the cohort manifest (CSV, TSV, JSONL or Parquet).
        columns: ``{modality: column}`` where a modality's cells are not in a column of its name (the one home
            of the mapping; ``--column MODALITY=COLUMN`` adds to it, the checkpoint records it).
        batch_size: samples per step and rank.
        num_workers: data-loading processes per rank.
        cache_dir: where preprocessed samples are cached (``null``: no cache).
        root: the one folder path cells must stay inside (default: the manifest's folder and the data roots
            `medfm manifest` recorded in its sidecar; medfm.data.confine).
        confine_paths: refuse (as counted skips) manifest paths that leave the data roots.
        limits: input-size limits checked before decoding (medfm.limits).
        max_skip_fraction: the run fails (exit 1, no model) when a larger share of the rows that hold one of
            its modalities had a cell it could not use; rows holding none of them do not count (:mod:`medfm.data.skips`).
    """

    manifest: Optional[str] = None
    columns: Dict[str, str] = field(default_factory=dict)
    batch_size: int = field(default=16, metadata=_min(1))
    num_workers: int = field(default=0, metadata=_min(0))
    cache_dir: Optional[str] = None
    root: Optional[str] = None
    confine_paths: bool = True
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    max_skip_fraction: float = field(default=0.5, metadata={"min": 0, "max": 1})


@dataclass
class OptimConfig:
    """AdamW and its schedule: linear warm-up, cosine decay (shared by pretraining and fine-tuning).

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
                raise ConfigError(f"{path or 'optim'}.betas[{i}]: must be in [0, 1), got {b!r}")


@dataclass
class LoopConfig:
    """Where and how the steps run, and what they report (shared by pretraining and fine-tuning).

    Attributes:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seed of the weights, the data order and the augmentations.
        precision: ``auto`` (bf16 on a bf16-capable GPU, else fp32), ``bf16`` or ``fp32``.
        accumulation: micro-batches per optimizer step.
        progress: show a progress bar.
        tensorboard: also write TensorBoard scalars to ``OUT/tb``.
        num_threads: torch intra-op CPU threads for the run (``null``: torch's default, one per core the
            process may use, or ``OMP_NUM_THREADS``). The shipped ``*_cpu`` recipes and ``medfm demo``
            pin 1: their tiny models spend each step in many small ops, where a second thread adds
            fork/join cost and waits for a core another process holds.
    """

    device: str = "auto"
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32", "32"] = "auto"
    accumulation: int = field(default=1, metadata=_min(1))
    progress: bool = True
    tensorboard: bool = True
    num_threads: Optional[int] = field(default=None, metadata=_min(1))


#: the shared sections, by the key they sit under in both configs
SHARED_SECTIONS: Dict[str, Type[Any]] = {"data": DataConfig, "optim": OptimConfig, "train": LoopConfig}


def shared_section_of(schema: Type[Any]) -> Optional[Type[Any]]:
    """The shared section ``schema`` is (or extends), else ``None``."""
    for shared in SHARED_SECTIONS.values():
        if isinstance(schema, type) and issubclass(schema, shared):
            return shared
    return None
