"""One trainer for CPU, one GPU or many (``torchrun``): pretraining on a manifest.

The optimisation step — bf16 autocast where supported, gradient accumulation, AdamW groups,
gradient clipping, counted skips, JSONL + TensorBoard logging, DDP/FSDP wrapping, the
optimiser/schedule/RNG restore — is the training core shared with fine-tuning
(:mod:`medfm.train.loop`). This module keeps what is particular to pretraining: building the
model and its adapters from the manifest, the objectives, the step/time-budget schedule
(:mod:`medfm.train.schedule`), atomic checkpoints every N steps with the data position and
exact resume (:mod:`medfm.train.resume_checkpoint`), and the final ``save_pretrained``.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..data.manifest import is_missing
from ..data import ManifestDataset, MultiModalCollate, read_manifest, select_split
from ..data.skips import SkipLedger
from ..errors import CheckpointError, ConfigError, UnusableDataError
from ..io import atomic_write_text, deep_merge, portable_paths, write_json
from ..limits import limits
from ..models import MultiModalModel, create_model, resolve_config
from ..card import write_model_card
from ..models.init import write_init_report
from ..objectives import build_objective
from ..modality import fit_on_cohort
from ..registry import get_modality
from ..schema import defaults as schema_defaults
from .resume_checkpoint import (checkpoint_candidates, clean_temporaries, first_difference, load_trainer_state,
                                optimizer_state_by_name, read_run_config, rng_state, save_checkpoint)
from .distributed import DistInfo, all_reduce_sum, gather_objects, init_distributed
from .loop import MetricsLog, TrainCore, build_optimizer, progress, wrap_model
from ..paths import config_path, optional_config_path
from .run_config import RunConfig, check_accelerator, validate_run_config
from .run_guard import RunLock, RunStopped, StopSignals, resume_difference, stopped_message
from .sampler import ResumableSampler
from .schedule import cosine_with_warmup

log = logging.getLogger("medfm.train")

#: the run config's defaults: the field defaults of :class:`medfm.train.run_config.RunConfig`
DEFAULT_RUN: Dict[str, Any] = schema_defaults(RunConfig)


def resolve_run_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """Defaults merged with ``config``, validated against :class:`medfm.train.run_config.RunConfig`
    (types, ranges, unknown keys; the message names the key path) before anything is read."""
    if not isinstance(config, dict):
        raise ConfigError(f"a run config must be a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - set(DEFAULT_RUN) - {"name", "description"})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config section; known: {', '.join(sorted(DEFAULT_RUN))}")
    for section in ("data", "optim", "train"):
        if section in config and not isinstance(config[section], dict):
            raise ConfigError(f"{section}: expected a mapping, got {config[section]!r}")
    run = deep_merge(DEFAULT_RUN, config)
    if isinstance(config.get("objectives"), list):
        run["objectives"] = copy.deepcopy(config["objectives"])
    return validate_run_config(run)


class _ZeroObjective(nn.Module):
    """Used when a rank's batch is empty: every parameter takes part, with zero gradient."""

    def forward(self, model, batch, cache):
        return {"loss": sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0}


