"""One trainer for CPU, one GPU or many (``torchrun``): pretraining on a manifest.

The optimisation step — bf16 autocast where supported, gradient accumulation, AdamW groups,
gradient clipping, counted skips, JSONL + TensorBoard logging, DDP/FSDP wrapping, the
optimiser/schedule/RNG restore — is the training core shared with fine-tuning
(:mod:`medfm.train.loop`), built from the shared config sections (:meth:`TrainCore.from_config`).
What a step runs is the task module (:mod:`medfm.train.task`: the model and its objectives, so an
objective may own parameters). This module keeps the run: set-up from the typed
:class:`~medfm.train.run_config.RunConfig` (building: :mod:`medfm.train.pretrain_build`), the
step loop with its time budget, and the final ``save_pretrained``; checkpoints and exact resume
are :mod:`medfm.train.pretrain_state`.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..checkpoint import RUN_CONFIG
from ..card import write_model_card
from ..data import read_manifest, select_split
from ..data.dataset import manifest_loader
from ..data.skips import SkipLedger
from ..data.shard_stream import shard_loader
from ..data.shards import fit_frame, open_index
from ..errors import ConfigError, UnusableDataError
from ..io import write_json
from ..limits import limits
from ..models import MultiModalModel
from ..models.init import write_init_report
from ..objectives import build_objective
from ..paths import config_path, optional_config_path
from ..schema import to_dict
from . import pretrain_build as build
from .distributed import DistInfo, all_reduce_sum, gather_objects, init_distributed
from .loop import MetricsLog, TrainCore, progress, wrap_model
from .pretrain_state import RunState
from .resume_checkpoint import checkpoint_candidates, clean_temporaries
from .run_config import RunConfig, check_accelerator, parse_run_config
from .run_guard import RunLock, RunStopped, StopSignals, stopped_message
from .task import PretrainTask

log = logging.getLogger("medfm.train")

def resolve_run_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A run config validated (:func:`medfm.train.run_config.parse_run_config`: types, ranges, unknown
    keys; the message names the key path), defaults filled in, as plain containers."""
    return to_dict(parse_run_config(config))


