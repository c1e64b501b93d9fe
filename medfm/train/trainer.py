"""One trainer for CPU, one GPU or many (``torchrun``): pretraining on a manifest.

Features: bf16 autocast where supported, gradient accumulation, AdamW with cosine
schedule and warm-up, gradient clipping, atomic checkpoints every N steps with
optimizer/scheduler/RNG/data position, exact resume, metrics as JSONL and
TensorBoard scalars, a progress bar with loss and samples/s, counted skips of
unreadable samples.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.manifest import is_missing
from ..data import ManifestDataset, MultiModalCollate, move_batch, read_manifest, select_split
from ..errors import CheckpointError, ConfigError
from ..io import deep_merge, write_json
from ..models import MultiModalModel, create_model, resolve_config
from ..card import write_model_card
from ..models.init import write_init_report
from ..registry import get_modality
from .checkpoint import (BY_NAME, checkpoint_candidates, clean_temporaries, first_difference, load_optimizer_state_by_name,
                         load_trainer_state, optimizer_state_by_name, read_run_config, rng_state, save_checkpoint,
                         set_rng_state)
from .distributed import DistInfo, all_reduce_sum, gather_objects, init_distributed
from .sampler import ResumableSampler
from .schedule import build_optimizer, cosine_with_warmup

log = logging.getLogger("medfm.train")

DEFAULT_RUN: Dict[str, Any] = {
    "model": {"name": "medfm-tiny"},
    "data": {"manifest": None, "split": "train", "columns": {}, "label_columns": [], "batch_size": 16,
             "num_workers": 0, "cache_dir": None, "root": None, "confine_paths": True, "limits": {},
             "shards": None, "shuffle_buffer": 1000},
    "objectives": [{"name": "clip", "weight": 1.0}],
    "optim": {"lr": 1e-3, "weight_decay": 0.05, "betas": [0.9, 0.95], "warmup_steps": 10, "min_lr_ratio": 0.0,
              "grad_clip": 1.0},
    "train": {"max_steps": 100, "accumulation": 1, "precision": "auto", "checkpoint_every": 50,
              "keep_checkpoints": 2, "log_every": 1, "seed": 0, "grad_checkpointing": False, "strategy": "ddp",
              "device": "auto", "tensorboard": True, "progress": True, "resume": True, "init_from": None,
              "max_minutes": None, "num_threads": None},
}


def resolve_run_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """Defaults merged with ``config``, validated against :class:`medfm.train.run_config.RunConfig`
    (types, ranges, unknown keys; the message names the key path) before anything is read."""
    from .run_config import RunConfig, validate_run_config

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
    # keys added to DEFAULT_RUN before the schema knows them are accepted untyped
    import dataclasses

    from .run_config import DataConfig, OptimConfig, TrainConfig
    tolerated = {sec: set(DEFAULT_RUN[sec]) - {f.name for f in dataclasses.fields(cls)}
                 for sec, cls in (("data", DataConfig), ("optim", OptimConfig), ("train", TrainConfig))}
    tolerated[""] = set(DEFAULT_RUN) - {f.name for f in dataclasses.fields(RunConfig)}
    return validate_run_config(run, tolerated)


def _autocast(device: torch.device, precision: str):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision in ("fp32", "32"):
        return contextlib.nullcontext()
    raise ConfigError(f"train.precision must be auto, bf16 or fp32, got {precision!r}")


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
        config_dir: folder that a relative ``data.manifest`` resolves against.
    """

    def __init__(self, config: Dict[str, Any], out_dir: Path, config_dir: Optional[Path] = None):
        from ..objectives import build_objective

        self.config = resolve_run_config(config)
        self.out = Path(out_dir)
        self.config_dir = Path(config_dir) if config_dir is not None else None
        self.dist: DistInfo = init_distributed(self.config["train"]["device"])
        tcfg, dcfg = self.config["train"], self.config["data"]
        if tcfg.get("num_threads"):  # tiny models on a CPU often run faster on one thread
            torch.set_num_threads(int(tcfg["num_threads"]))
        torch.manual_seed(int(tcfg["seed"]))  # identical initial weights on every rank
        self.shards = None
        if dcfg.get("shards"):  # streaming from `medfm shard` output (medfm.data.shard_stream)
            from ..data.shards import fit_frame, open_index

            self.shards = open_index(dcfg["shards"])
        manifest = Path(dcfg["manifest"] or self.shards.url("index.json"))
        if not manifest.is_absolute() and config_dir is not None and not manifest.exists():
            manifest = Path(config_dir) / manifest
        df = read_manifest(manifest) if dcfg["manifest"] else fit_frame(self.shards)
        # the "train" split when the manifest has a split column; every row otherwise
        self.df = select_split(df, dcfg["split"]) if dcfg.get("split") and "split" in df.columns else df
        if len(self.df) == 0:
            raise ConfigError(f"{manifest}: no rows in split {dcfg.get('split')!r}")
        self.ckpt_root = self.out / "checkpoints"
        self.resume_from = None
        self.model = self._build_model()
        self.model.to(self.dist.device)
        if tcfg["grad_checkpointing"]:
            self.model.set_grad_checkpointing(True)
        torch.manual_seed(int(tcfg["seed"]) + self.dist.rank)  # per-rank randomness (MAE masks) from here on
        self.objective = build_objective(self.config["objectives"])
        if self.shards is not None:  # the shards hold the samples (shard with --split train)
            from ..data.shard_stream import ShardStream
            from ..data.shards import check_adapters

            check_adapters(self.shards, self.model.adapters)
            self.dataset = ShardStream(self.shards, self.model.adapters, batch_size=int(dcfg["batch_size"]),
                                       seed=int(tcfg["seed"]), shuffle_buffer=int(dcfg["shuffle_buffer"]),
                                       label_columns=dcfg.get("label_columns") or (), rank=self.dist.rank,
                                       world_size=self.dist.world_size, num_workers=int(dcfg.get("num_workers") or 0))
        else:
            self.dataset = ManifestDataset(self.df, self.model.adapters, train=True,
                                           label_columns=dcfg.get("label_columns") or (), columns=dcfg.get("columns"),
                                           cache_dir=dcfg.get("cache_dir"), seed=int(tcfg["seed"]),
                                           root=self._data_root(), confine=bool(dcfg.get("confine_paths", True)))
            self.sampler = ResumableSampler(len(self.dataset), shuffle=True, seed=int(tcfg["seed"]),
                                            rank=self.dist.rank, world_size=self.dist.world_size)
        self.wrapped = self._wrap(self.model)
        ocfg = self.config["optim"]
        self.optimizer = build_optimizer(self.model, float(ocfg["lr"]), float(ocfg["weight_decay"]), ocfg["betas"])
        # with train.max_minutes the schedule follows the time budget (warm-up and decay fitted to it)
        self.train_seconds, self._fit_t0 = 0.0, None
        budget = 60.0 * float(tcfg["max_minutes"]) if tcfg.get("max_minutes") is not None else None
        self.scheduler = cosine_with_warmup(self.optimizer, int(ocfg["warmup_steps"]), int(tcfg["max_steps"]),
                                            float(ocfg.get("min_lr_ratio", 0.0)), budget_s=budget,
                                            elapsed=self.elapsed_seconds)
        self.step, self.epoch, self.micro_in_epoch = 0, 0, 0
        self.n_skipped, self.n_errors, self.n_flagged = 0, 0, 0

    # ----------------------------------------------------------- building
    def _build_model(self) -> MultiModalModel:
        tcfg = self.config["train"]
        if self.dist.is_main:
            removed = clean_temporaries(self.ckpt_root)
            # the final save_pretrained(OUT) stages next to OUT
            import shutil

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
        model_cfg = self.config["model"]
        if isinstance(model_cfg, str) and self.config_dir is not None and (self.config_dir / model_cfg).is_file():
            model_cfg = str(self.config_dir / model_cfg)
        mcfg = resolve_config(model_cfg, base_dir=self.config_dir)  # relative init paths: beside the run config
        adapters = {}
        # sorted: the order a checkpoint's config.json restores, so a resumed model is the same
        # module tree (and draws MAE masks in the same order) whatever the order in the YAML
        for name, options in sorted((mcfg.get("modalities") or {}).items()):
            adapter = get_modality(name, **(options or {}))
            column = (self.config["data"].get("columns") or {}).get(name, name)
            values = [adapter.source_from_row(r, column) for r in self.df.to_dict("records")]
            adapter.fit([v for v in values if not is_missing(v)])
            adapters[name] = adapter
        model = create_model(mcfg, adapters=adapters)
        if tcfg.get("init_from"):
            self._init_from(model, Path(tcfg["init_from"]))
        return model

    def _data_root(self) -> Optional[Path]:
        """``data.root``, relative to the config's folder when it is relative."""
        root = self.config["data"].get("root")
        if not root:
            return None
        p = Path(root).expanduser()
        return p if p.is_absolute() or self.config_dir is None else self.config_dir / p

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
            own = json.loads(json.dumps(self.config["model"], default=str))
            diff = first_difference(saved_model_cfg, own, "model")
            if diff is not None:
                raise CheckpointError(f"{ckpt}: made with another model config (first difference at {diff}); "
                                      "resume with the same model config, or start afresh (--no-resume or a new --out)")
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

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.dist.distributed:
            return model
        strategy = self.config["train"]["strategy"]
        if strategy == "ddp":
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            return DDP(model, device_ids=ids, find_unused_parameters=True)
        if strategy == "fsdp":
            # FSDP2: shard every transformer block, then the rest of the model
            from torch.distributed.fsdp import fully_shard

            # (the scalar logit scale/bias cannot be sharded: kept whole, gradients averaged by hand)
            self._unsharded = [model.logit_scale, model.logit_bias]
            for module in model.modules():
                if type(module).__name__ == "Block":
                    fully_shard(module)
            return fully_shard(model, ignored_params=set(self._unsharded))
        raise ConfigError(f"train.strategy must be 'ddp' or 'fsdp', got {strategy!r}")

    def _loader(self) -> Iterator[Dict[str, Any]]:
        dcfg = self.config["data"]
        bs = int(dcfg["batch_size"])
        if self.shards is not None:
            from ..data.shard_stream import shard_loader

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
        if getattr(self, "_unsharded", None):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True, strict=False))
        elif state["optimizer"].get("format") == BY_NAME:
            load_optimizer_state_by_name(self.model, self.optimizer, state["optimizer"], source=self.resume_from)
        else:  # checkpoints of earlier medfm versions stored the state by position
            log.warning("%s: optimizer state stored by position (older medfm); restoring it by position",
                        self.resume_from)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # the config's horizon wins over the saved one (e.g. a resume with a larger max_steps)
        sched, tcfg = self.scheduler, self.config["train"]
        sched.warmup_steps, sched.total_steps = int(self.config["optim"]["warmup_steps"]), max(1, int(tcfg["max_steps"]))
        sched.budget_s = 60.0 * float(tcfg["max_minutes"]) if tcfg.get("max_minutes") is not None else None
        sched.set_clock(self.elapsed_seconds)
        self.train_seconds = float(state["position"].get("train_seconds", 0.0))
        self.step = int(state["step"])
        self.epoch = int(state["position"]["epoch"])
        self.micro_in_epoch = int(state["position"]["micro_in_epoch"])
        self.n_skipped = int(state["position"].get("n_skipped", 0))
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        elif self.dist.is_main:
            log.warning("checkpoint has RNG states of %d ranks, this run has %d: RNG not restored",
                        len(rngs), self.dist.world_size)
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
            from ..io import atomic_write_text

            atomic_write_text(path, "".join(x + "\n" for x in kept))
            log.info("metrics.jsonl: dropped %d line(s) after step %d (written before the interruption)",
                     dropped, self.step)

    def _full_model_and_optimizer(self):
        """A plain (unsharded) model and optimizer state to save; collective under FSDP."""
        if not getattr(self, "_unsharded", None):
            return self.model, optimizer_state_by_name(self.model, self.optimizer)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=opts)
        if not self.dist.is_main:
            return None, None
        plain = MultiModalModel(self.model.config, self.model.adapters)
        plain.load_state_dict(model_sd)
        return plain, optim_sd

    def _checkpoint(self) -> None:
        rngs = gather_objects(rng_state())
        model, optim_state = self._full_model_and_optimizer()
        if self.dist.is_main:
            position = {"epoch": self.epoch, "micro_in_epoch": self.micro_in_epoch, "n_skipped": self.n_skipped,
                        "train_seconds": self.elapsed_seconds()}
            save_checkpoint(self.ckpt_root, self.step, model, optim_state, self.scheduler, position, rngs,
                            self.config, keep=int(self.config["train"]["keep_checkpoints"]))
        return model

    def elapsed_seconds(self) -> float:
        """Training seconds of this run so far, time before a resume included (drives the time budget)."""
        return self.train_seconds + (time.monotonic() - self._fit_t0 if self._fit_t0 is not None else 0.0)

    def _past(self, deadline: float) -> bool:
        """Whether rank 0 is past the time budget (every rank stops at the same step)."""
        flag = 1.0 if (self.dist.is_main and time.monotonic() > deadline) else 0.0
        return all_reduce_sum(flag) > 0

    # -------------------------------------------------------------- loop
    def fit(self) -> Dict[str, Any]:
        """Train to ``train.max_steps``; returns the last logged metrics.

        ``data.limits`` (see :mod:`medfm.limits`) apply to every read of this run.
        """
        from ..limits import limits

        with limits(**(self.config["data"].get("limits") or {})):
            return self._fit()

    def _fit(self) -> Dict[str, Any]:
        tcfg = self.config["train"]
        if self.resume_from is not None:
            self._restore()
        max_steps, accum = int(tcfg["max_steps"]), int(tcfg["accumulation"])
        writer = None
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "run_config.json", self.config)
            write_init_report(self.out, self.model)
            if tcfg["tensorboard"]:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: scalars logged after the checkpoint (or, with none, at all) by a killed run are dropped
                writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step + 1)
            # also when no intact checkpoint exists (killed before or during the first write): a fresh
            # start must not keep the steps the killed run logged
            self._trim_metrics()
        metrics_fh = open(self.out / "metrics.jsonl", "a", encoding="utf-8") if self.dist.is_main else None
        bar = tqdm(total=max_steps, initial=self.step, desc="pretrain", disable=not (self.dist.is_main and tcfg["progress"]),
                   dynamic_ncols=True)
        it = self._loader()
        last: Dict[str, Any] = {}
        self.model.train()
        self._fit_t0 = time.monotonic()
        # train.max_minutes bounds the whole run's training time, time before a resume included
        deadline = (self._fit_t0 + 60 * float(tcfg["max_minutes"]) - self.train_seconds
                    if tcfg.get("max_minutes") is not None else None)
        try:
            while self.step < max_steps:
                t_step = time.perf_counter()
                data_wait, n_samples, logs_sum = 0.0, 0, {}
                for micro in range(accum):
                    t0 = time.perf_counter()
                    batch = next(it, None)
                    if batch is None:
                        self.epoch += 1
                        self.micro_in_epoch = 0
                        it = self._loader()
                        batch = next(it, None)
                        if batch is None:
                            raise ConfigError("the training split yields no batch (is it empty?)")
                    self.micro_in_epoch += 1
                    data_wait += time.perf_counter() - t0
                    self.n_skipped += batch["n_skipped"]
                    self.n_errors += len(batch["errors"])
                    self.n_flagged += len(batch.get("flags", ()))
                    batch = move_batch(batch, self.dist.device)
                    n_samples += len(batch["id"])
                    objective = self.objective if batch["id"] else _ZeroObjective()
                    sync = micro == accum - 1 or not isinstance(self.wrapped, DDP)
                    ctx = contextlib.nullcontext() if sync else self.wrapped.no_sync()
                    with ctx, _autocast(self.dist.device, tcfg["precision"]):
                        out = self.wrapped(batch, objective)
                        loss = out["loss"] / accum
                    with ctx:
                        loss.backward()
                    for k, v in out.items():
                        val = float(v.detach()) if isinstance(v, torch.Tensor) else v
                        if isinstance(val, (int, float)):
                            logs_sum[k] = logs_sum.get(k, 0.0) + float(val) / accum
                for p in getattr(self, "_unsharded", ()):
                    if p.grad is not None:
                        p.grad.div_(self.dist.world_size)
                        torch.distributed.all_reduce(p.grad)
                gclip = float(self.config["optim"].get("grad_clip") or 0)
                grad_norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), gclip)
                             if gclip > 0 else torch.tensor(0.0))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    self.model.logit_scale.clamp_(0, math.log(100))
                self.step += 1
                dt = time.perf_counter() - t_step
                total_samples = all_reduce_sum(n_samples)
                if self.dist.distributed:  # report the mean over ranks, not rank 0's share
                    logs_sum = {k: all_reduce_sum(v) / self.dist.world_size for k, v in sorted(logs_sum.items())}
                last = {"step": self.step, "epoch": self.epoch, "lr": self.scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm), "samples_per_s": total_samples / max(dt, 1e-9),
                        "data_wait_frac": data_wait / max(dt, 1e-9), "n_skipped": self.n_skipped,
                        "n_modality_errors": self.n_errors, "n_flagged": self.n_flagged, **logs_sum}
                if self.dist.is_main:
                    if self.step % int(tcfg["log_every"]) == 0 or self.step == max_steps:
                        metrics_fh.write(json.dumps(last) + "\n")
                        metrics_fh.flush()
                        if writer is not None:
                            for k, v in last.items():
                                if isinstance(v, (int, float)) and k != "step":
                                    writer.add_scalar(f"train/{k}", v, self.step)
                    bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}",
                                    sps=f"{last['samples_per_s']:.1f}", skipped=self.n_skipped)
                    bar.update(1)
                if deadline is not None and self._past(deadline):
                    if self.dist.is_main:
                        log.info("train.max_minutes reached at step %d", self.step)
                    break
                every = int(tcfg["checkpoint_every"] or 0)
                if every and self.step % every == 0 and self.step < max_steps:
                    self._checkpoint()
            final = self._checkpoint()
            if self.dist.is_main:
                final.init_sources = getattr(self.model, "init_sources", {})
                final.save_pretrained(self.out, extra={"training": {
                    "steps": self.step, "n_skipped": self.n_skipped, "objectives": self.config["objectives"],
                    "manifest": {"sha256": self.df.attrs.get("sha256"), "n_rows": len(self.df)}},
                    "data_columns": dict(self.config["data"].get("columns") or {})})
                write_model_card(self.out)
        finally:
            self.train_seconds, self._fit_t0 = self.elapsed_seconds(), None
            bar.close()
            if metrics_fh:
                metrics_fh.close()
            if writer is not None:
                writer.close()
        return last