class Trainer:
    """Pretrain a :class:`MultiModalModel` from a run config (see ``configs/*.yaml``).

    Args:
        config: run config with sections ``model``, ``data``, ``objectives``, ``optim``, ``train``.
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

    def __init__(self, config: Dict[str, Any], out_dir: Path, config_dir: Optional[Path] = None,
                 started_at: Optional[float] = None, allow_slow: bool = False):
        self.started_at = time.monotonic() if started_at is None else float(started_at)
        self.config = resolve_run_config(config)
        self.out = Path(out_dir)
        self.config_dir = Path(config_dir) if config_dir is not None else None
        self.dist: DistInfo = init_distributed(self.config["train"]["device"])
        tcfg, dcfg = self.config["train"], self.config["data"]
        check_accelerator(self.config.get("requires") or {}, tcfg["device"], cuda=self.dist.device.type == "cuda",
                          allow_slow=allow_slow, recipe=self.config.get("name"))
        if tcfg.get("num_threads"):  # tiny models on a CPU often run faster on one thread
            torch.set_num_threads(int(tcfg["num_threads"]))
        torch.manual_seed(int(tcfg["seed"]))  # identical initial weights on every rank
        self.model_config = self._resolve_model_config()  # checked before any data is read
        self.shards = None
        if dcfg.get("shards"):  # streaming from `medfm shard` output (medfm.data.shard_stream)
            from ..data.shards import fit_frame, open_index  # deferred: fsspec, only for streamed shards

            self.shards = open_index(optional_config_path(dcfg["shards"], config_dir, "data.shards"))
        manifest = (config_path(dcfg["manifest"], config_dir, "data.manifest") if dcfg["manifest"]
                    else Path(self.shards.url("index.json")))
        df = read_manifest(manifest) if dcfg["manifest"] else fit_frame(self.shards)
        # the "train" split when the manifest has a split column; every row otherwise
        self.df = select_split(df, dcfg["split"]) if dcfg.get("split") and "split" in df.columns else df
        if len(self.df) == 0:
            raise ConfigError(f"{manifest}: no rows in split {dcfg.get('split')!r}")
        self.ckpt_root = self.out / "checkpoints"
        self.resume_from = None
        # the run owns OUT from here (released at the end of fit, or when building fails)
        self._lock = RunLock(self.out).acquire() if self.dist.is_main else None
        try:
            self._setup(tcfg, dcfg)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release ``OUT``'s run lock (done by :meth:`fit`; for a trainer that is not fitted)."""
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    def _setup(self, tcfg: Dict[str, Any], dcfg: Dict[str, Any]) -> None:
        self.model = self._build_model()
        self.model.to(self.dist.device)
        if tcfg["grad_checkpointing"]:
            self.model.set_grad_checkpointing(True)
        torch.manual_seed(int(tcfg["seed"]) + self.dist.rank)  # per-rank randomness (MAE masks) from here on
        self.objective = build_objective(self.config["objectives"])
        if self.shards is not None:  # the shards hold the samples (shard with --split train)
            from ..data.shard_stream import ShardStream  # deferred: fsspec, only for streamed shards
            from ..data.shards import check_adapters

            check_adapters(self.shards, self.model.adapters)
            self.dataset = ShardStream(self.shards, self.model.adapters, batch_size=int(dcfg["batch_size"]),
                                       seed=int(tcfg["seed"]), shuffle_buffer=int(dcfg["shuffle_buffer"]),
                                       label_columns=dcfg.get("label_columns") or (), rank=self.dist.rank,
                                       world_size=self.dist.world_size, num_workers=int(dcfg.get("num_workers") or 0))
        else:
            self.dataset = ManifestDataset(self.df, self.model.adapters, train=True,
                                           label_columns=dcfg.get("label_columns") or (), columns=dcfg.get("columns"),
                                           cache_dir=optional_config_path(dcfg.get("cache_dir"), self.config_dir,
                                                                          "data.cache_dir"),
                                           seed=int(tcfg["seed"]),
                                           root=self._data_root(), confine=bool(dcfg.get("confine_paths", True)))
            self.dataset.warn = False  # the core's SkipLedger warns once per sample, however many epochs
            self.sampler = ResumableSampler(len(self.dataset), shuffle=True, seed=int(tcfg["seed"]),
                                            rank=self.dist.rank, world_size=self.dist.world_size)
        ocfg = self.config["optim"]
        # FSDP cannot shard the scalar logit scale/bias: kept whole, gradients averaged by TrainCore
        self._unsharded = ([self.model.logit_scale, self.model.logit_bias]
                           if self.dist.distributed and tcfg["strategy"] == "fsdp" else [])
        self.wrapped = wrap_model(self.model, self.dist, tcfg["strategy"], self._unsharded)
        self.optimizer = build_optimizer(self.model, float(ocfg["lr"]), float(ocfg["weight_decay"]), ocfg["betas"])
        # with train.max_minutes the schedule follows the time budget (warm-up and decay fitted to it); the
        # budget covers the whole command: its clock starts at self.started_at, the final save is reserved
        self.train_seconds, self._fit_t0, self.command_seconds = 0.0, None, 0.0
        self._save_reserve = self._save_estimate()
        budget = (max(1.0, 60.0 * float(tcfg["max_minutes"]) - self._save_reserve)
                  if tcfg.get("max_minutes") is not None else None)
        self.scheduler = cosine_with_warmup(self.optimizer, int(ocfg["warmup_steps"]), int(tcfg["max_steps"]),
                                            float(ocfg.get("min_lr_ratio", 0.0)), budget_s=budget,
                                            elapsed=self.elapsed_seconds)
        # pretraining clips the norm of every model parameter in registration order
        self.core = TrainCore(self.model, self.optimizer, self.scheduler, device=self.dist.device,
                              precision=tcfg["precision"], accumulation=int(tcfg["accumulation"]),
                              grad_clip=float(ocfg.get("grad_clip") or 0), wrapped=self.wrapped,
                              clip_params=self.model.parameters(), unsharded=self._unsharded,
                              world_size=self.dist.world_size, after_step=self._clamp_logit_scale)
        self.step, self.epoch, self.micro_in_epoch = 0, 0, 0

    @property
    def n_skipped(self) -> int:
        return self.core.skips.n_skipped

    def _save_estimate(self) -> float:
        """Seconds the final save is expected to take (weights + optimizer state at 100 MB/s, ≥ 1 s);
        replaced by the measured time of a checkpoint once one was written."""
        n_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return max(0.1, 4 * n_bytes / 100e6)

    def _clamp_logit_scale(self) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))

    # ----------------------------------------------------------- building
    def _resolve_model_config(self) -> Dict[str, Any]:
        """The run's ``model`` section resolved and checked (:func:`medfm.models.resolve_config`); a model
        file named relative to the run config is looked up beside it, as are relative ``init`` paths."""
        model_cfg = self.config["model"]
        if isinstance(model_cfg, str) and self.config_dir is not None and (self.config_dir / model_cfg).is_file():
            model_cfg = str(self.config_dir / model_cfg)
        return resolve_config(model_cfg, base_dir=self.config_dir)

    def _build_model(self) -> MultiModalModel:
        tcfg = self.config["train"]
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
        if tcfg.get("resume", True):
            model = self._resumable_model()
            if model is not None:
                return model
        mcfg = copy.deepcopy(self.model_config)
        adapters = {}
        # sorted: the order a checkpoint's config.json restores, so a resumed model is the same
        # module tree (and draws MAE masks in the same order) whatever the order in the YAML
        for name, options in sorted((mcfg.get("modalities") or {}).items()):
            adapter = get_modality(name, **(options or {}))
            column = (self.config["data"].get("columns") or {}).get(name, name)
            rows = self.df.to_dict("records")
            present = [(adapter.source_from_row(r, column), r.get("patient_id")) for r in rows]
            present = [(v, p) for v, p in present if not is_missing(v)]
            # patient ids: a learnt vocabulary keeps only words of several patients (no identifiers)
            fit_on_cohort(adapter, [v for v, _ in present], [p for _, p in present])
            adapters[name] = adapter
        model = create_model(mcfg, adapters=adapters)
        if tcfg.get("init_from"):
            self._init_from(model, config_path(tcfg["init_from"], self.config_dir, "train.init_from"))
        return model

    def _data_root(self) -> Optional[Path]:
        """``data.root`` by the path rule (:mod:`medfm.paths`)."""
        root = self.config["data"].get("root")
        return config_path(root, self.config_dir, "data.root") if root else None

    def _resumable_model(self) -> Optional[MultiModalModel]:
        """The model of the newest intact checkpoint (``None`` when there is none).

        A checkpoint whose weights or training state cannot be read is skipped with a warning
        naming it; one made from another model config is refused (:class:`CheckpointError`).
        """
        for ckpt in checkpoint_candidates(self.ckpt_root):
            try:
                model = MultiModalModel.from_pretrained(ckpt)
                state = load_trainer_state(ckpt)
                saved_model_cfg = read_run_config(ckpt).get("model")
            except Exception as e:  # a torn file of a killed run: fall back to an older checkpoint
                reason = " ".join(str(e).split())[:300]
                if self.dist.is_main:
                    log.warning("checkpoint %s is unreadable (%s: %s); trying an older one",
                                ckpt, type(e).__name__, reason)
                continue
            own = json.loads(json.dumps(self.portable_config()["model"], default=str))
            diff = first_difference(saved_model_cfg, own, "model")
            if diff is not None:
                raise CheckpointError(f"{ckpt}: made with another model config (first difference at {diff}); "
                                      "resume with the same model config, or start afresh (--no-resume or a new --out)")
            saved = {**(read_run_config(ckpt) or {}), "data_sha256": state["position"].get("manifest_sha256")}
            change = resume_difference(saved, {**self.config, "data_sha256": self.df.attrs.get("sha256")})
            if change is not None:
                if not self.config["train"].get("force_resume"):
                    raise CheckpointError(f"{ckpt}: resuming would change the data order or the objective "
                                          f"(first difference {change}); resume with the same settings, start "
                                          "afresh (--no-resume or a new --out), or force it (--force-resume)")
                if self.dist.is_main:
                    log.warning("resuming from %s with a changed setting (%s): forced", ckpt, change)
            self.resume_from, self._resume_state = ckpt, state
            if self.dist.is_main:
                log.info("resuming from %s (train.resume=false or --no-resume starts afresh)", ckpt)
            return model
        return None

    def _init_from(self, model: MultiModalModel, directory: Path) -> None:
        """Start from the weights of another checkpoint wherever names and shapes match (logged)."""
        source = MultiModalModel.from_pretrained(directory).state_dict()
        own = model.state_dict()
        take = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(take, strict=False)
        if self.dist.is_main:
            log.info("initialised %d/%d tensors from %s (%d of the source not used, %d new)", len(take), len(own),
                     directory, len(source) - len(take), len(own) - len(take))

    def _loader(self) -> Iterator[Dict[str, Any]]:
        dcfg = self.config["data"]
        bs = int(dcfg["batch_size"])
        if self.shards is not None:
            from ..data.shard_stream import shard_loader  # deferred: fsspec, only for streamed shards

            self.dataset.set_epoch(self.epoch, start=self.micro_in_epoch)
            return iter(shard_loader(self.dataset, pin_memory=self.dist.device.type == "cuda"))
        self.sampler.set_epoch(self.epoch, start=self.micro_in_epoch * bs)
        self.dataset.set_epoch(self.epoch)
        nw = int(dcfg.get("num_workers") or 0)
        loader = DataLoader(self.dataset, batch_size=bs, sampler=self.sampler,
                            collate_fn=MultiModalCollate(self.model.adapters), num_workers=nw,
                            drop_last=len(self.sampler) >= bs, pin_memory=self.dist.device.type == "cuda",
                            persistent_workers=False, prefetch_factor=4 if nw else None,
                            # own generator: creating a loader must not consume the global RNG
                            # (MAE masks use it; resume restores it exactly)
                            generator=torch.Generator().manual_seed(int(self.config["train"]["seed"]) + self.epoch))
        return iter(loader)

    # ------------------------------------------------------------ resume
    def _restore(self) -> None:
        state = getattr(self, "_resume_state", None) or load_trainer_state(self.resume_from)
        self.core.restore(state, self.dist.rank, self.dist.world_size, source=self.resume_from)
        # the config's horizon wins over the saved one (e.g. a resume with a larger max_steps)
        sched, tcfg = self.scheduler, self.config["train"]
        sched.warmup_steps, sched.total_steps = int(self.config["optim"]["warmup_steps"]), max(1, int(tcfg["max_steps"]))
        sched.budget_s = 60.0 * float(tcfg["max_minutes"]) if tcfg.get("max_minutes") is not None else None
        sched.set_clock(self.elapsed_seconds)
        self.train_seconds = float(state["position"].get("train_seconds", 0.0))
        self.command_seconds = float(state["position"].get("command_seconds", self.train_seconds))
        self.step = int(state["step"])
        self.epoch = int(state["position"]["epoch"])
        self.micro_in_epoch = int(state["position"]["micro_in_epoch"])
        self.core.skips.n_skipped = int(state["position"].get("n_skipped", 0))
        if state["position"].get("skips"):
            self.core.skips.load_state_dict(state["position"]["skips"])
        if self.dist.is_main:
            log.info("resumed from %s at step %d", self.resume_from, self.step)

    def _trim_metrics(self) -> None:
        """Drop ``metrics.jsonl`` lines past the resumed step (and a torn last line), so a curve
        is never drawn twice; the dropped steps are written again as the run repeats them."""
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return
        kept, dropped = [], 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                keep = int(json.loads(line)["step"]) <= self.step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            atomic_write_text(path, "".join(x + "\n" for x in kept))
            log.info("metrics.jsonl: dropped %d line(s) after step %d (written before the interruption)",
                     dropped, self.step)

    def _full_model_and_optimizer(self):
        """A plain (unsharded) model and optimizer state to save; collective under FSDP."""
        if not getattr(self, "_unsharded", None):
            return self.model, optimizer_state_by_name(self.model, self.optimizer)
        # deferred: torch.distributed.checkpoint is only needed under FSDP
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=opts)
        if not self.dist.is_main:
            return None, None
        plain = MultiModalModel(self.model.config, self.model.adapters)
        plain.load_state_dict(model_sd)
        return plain, optim_sd

    def _checkpoint(self) -> None:
        t0 = time.monotonic()
        rngs = gather_objects(rng_state())
        model, optim_state = self._full_model_and_optimizer()
        if self.dist.is_main:
            position = {"epoch": self.epoch, "micro_in_epoch": self.micro_in_epoch, "n_skipped": self.n_skipped,
                        "train_seconds": self.elapsed_seconds(), "command_seconds": self.command_elapsed(),
                        "skips": self.core.skips.state_dict(), "manifest_sha256": self.df.attrs.get("sha256")}
            save_checkpoint(self.ckpt_root, self.step, model, optim_state, self.scheduler, position, rngs,
                            self.portable_config(), keep=int(self.config["train"]["keep_checkpoints"]))
        # the final save writes a checkpoint and the model: reserve about twice a checkpoint's time
        self._save_reserve = max(0.1, 2.0 * (time.monotonic() - t0))
        return model

    def portable_config(self) -> Dict[str, Any]:
        """The run config as written to disk: absolute paths relative to OUT (:func:`medfm.io.portable_paths`)."""
        return portable_paths(self.config, self.out)

    def elapsed_seconds(self) -> float:
        """Training seconds of this run so far, time before a resume included (the schedule's clock)."""
        return self.train_seconds + (time.monotonic() - self._fit_t0 if self._fit_t0 is not None else 0.0)

    def command_elapsed(self) -> float:
        """Seconds of the whole command so far (from :attr:`started_at`: start-up and data reading count),
        earlier commands of a resumed run included: what ``train.max_minutes`` bounds."""
        return self.command_seconds + time.monotonic() - self.started_at

    def _fit_budget(self, budget_s: float, next_step: float) -> None:
        """Fit the schedule's (training-clock) budget to where training must end: before another step of
        ``next_step`` seconds and the final save would pass ``budget_s`` seconds of the whole command."""
        left = budget_s - self.command_elapsed() - self._save_reserve - next_step
        self.scheduler.budget_s = max(1e-3, self.elapsed_seconds() + left)

    def _past_budget(self) -> bool:
        """Whether the last step's learning rate was already the schedule's end (``elapsed ≥ budget``): another
        step and the final save would pass ``train.max_minutes``. Rank 0 decides; every rank stops at that step."""
        sched = self.scheduler
        late = getattr(sched, "last_elapsed", 0.0) >= sched.budget_s
        return all_reduce_sum(1.0 if (self.dist.is_main and late) else 0.0) > 0

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
        source = self.config["data"].get("manifest") or self.config["data"].get("shards")
        try:
            ledger.check(what=f"this pretraining run ({self.step} steps)", knob="--set data.max_skip_fraction=F",
                         max_skip_fraction=self.config["data"]["max_skip_fraction"], source=source)
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
            with limits(**(self.config["data"].get("limits") or {})), StopSignals() as stop:
                self._stop = stop
                return self._fit()
        finally:
            self._stop = None
            self.close()

    def _stop_requested(self) -> bool:
        """Whether a SIGTERM/SIGINT reached any rank (collective: every rank stops at the same step)."""
        stop = getattr(self, "_stop", None)
        return all_reduce_sum(1.0 if stop is not None and stop.requested else 0.0) > 0

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
                "steps": self.step, "n_skipped": self.n_skipped, "objectives": self.config["objectives"],
                "manifest": {"sha256": self.df.attrs.get("sha256"), "n_rows": len(self.df)}},
                "data_columns": dict(self.config["data"].get("columns") or {})})
            write_model_card(self.out)

    def _fit(self) -> Dict[str, Any]:
        tcfg = self.config["train"]
        if self.resume_from is not None:
            self._restore()
        max_steps = int(tcfg["max_steps"])
        metrics = None
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "run_config.json", self.portable_config())
            write_init_report(self.out, self.model)
            # also when no intact checkpoint exists (killed before or during the first write): a fresh
            # start must not keep the steps the killed run logged
            self._trim_metrics()
            # purge_step: scalars logged after the checkpoint (or, with none, at all) by a killed run are dropped
            metrics = MetricsLog(self.out / "metrics.jsonl", "a", purge_step=self.step + 1,
                                 tensorboard=self.out / "tb" if tcfg["tensorboard"] else None)
        bar = progress(max_steps, "pretrain", self.dist.is_main and bool(tcfg["progress"]), initial=self.step)
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

        def run_objective(model: nn.Module, batch: Dict[str, Any]) -> Dict[str, Any]:
            return model(batch, self.objective if batch["id"] else _ZeroObjective())

        last: Dict[str, Any] = {}
        self.model.train()
        # train.max_minutes bounds the whole command (from self.started_at, time before a resume included);
        # the schedule runs on the training clock and ends where the command's time runs out
        self._fit_t0 = time.monotonic()
        budget = 60 * float(tcfg["max_minutes"]) if tcfg.get("max_minutes") is not None else None
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
                    if self.step % int(tcfg["log_every"]) == 0 or self.step == max_steps:
                        metrics.write(last, step=self.step)
                    bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}",
                                    sps=f"{last['samples_per_s']:.1f}", skipped=self.n_skipped)
                    bar.update(1)
                if budget is not None and self._past_budget():
                    if self.dist.is_main:
                        log.info("train.max_minutes reached at step %d (the next step and the final save would "
                                 "pass it)", self.step)
                    break
                every = int(tcfg["checkpoint_every"] or 0)
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
