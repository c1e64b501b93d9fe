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
from ..errors import ConfigError
from ..io import deep_merge, write_json
from ..models import MultiModalModel, create_model, resolve_config
from ..registry import get_modality
from .checkpoint import (latest_checkpoint, load_trainer_state, rng_state, save_checkpoint, set_rng_state)
from .distributed import DistInfo, all_reduce_sum, gather_objects, init_distributed
from .sampler import ResumableSampler
from .schedule import build_optimizer, cosine_with_warmup

log = logging.getLogger("medfm.train")

DEFAULT_RUN: Dict[str, Any] = {
    "model": {"name": "medfm-tiny"},
    "data": {"manifest": None, "split": "train", "columns": {}, "label_columns": [], "batch_size": 16,
             "num_workers": 0, "cache_dir": None, "shards": None, "shuffle_buffer": 1000},
    "objectives": [{"name": "clip", "weight": 1.0}],
    "optim": {"lr": 1e-3, "weight_decay": 0.05, "betas": [0.9, 0.95], "warmup_steps": 10, "min_lr_ratio": 0.0,
              "grad_clip": 1.0},
    "train": {"max_steps": 100, "accumulation": 1, "precision": "auto", "checkpoint_every": 50,
              "keep_checkpoints": 2, "log_every": 1, "seed": 0, "grad_checkpointing": False, "strategy": "ddp",
              "device": "auto", "tensorboard": True, "progress": True, "resume": True, "init_from": None,
              "max_minutes": None, "num_threads": None},
}


def resolve_run_config(config: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(config) - set(DEFAULT_RUN) - {"name", "description"})
    if unknown:
        raise ConfigError(f"unknown top-level config section(s) {unknown}; known: {sorted(DEFAULT_RUN)}")
    run = deep_merge(DEFAULT_RUN, config)
    if isinstance(config.get("objectives"), list):
        run["objectives"] = copy.deepcopy(config["objectives"])
    if not run["data"].get("manifest") and not run["data"].get("shards"):
        raise ConfigError("data.manifest is required (a CSV/TSV/JSONL/Parquet cohort manifest), "
                          "or data.shards (a folder/URL written by `medfm shard`)")
    return run


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
                                           cache_dir=dcfg.get("cache_dir"), seed=int(tcfg["seed"]))
            self.sampler = ResumableSampler(len(self.dataset), shuffle=True, seed=int(tcfg["seed"]),
                                            rank=self.dist.rank, world_size=self.dist.world_size)
        self.wrapped = self._wrap(self.model)
        ocfg = self.config["optim"]
        self.optimizer = build_optimizer(self.model, float(ocfg["lr"]), float(ocfg["weight_decay"]), ocfg["betas"])
        self.scheduler = cosine_with_warmup(self.optimizer, int(ocfg["warmup_steps"]), int(tcfg["max_steps"]),
                                            float(ocfg.get("min_lr_ratio", 0.0)))
        self.step, self.epoch, self.micro_in_epoch = 0, 0, 0
        self.n_skipped, self.n_errors = 0, 0

    # ----------------------------------------------------------- building
    def _build_model(self) -> MultiModalModel:
        tcfg = self.config["train"]
        ckpt = latest_checkpoint(self.ckpt_root) if tcfg.get("resume", True) else None
        if ckpt is not None:
            self.resume_from = ckpt
            if self.dist.is_main:
                log.info("resuming from %s (train.resume=false or --no-resume starts afresh)", ckpt)
            return MultiModalModel.from_pretrained(ckpt)
        model_cfg = self.config["model"]
        if isinstance(model_cfg, str) and self.config_dir is not None and (self.config_dir / model_cfg).is_file():
            model_cfg = str(self.config_dir / model_cfg)
        mcfg = resolve_config(model_cfg)
        adapters = {}
        for name, options in (mcfg.get("modalities") or {}).items():
            adapter = get_modality(name, **(options or {}))
            column = (self.config["data"].get("columns") or {}).get(name, name)
            values = [adapter.source_from_row(r, column) for r in self.df.to_dict("records")]
            adapter.fit([v for v in values if not is_missing(v)])
            adapters[name] = adapter
        model = create_model(mcfg, adapters=adapters)
        if tcfg.get("init_from"):
            self._init_from(model, Path(tcfg["init_from"]))
        return model

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
        state = load_trainer_state(self.resume_from)
        if getattr(self, "_unsharded", None):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
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

    def _full_model_and_optimizer(self):
        """A plain (unsharded) model and optimizer state to save; collective under FSDP."""
        if not getattr(self, "_unsharded", None):
            return self.model, self.optimizer.state_dict()
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
            position = {"epoch": self.epoch, "micro_in_epoch": self.micro_in_epoch, "n_skipped": self.n_skipped}
            save_checkpoint(self.ckpt_root, self.step, model, optim_state, self.scheduler, position, rngs,
                            self.config, keep=int(self.config["train"]["keep_checkpoints"]))
        return model

    def _past(self, deadline: float) -> bool:
        """Whether rank 0 is past the time budget (every rank stops at the same step)."""
        flag = 1.0 if (self.dist.is_main and time.monotonic() > deadline) else 0.0
        return all_reduce_sum(flag) > 0

    # -------------------------------------------------------------- loop
    def fit(self) -> Dict[str, Any]:
        """Train to ``train.max_steps``; returns the last logged metrics."""
        tcfg = self.config["train"]
        if self.resume_from is not None:
            self._restore()
        max_steps, accum = int(tcfg["max_steps"]), int(tcfg["accumulation"])
        writer = None
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "run_config.json", self.config)
            if tcfg["tensorboard"]:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.out / "tb"))
        metrics_fh = open(self.out / "metrics.jsonl", "a", encoding="utf-8") if self.dist.is_main else None
        bar = tqdm(total=max_steps, initial=self.step, desc="pretrain", disable=not (self.dist.is_main and tcfg["progress"]),
                   dynamic_ncols=True)
        it = self._loader()
        last: Dict[str, Any] = {}
        self.model.train()
        deadline = (time.monotonic() + 60 * float(tcfg["max_minutes"])) if tcfg.get("max_minutes") is not None else None
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
                        "n_modality_errors": self.n_errors, **logs_sum}
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
                final.save_pretrained(self.out, extra={"training": {"steps": self.step,
                                                                       "n_skipped": self.n_skipped}})
        finally:
            bar.close()
            if metrics_fh:
                metrics_fh.close()
            if writer is not None:
                writer.close()
        return last
