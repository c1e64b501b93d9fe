"""Where a pretraining run stands and how it is kept: resumable checkpoints, exact resume, the
``metrics.jsonl`` trim after a resume, and the time budget of ``train.max_minutes``.

:class:`RunState` is a mixin of :class:`medfm.train.Trainer`; it reads the trainer's typed config
(``self.cfg``), its task (model + objectives), core, scheduler and data position.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Dict, Optional

from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from ..errors import CheckpointError
from ..io import atomic_write_text, portable_paths
from ..models import MultiModalModel
from ..schema import to_dict
from .distributed import all_reduce_sum, gather_objects
from .resume_checkpoint import (checkpoint_candidates, first_difference, load_trainer_state, optimizer_state_by_name,
                                read_run_config, rng_state, save_checkpoint)
from .run_guard import resume_difference
from .task import OBJECTIVE_PREFIX

log = logging.getLogger("medfm.train")


class RunState:
    """Checkpoints, resume and the time budget of a :class:`~medfm.train.Trainer` (a mixin)."""

    # ------------------------------------------------------------ resume
    def _resumable_model(self) -> Optional[MultiModalModel]:
        """The model of the newest intact checkpoint (``None`` when there is none).

        A checkpoint whose weights or training state cannot be read is skipped with a warning
        naming it; one made from another model config is refused (:class:`CheckpointError`).
        """
        for ckpt in checkpoint_candidates(self.ckpt_root):
            try:
                model = MultiModalModel.from_pretrained(ckpt)
                state = load_trainer_state(ckpt)
                saved_cfg = read_run_config(ckpt)
            except Exception as e:  # a torn file of a killed run: fall back to an older checkpoint
                reason = " ".join(str(e).split())[:300]
                if self.dist.is_main:
                    log.warning("checkpoint %s is unreadable (%s: %s); trying an older one",
                                ckpt, type(e).__name__, reason)
                continue
            own = json.loads(json.dumps(self.portable_config()["model"], default=str))
            diff = first_difference(saved_cfg.get("model"), own, "model")
            if diff is not None:
                raise CheckpointError(f"{ckpt}: made with another model config (first difference at {diff}); "
                                      "resume with the same model config, or start afresh (--no-resume or a new --out)")
            saved = {**saved_cfg, "data_sha256": state["position"].get("manifest_sha256")}
            change = resume_difference(saved, {**to_dict(self.cfg), "data_sha256": self.df.attrs.get("sha256")})
            if change is not None:
                if not self.cfg.train.force_resume:
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

    def _restore(self) -> None:
        """Objectives, optimiser, schedule, RNG and data position from :attr:`resume_from`."""
        state = getattr(self, "_resume_state", None) or load_trainer_state(self.resume_from)
        self.task.load_objectives(self.resume_from)
        self.core.restore(state, self.dist.rank, self.dist.world_size, source=self.resume_from)
        # the config's horizon wins over the saved one (e.g. a resume with a larger max_steps)
        sched, tcfg = self.scheduler, self.cfg.train
        sched.warmup_steps, sched.total_steps = self.cfg.optim.warmup_steps, tcfg.max_steps
        sched.budget_s = 60.0 * tcfg.max_minutes if tcfg.max_minutes is not None else None
        sched.set_clock(self.elapsed_seconds)
        position = state["position"]
        self.train_seconds = float(position.get("train_seconds", 0.0))
        self.command_seconds = float(position.get("command_seconds", self.train_seconds))
        self.step = int(state["step"])
        self.epoch = int(position["epoch"])
        self.micro_in_epoch = int(position["micro_in_epoch"])
        self.core.skips.n_skipped = int(position.get("n_skipped", 0))
        if position.get("skips"):
            self.core.skips.load_state_dict(position["skips"])
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

    # -------------------------------------------------------- checkpoints
    def _full_state(self):
        """``(plain model, objectives' state, optimizer state)`` to save; collective under FSDP."""
        if not getattr(self, "_unsharded", None):
            return (self.model, self.task.objective.state_dict(),
                    optimizer_state_by_name(self.task.state_parameters(), self.optimizer))
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        task_sd, optim_sd = get_state_dict(self.task, self.optimizer, options=opts)
        if not self.dist.is_main:
            return None, None, None
        plain = MultiModalModel(self.model.config, self.model.adapters)
        plain.load_state_dict({k[len("model."):]: v for k, v in task_sd.items() if k.startswith("model.")})
        objectives = {k[len(OBJECTIVE_PREFIX):]: v for k, v in task_sd.items() if k.startswith(OBJECTIVE_PREFIX)}
        return plain, objectives, optim_sd

    def _checkpoint(self):
        """A resumable checkpoint of this step; returns the plain model (rank 0)."""
        t0 = time.monotonic()
        rngs = gather_objects(rng_state())
        model, objectives, optim_state = self._full_state()
        if self.dist.is_main:
            position = {"epoch": self.epoch, "micro_in_epoch": self.micro_in_epoch, "n_skipped": self.n_skipped,
                        "train_seconds": self.elapsed_seconds(), "command_seconds": self.command_elapsed(),
                        "skips": self.core.skips.state_dict(), "manifest_sha256": self.df.attrs.get("sha256")}
            save_checkpoint(self.ckpt_root, self.step, model, optim_state, self.scheduler, position, rngs,
                            self.portable_config(), keep=self.cfg.train.keep_checkpoints,
                            extra=lambda folder: self.task.save_objectives(folder, objectives))
        self._final_objectives = objectives
        # the final save writes a checkpoint and the model: reserve about twice a checkpoint's time
        self._save_reserve = max(0.1, 2.0 * (time.monotonic() - t0))
        return model

    def portable_config(self) -> Dict[str, Any]:
        """The run config as written to disk (``to_dict`` of the typed config): absolute paths relative to
        OUT (:func:`medfm.io.portable_paths`)."""
        return portable_paths(to_dict(self.cfg), self.out)

    # -------------------------------------------------------- time budget
    def elapsed_seconds(self) -> float:
        """Training seconds of this run so far, time before a resume included (the schedule's clock)."""
        return self.train_seconds + (time.monotonic() - self._fit_t0 if self._fit_t0 is not None else 0.0)

    def command_elapsed(self) -> float:
        """Seconds of the whole command so far (from :attr:`started_at`: start-up and data reading count),
        earlier commands of a resumed run included: what ``train.max_minutes`` bounds."""
        return self.command_seconds + time.monotonic() - self.started_at

    def _save_estimate(self) -> float:
        """Seconds the final save is expected to take (weights + optimizer state at 100 MB/s, ≥ 0.1 s);
        replaced by the measured time of a checkpoint once one was written."""
        n_bytes = sum(p.numel() * p.element_size() for p in self.task.parameters())
        return max(0.1, 4 * n_bytes / 100e6)

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

    def _stop_requested(self) -> bool:
        """Whether a SIGTERM/SIGINT reached any rank (collective: every rank stops at the same step)."""
        stop = getattr(self, "_stop", None)
        return all_reduce_sum(1.0 if stop is not None and stop.requested else 0.0) > 0
