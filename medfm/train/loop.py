"""The training core shared by pretraining (:class:`medfm.train.Trainer`) and fine-tuning
(:class:`medfm.finetune.FineTuner`).

What lives here is every *policy* of an optimisation step, so the two cannot drift:

- :func:`~medfm.train.schedule.build_optimizer` (re-exported) — AdamW over
  :func:`medfm.train.schedule.param_groups` (no weight decay on biases, norms, embeddings, the
  logit scale/bias), optionally one group per tag (the fine-tuning head with its own learning rate);
- :func:`autocast` — the ``precision`` rule (``auto`` = bf16 on a bf16 GPU, else fp32);
- :class:`TrainCore` — one optimiser step: gradient accumulation over micro-batches
  (DDP ``no_sync`` on all but the last), autocast, backward, averaging of unsharded FSDP
  scalars, gradient clipping, optimiser + schedule step, ``zero_grad``, an optional
  post-step hook; the optimiser/schedule/RNG part of a checkpoint and its exact restore;
- :attr:`TrainCore.skips` — a :class:`medfm.data.skips.SkipLedger` fed with every collated
  batch: rows used / not applicable / unusable, unreadable cells and flags by reason (each
  warned about once per sample), the evidence a run that learned from nothing fails on;
- :class:`MetricsLog` — JSON lines (one record a line, flushed) plus optional TensorBoard
  scalars, and :func:`progress` — the tqdm bar;
- :func:`wrap_model` — DDP or FSDP2 wrapping under ``torchrun``.

What a step *computes* (a pretraining objective, a task head's loss), what validation
computes and what is saved stay with the caller.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, Iterable, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
from tqdm.auto import tqdm

from ..data import move_batch
from ..data.skips import SkipLedger
from ..errors import ConfigError
from .resume_checkpoint import BY_NAME, load_optimizer_state_by_name, set_rng_state
from .distributed import DistInfo
from .schedule import build_optimizer, cosine_with_warmup
from .sections import LoopConfig, OptimConfig

log = logging.getLogger("medfm.train")

PRECISIONS = ("auto", "bf16", "fp32", "32")


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (``auto``: bf16 on a bf16-capable GPU)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision in ("fp32", "32"):
        return contextlib.nullcontext()
    raise ConfigError(f"train.precision must be auto, bf16 or fp32, got {precision!r}")


def wrap_model(model: nn.Module, dist: DistInfo, strategy: str,
               unsharded: Sequence[nn.Parameter] = ()) -> nn.Module:
    """``model`` wrapped for data parallelism (``ddp`` or ``fsdp``); unchanged in a single process.

    With ``fsdp`` every module named ``Block`` is sharded, then the rest; ``unsharded``
    (scalar parameters FSDP cannot shard) stay whole and :class:`TrainCore` averages
    their gradients by hand.
    """
    if not dist.distributed:
        return model
    if strategy == "ddp":
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        return DDP(model, device_ids=ids, find_unused_parameters=True)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard  # deferred: torch.distributed.fsdp is only needed with torchrun

        for module in model.modules():
            if type(module).__name__ == "Block":
                fully_shard(module)
        return fully_shard(model, ignored_params=set(unsharded))
    raise ConfigError(f"train.strategy must be 'ddp' or 'fsdp', got {strategy!r}")


#: the counted skips of a run are a :class:`medfm.data.skips.SkipLedger` (the name of earlier releases)
SkipCounter = SkipLedger


@dataclass
class StepResult:
    """What one optimiser step reports: ``logs`` are the means over its micro-batches of
    every numeric entry of the step function's output (``loss`` included)."""

    logs: Dict[str, float] = field(default_factory=dict)
    grad_norm: float = 0.0
    n_samples: int = 0