class Trainer(RunState):
    """Pretrain a :class:`MultiModalModel` from a run config (see ``configs/*.yaml``).

    Args:
        cfg: the typed run config (:func:`~medfm.train.run_config.parse_run_config`), or a mapping with
            sections ``model``, ``data``, ``objectives``, ``optim``, ``train`` that is validated here
            (the Python API's edge).
        out_dir: where the final model (``config.json`` + ``model.safetensors``),
            ``checkpoints/``, ``metrics.jsonl`` and ``tb/`` go.
        config_dir: the config file's folder: relative ``data.manifest`` / ``data.root`` resolve
            against it (:mod:`medfm.paths`; the working directory when ``None``).
        started_at: the ``time.monotonic()`` reading ``train.max_minutes`` counts from (the CLI passes
            its process start); default: now.
        allow_slow: run a recipe with ``requires.accelerator: gpu`` on a machine without one.

    A run that learned from nothing (no usable sample, an objective with nothing to work on over the
    whole run, more unusable rows than ``data.max_skip_fraction``) raises
    :class:`~medfm.errors.UnusableDataError` from :meth:`fit` and leaves no final model in ``out_dir``
    (no ``config.json``/``model.safetensors``/card there): ``failed.json`` holds the summary, and
    ``checkpoints/`` the periodic checkpoints written before the end, for diagnosis.
    """

    def __init__(self, cfg: Union[RunConfig, Mapping[str, Any]], out_dir: Path, config_dir: Optional[Path] = None,
                 started_at: Optional[float] = None, allow_slow: bool = False):
        self.started_at = time.monotonic() if started_at is None else float(started_at)
        self.cfg: RunConfig = cfg if isinstance(cfg, RunConfig) else parse_run_config(cfg)
        self.out = Path(out_dir)
        self.config_dir = Path(config_dir) if config_dir is not None else None
        tcfg, dcfg = self.cfg.train, self.cfg.data
        self.dist: DistInfo = init_distributed(tcfg.device)
        check_accelerator(self.cfg.requires, tcfg.device, cuda=self.dist.device.type == "cuda",
                          allow_slow=allow_slow, recipe=self.cfg.name)
        if tcfg.num_threads:  # tiny models on a CPU often run faster on one thread
            torch.set_num_threads(tcfg.num_threads)
        torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
        self.model_config = build.run_model_config(self.cfg, self.config_dir)  # checked before any data is read
        self.shards = None
        if dcfg.shards:  # streaming from `medfm shard` output (medfm.data.shard_stream)
            self.shards = open_index(optional_config_path(dcfg.shards, self.config_dir, "data.shards"))
        manifest = (config_path(dcfg.manifest, self.config_dir, "data.manifest") if dcfg.manifest
                    else Path(self.shards.url("index.json")))
        df = read_manifest(manifest) if dcfg.manifest else fit_frame(self.shards)
        # the "train" split when the manifest has a split column; every row otherwise
        self.df = select_split(df, dcfg.split) if dcfg.split and "split" in df.columns else df
        if len(self.df) == 0:
            raise ConfigError(f"{manifest}: no rows in split {dcfg.split!r}")
        self.ckpt_root = self.out / "checkpoints"
        self.resume_from = None
        # the run owns OUT from here (released at the end of fit, or when building fails)
        self._lock = RunLock(self.out).acquire() if self.dist.is_main else None
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release ``OUT``'s run lock (done by :meth:`fit`; for a trainer that is not fitted)."""
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    def _setup(self) -> None:
        tcfg = self.cfg.train
        self.model = self._build_model()
        self.model.to(self.dist.device)
        if tcfg.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        torch.manual_seed(tcfg.seed + self.dist.rank)  # per-rank randomness (MAE masks) from here on
        # model + objectives: DDP/FSDP wrap it, the optimizer sees it, checkpoints save both
        self.task = PretrainTask(self.model, build_objective(self.cfg.objectives)).to(self.dist.device)
        self.objective = self.task.objective
        if self.shards is not None:  # the shards hold the samples (shard with --split train)
            self.dataset = build.shard_stream(self.cfg, self.shards, self.model.adapters, self.dist.rank,
                                              self.dist.world_size)
        else:
            self.dataset, self.sampler = build.manifest_dataset(self.cfg, self.df, self.model.adapters,
                                                                self.config_dir, self.dist.rank, self.dist.world_size)
        # FSDP cannot shard the scalar logit scale/bias: kept whole, gradients averaged by TrainCore
        self._unsharded = ([self.model.logit_scale, self.model.logit_bias]
                           if self.dist.distributed and tcfg.strategy == "fsdp" else [])
        self.wrapped = wrap_model(self.task, self.dist, tcfg.strategy, self._unsharded)
        # with train.max_minutes the schedule follows the time budget (warm-up and decay fitted to it); the
        # budget covers the whole command: its clock starts at self.started_at, the final save is reserved
        self.train_seconds, self._fit_t0, self.command_seconds = 0.0, None, 0.0
        self._save_reserve = self._save_estimate()
        budget = max(1.0, 60.0 * tcfg.max_minutes - self._save_reserve) if tcfg.max_minutes is not None else None
        # pretraining clips the norm of every parameter (model, then objectives) in registration order
        self.core = TrainCore.from_config(self.task, tcfg, self.cfg.optim, device=self.dist.device,
                                          total_steps=tcfg.max_steps, budget_s=budget, elapsed=self.elapsed_seconds,
                                          wrapped=self.wrapped, clip_params=self.task.parameters(),
                                          unsharded=self._unsharded, world_size=self.dist.world_size,
                                          after_step=self._clamp_logit_scale, state_params=self.task.state_parameters)
        self.optimizer, self.scheduler = self.core.optimizer, self.core.scheduler
        self.step, self.epoch, self.micro_in_epoch = 0, 0, 0

    @property
    def n_skipped(self) -> int:
        return self.core.skips.n_skipped

    def _clamp_logit_scale(self) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))

    # ----------------------------------------------------------- building
    def _build_model(self) -> MultiModalModel:
        """The newest intact checkpoint's model (``train.resume``), else a fresh one; removes what a killed
        run left half-written first."""
        if self.dist.is_main:
            removed = clean_temporaries(self.ckpt_root)
            # the final save_pretrained(OUT) stages next to OUT
            for p in self.out.parent.glob(f".{self.out.name}.staging*") if self.out.parent.is_dir() else ():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(str(p))
            if removed:
                log.warning("removed half-written checkpoint files of an interrupted run: %s", ", ".join(removed))
        if self.dist.distributed:
            torch.distributed.barrier()
        if self.cfg.train.resume:
            model = self._resumable_model()
            if model is not None:
                return model
        return build.fresh_model(self.cfg, self.model_config, self.df, self.config_dir, self.dist.is_main)

    def _loader(self) -> Iterator[Dict[str, Any]]:
        bs, nw = self.cfg.data.batch_size, self.cfg.data.num_workers
        if self.shards is not None:
            self.dataset.set_epoch(self.epoch, start=self.micro_in_epoch)
            return iter(shard_loader(self.dataset, pin_memory=self.dist.device.type == "cuda"))
        self.sampler.set_epoch(self.epoch, start=self.micro_in_epoch * bs)
        self.dataset.set_epoch(self.epoch)
        loader = manifest_loader(self.dataset, batch_size=bs, sampler=self.sampler, num_workers=nw,
                                 adapters=self.model.adapters, drop_last=len(self.sampler) >= bs,
                                 pin_memory=self.dist.device.type == "cuda", prefetch_factor=4,
                                 seed=self.cfg.train.seed + self.epoch)  # the loader's own generator (global RNG untouched)
        return iter(loader)

    def _check_learned(self) -> None:
        """Fail the run (:class:`~medfm.errors.UnusableDataError`, every rank) when it learned from nothing;
        the summary goes to ``OUT/failed.json``. Collective."""
        ledger = self.core.skips
        parts = gather_objects(ledger.state_dict())
        if len(parts) > 1:  # every rank's rows; the objective sums are already means over ranks
            ledger = SkipLedger(warn=False)
            ledger.load_state_dict(parts[0])
            for other in parts[1:]:
                more = SkipLedger(warn=False)
                more.load_state_dict(other)
                ledger.merge(more)
        source = self.cfg.data.manifest or self.cfg.data.shards
        try:
            ledger.check(what=f"this pretraining run ({self.step} steps)", knob="--set data.max_skip_fraction=F",
                         max_skip_fraction=self.cfg.data.max_skip_fraction, source=source)
        except UnusableDataError as e:
            if any(checkpoint_candidates(self.ckpt_root)):  # a rerun would resume from them, counts included
                e.details += ("\n    - after fixing the data start afresh with --no-resume (OUT/checkpoints keeps "
                              "this run's checkpoints for diagnosis)")
            if self.dist.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                write_json(self.out / "failed.json", {"steps": self.step, **e.record, "summary": e.details})
            raise
        if self.dist.is_main:
            (self.out / "failed.json").unlink(missing_ok=True)

    # -------------------------------------------------------------- loop
    def fit(self) -> Dict[str, Any]:
        """Train to ``train.max_steps``; returns the last logged metrics.

        ``data.limits`` (see :mod:`medfm.limits`) apply to every read of this run.
        """
        try:
            with limits(**self.cfg.data.limits.as_kwargs()), StopSignals() as stop:
                self._stop = stop
                return self._fit()
        finally:
            self._stop = None
            self.close()

    def _step_record(self, res, dt: float, data_wait: float) -> Dict[str, Any]:
        """The ``metrics.jsonl`` record of the step just taken (means over ranks; collective)."""
        total_samples = all_reduce_sum(res.n_samples)
        logs = res.logs
        if self.dist.distributed:  # report the mean over ranks, not rank 0's share
            logs = {k: all_reduce_sum(v) / self.dist.world_size for k, v in sorted(logs.items())}
        skips = self.core.skips
        return {"step": self.step, "epoch": self.epoch, "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": res.grad_norm, "samples_per_s": total_samples / max(dt, 1e-9),
                "data_wait_frac": data_wait / max(dt, 1e-9), "n_skipped": skips.n_skipped,
                "n_modality_errors": skips.n_errors, "n_flagged": skips.n_flagged, **logs}

    def _save_final(self) -> None:
        """A last training checkpoint, then the model with its training record and card in OUT."""
        final = self._checkpoint()
        if self.dist.is_main:
            final.init_sources = getattr(self.model, "init_sources", {})
            final.save_pretrained(self.out, extra={"training": {
                "steps": self.step, "n_skipped": self.n_skipped, "objectives": self.cfg.objectives,
                "manifest": {"sha256": self.df.attrs.get("sha256"), "n_rows": len(self.df)}},
                "data_columns": dict(self.cfg.data.columns)})
            self.task.save_objectives(self.out, getattr(self, "_final_objectives", None))
            write_model_card(self.out)

    def _fit(self) -> Dict[str, Any]:
        tcfg = self.cfg.train
        if self.resume_from is not None:
            self._restore()
        max_steps = tcfg.max_steps
        metrics = None
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / RUN_CONFIG, self.portable_config())
            write_init_report(self.out, self.model)
            # also when no intact checkpoint exists (killed before or during the first write): a fresh
            # start must not keep the steps the killed run logged
            self._trim_metrics()
            # purge_step: scalars logged after the checkpoint (or, with none, at all) by a killed run are dropped
            metrics = MetricsLog(self.out / "metrics.jsonl", "a", purge_step=self.step + 1,
                                 tensorboard=self.out / "tb" if tcfg.tensorboard else None)
        bar = progress(max_steps, "pretrain", self.dist.is_main and tcfg.progress, initial=self.step)
        loader = {"it": self._loader(), "wait": 0.0}

        def next_batch() -> Dict[str, Any]:
            t0 = time.perf_counter()
            batch = next(loader["it"], None)
            if batch is None:
                self.epoch += 1
                self.micro_in_epoch = 0
                loader["it"] = self._loader()
                batch = next(loader["it"], None)
                if batch is None:
                    raise ConfigError("the training split yields no batch (is it empty?)")
            self.micro_in_epoch += 1
            loader["wait"] += time.perf_counter() - t0
            return batch

        def run_objective(task: nn.Module, batch: Dict[str, Any]) -> Dict[str, Any]:
            return task(batch, zero=not batch["id"])  # an empty batch: every parameter takes part, zero gradient

        last: Dict[str, Any] = {}
        self.task.train()
        # train.max_minutes bounds the whole command (from self.started_at, time before a resume included);
        # the schedule runs on the training clock and ends where the command's time runs out
        self._fit_t0 = time.monotonic()
        budget = 60 * tcfg.max_minutes if tcfg.max_minutes is not None else None
        used, step_s = 0.0, 0.0
        # a whole pass over the rows in this process: the epoch rolled over twice, or once from its start
        first_epoch = self.epoch + (1 if self.micro_in_epoch else 0)
        try:
            while self.step < max_steps:
                t_step = time.perf_counter()
                loader["wait"] = 0.0
                if budget is not None:
                    self._fit_budget(budget, step_s)
                res = self.core.step(next_batch, run_objective)
                self.step += 1
                step_s = time.perf_counter() - t_step
                last = self._step_record(res, step_s, loader["wait"])
                self.core.skips.add_objective_counts(last)
                used += all_reduce_sum(res.n_samples)  # rows used, all ranks
                if used == 0 and self.epoch > first_epoch:
                    if self.dist.is_main:  # a whole pass over the data gave nothing: no point in going on
                        log.warning("a whole pass over the training rows gave no usable sample; stopping at "
                                    "step %d", self.step)
                    break
                if self.dist.is_main:
                    if self.step % tcfg.log_every == 0 or self.step == max_steps:
                        metrics.write(last, step=self.step)
                    bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}",
                                    sps=f"{last['samples_per_s']:.1f}", skipped=self.n_skipped)
                    bar.update(1)
                if budget is not None and self._past_budget():
                    if self.dist.is_main:
                        log.info("train.max_minutes reached at step %d (the next step and the final save would "
                                 "pass it)", self.step)
                    break
                every = tcfg.checkpoint_every
                saved = bool(every and self.step % every == 0 and self.step < max_steps)
                if saved:
                    self._checkpoint()
                if self.step < max_steps and self._stop_requested():
                    if not saved:
                        self._checkpoint()
                    raise RunStopped(stopped_message(self.step))
            self._check_learned()
            self._save_final()
        finally:
            self.train_seconds, self._fit_t0 = self.elapsed_seconds(), None
            bar.close()
            if metrics is not None:
                metrics.close()
        return last