class TrainCore:
    """One optimiser step, the same for pretraining and fine-tuning.

    Args:
        model: the module whose parameters are trained (unwrapped).
        optimizer, scheduler: from :func:`build_optimizer` and
            :func:`medfm.train.schedule.cosine_with_warmup`.
        device: where batches go.
        precision: ``auto`` / ``bf16`` / ``fp32`` (:func:`autocast`).
        accumulation: micro-batches per optimiser step; each loss is divided by it.
        grad_clip: max global gradient norm (0 = no clipping).
        wrapped: the DDP/FSDP-wrapped model (default ``model``).
        clip_params: the parameters whose global norm is clipped, in the order the norm
            sums them (default: the optimiser's, group by group).
        unsharded: parameters whose gradients are averaged over ranks by hand (FSDP).
        world_size: number of ranks.
        after_step: called after every optimiser step (e.g. clamp the logit scale).
        state_params: ``() -> {name: parameter}``, the names the optimiser state is saved and
            restored by (default: ``model.named_parameters()``).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, *, device: torch.device,
                 precision: str = "fp32", accumulation: int = 1, grad_clip: float = 0.0,
                 wrapped: Optional[nn.Module] = None, clip_params: Optional[Iterable[nn.Parameter]] = None,
                 unsharded: Sequence[nn.Parameter] = (), world_size: int = 1,
                 after_step: Optional[Callable[[], None]] = None,
                 state_params: Optional[Callable[[], Mapping[str, nn.Parameter]]] = None):
        if precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be auto, bf16 or fp32, got {precision!r}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.device, self.precision = device, precision
        self.accumulation, self.grad_clip = max(1, int(accumulation)), float(grad_clip or 0)
        self.wrapped = wrapped if wrapped is not None else model
        self.clip_params = (list(clip_params) if clip_params is not None
                            else [p for g in optimizer.param_groups for p in g["params"]])
        self.unsharded, self.world_size = list(unsharded), int(world_size)
        self.after_step = after_step
        self.state_params = state_params or (lambda: dict(model.named_parameters()))
        self.skips = SkipLedger()

    @classmethod
    def from_config(cls, model: nn.Module, loop: LoopConfig, optim: OptimConfig, *, device: torch.device,
                    total_steps: int, budget_s: Optional[float] = None, elapsed: Optional[Callable[[], float]] = None,
                    key: Optional[Callable[[str, nn.Parameter], Hashable]] = None,
                    lr_of: Optional[Dict[Hashable, float]] = None, **kwargs: Any) -> "TrainCore":
        """The core of a run from its shared config sections (:mod:`medfm.train.sections`).

        ``optim`` gives the AdamW optimiser (:func:`build_optimizer`: lr, weight decay, betas; ``key`` /
        ``lr_of`` tag groups with their own learning rate), its schedule
        (:func:`~medfm.train.schedule.cosine_with_warmup` over ``total_steps`` optimiser steps or the time
        budget ``budget_s``: warm-up, ``min_lr_ratio``) and the clipping; ``loop`` the precision and the
        accumulation. ``kwargs`` go to the constructor (``wrapped``, ``clip_params``, ``unsharded``,
        ``world_size``, ``after_step``, ``state_params``).
        """
        optimizer = build_optimizer(model, optim.lr, optim.weight_decay, optim.betas, key=key, lr_of=lr_of)
        scheduler = cosine_with_warmup(optimizer, optim.warmup_steps, total_steps, optim.min_lr_ratio,
                                       budget_s=budget_s, elapsed=elapsed)
        return cls(model, optimizer, scheduler, device=device, precision=loop.precision,
                   accumulation=loop.accumulation, grad_clip=optim.grad_clip or 0.0, **kwargs)

    def step(self, next_batch: Callable[[], Mapping[str, Any]],
             compute: Callable[[nn.Module, Mapping[str, Any]], Mapping[str, Any]]) -> StepResult:
        """Accumulate ``accumulation`` micro-batches, then take one optimiser step.

        Args:
            next_batch: returns the next collated batch (on the CPU; its skips are counted
                and it is moved to :attr:`device` here), or ``None`` at the end of the data: the step
                then uses the micro-batches it has (gradients scaled as for a full step; not under DDP).
            compute: ``(wrapped model, batch) -> {"loss": scalar tensor, ...}``; run under
                autocast; other numeric entries are averaged into :attr:`StepResult.logs`.
        """
        accum, res, n_micro = self.accumulation, StepResult(), 0
        for micro in range(accum):
            batch = next_batch()
            if batch is None:
                if micro == 0 or isinstance(self.wrapped, DDP):
                    raise ValueError("TrainCore.step: no batch for this step" if micro == 0 else
                                     "TrainCore.step: a short accumulation is not supported under DDP")
                break
            n_micro += 1
            self.skips.add_batch(batch)
            batch = move_batch(batch, self.device)
            res.n_samples += len(batch["id"])
            sync = micro == accum - 1 or not isinstance(self.wrapped, DDP)
            ctx = contextlib.nullcontext() if sync else self.wrapped.no_sync()
            with ctx, autocast(self.device, self.precision):
                out = compute(self.wrapped, batch)
                loss = out["loss"] / accum
            with ctx:
                loss.backward()
            for k, v in out.items():
                val = float(v.detach()) if isinstance(v, torch.Tensor) else v
                if isinstance(val, (int, float)):
                    res.logs[k] = res.logs.get(k, 0.0) + float(val) / accum
        if n_micro < accum:  # the data ended inside the step: the mean over the micro-batches it had
            scale = accum / n_micro
            res.logs = {k: v * scale for k, v in res.logs.items()}
            for g in self.optimizer.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.grad.mul_(scale)
        for p in self.unsharded:
            if p.grad is not None:
                p.grad.div_(self.world_size)
                torch.distributed.all_reduce(p.grad)
        if self.grad_clip > 0:
            res.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.clip_params, self.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.after_step is not None:
            self.after_step()
        return res

    def restore(self, state: Mapping[str, Any], rank: int, world_size: int, source: Any = None) -> None:
        """Optimiser, schedule and this rank's RNG from a training checkpoint's state
        (:func:`medfm.train.resume_checkpoint.load_trainer_state`); ``source`` names it in messages."""
        if self.unsharded:  # FSDP: the saved state is the full (unsharded) one
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True, strict=False))
        elif state["optimizer"].get("format") == BY_NAME:
            load_optimizer_state_by_name(self.state_params(), self.optimizer, state["optimizer"], source=source)
        else:  # checkpoints of earlier medfm versions stored the state by position
            log.warning("%s: optimizer state stored by position (older medfm); restoring it by position", source)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        if len(rngs) == world_size:
            set_rng_state(rngs[rank])
        elif rank == 0:
            log.warning("checkpoint has RNG states of %d ranks, this run has %d: RNG not restored",
                        len(rngs), world_size)


class MetricsLog:
    """JSON lines at ``path`` (one flushed record per line) + optional TensorBoard scalars.

    Args:
        path: the ``.jsonl`` file; ``mode`` ``"a"`` (a resumed run appends) or ``"w"``.
        tensorboard: folder of a TensorBoard event file (``None`` = none).
        purge_step: TensorBoard drops scalars logged at or after this step by an earlier,
            interrupted run.
        prefix: TensorBoard tag prefix (``train/loss``).
    """

    def __init__(self, path: Path, mode: str = "a", tensorboard: Optional[Path] = None,
                 purge_step: Optional[int] = None, prefix: str = "train"):
        self.fh = open(path, mode, encoding="utf-8")
        self.writer, self.prefix = None, prefix
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter  # deferred: tensorboard is slow to import

            self.writer = SummaryWriter(str(tensorboard), purge_step=purge_step)

    def write(self, record: Mapping[str, Any], step: Optional[int] = None) -> None:
        """Append ``record``; with ``step``, its numbers also go to TensorBoard (``step`` key excluded)."""
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        if self.writer is not None and step is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.writer.add_scalar(f"{self.prefix}/{k}", v, step)

    def close(self) -> None:
        self.fh.close()
        if self.writer is not None:
            self.writer.close()


def progress(total: int, desc: str, enabled: bool, initial: int = 0) -> tqdm:
    """The progress bar of a run (disabled off rank 0 or with ``progress: false``)."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True)


__all__ = ["TrainCore", "StepResult", "SkipCounter", "MetricsLog", "autocast", "build_optimizer", "progress",
           "wrap_model", "PRECISIONS"]
