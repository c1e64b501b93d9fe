"""A run owns its output folder: a lock file with the owner's pid and host, and a graceful stop.

- :class:`RunLock` — ``OUT/.medfm-run.lock`` holds ``{"pid", "host", "started"}``. A second run
  into the same folder is refused (:class:`OutputInUse`, naming the pid and host); a lock whose
  pid is not alive on this host is stale and taken over with a warning. A lock of another host
  cannot be checked, so it is refused (delete the file when that run is gone).
- :class:`StopSignals` — SIGTERM/SIGINT set a flag instead of killing the process; the training
  loop reads it at the next step boundary, saves a checkpoint and raises :class:`RunStopped`
  ("stopped at step N, resume with the same command"; the CLI exits 1).
- :func:`resume_difference` — the first setting that changes the data order or the objective
  between a checkpoint and the run about to resume from it (batch size, seed, manifest,
  objectives, accumulation).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ..errors import MedFMError

log = logging.getLogger("medfm.train")

LOCK_NAME = ".medfm-run.lock"
_HELD: Dict[str, "RunLock"] = {}  # lock paths this process holds now

#: the settings of a run config that decide the data order or the objective, as key paths
RESUME_KEYS: Tuple[Tuple[str, ...], ...] = (("data", "batch_size"), ("train", "seed"), ("train", "accumulation"),
                                            ("objectives",))


class OutputInUse(MedFMError):
    """Another live run writes into the same output folder."""


class RunStopped(MedFMError):
    """The run was stopped by a signal after saving a checkpoint."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``OUT/.medfm-run.lock`` for the lifetime of a run (a context manager, or :meth:`acquire`/:meth:`release`)."""

    def __init__(self, out: os.PathLike):
        self.path = Path(out) / LOCK_NAME
        self.held = False

    def _owner(self) -> Optional[Dict[str, Any]]:
        try:
            rec = json.loads(self.path.read_text(encoding="utf-8"))
            return rec if isinstance(rec, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # torn or garbage: nobody can be named, treated as stale

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released meanwhile: try again
                pid, host = owner.get("pid"), owner.get("host")
                key = str(self.path.resolve())
                if isinstance(pid, int) and host not in (None, me["host"]):
                    raise OutputInUse(f"{self.path.parent} is in use by pid {pid} on host {host} (lock file "
                                      f"{self.path}); use another --out, or delete the lock file if that run is gone")
                if isinstance(pid, int) and _alive(pid) and (pid != me["pid"] or key in _HELD):
                    raise OutputInUse(f"{self.path.parent} is in use by another run (pid {pid} on {host}); wait "
                                      f"for it or use another --out (lock file {self.path})")
                why = ("left by an earlier run of this process" if pid == me["pid"]
                       else f"pid {pid} on {host} is not running" if isinstance(pid, int) else "unreadable")
                log.warning("taking over the stale lock %s (%s)", self.path, why)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
            self.held = True
            _HELD[str(self.path.resolve())] = self
            return self
        raise OutputInUse(f"cannot take the lock {self.path}: other runs keep taking it")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _HELD.pop(str(self.path.resolve()), None)
        owner = self._owner()
        if owner is not None and owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class StopSignals:
    """SIGTERM/SIGINT → :attr:`requested` (the signal's name) instead of an abrupt exit.

    Installed only in the main thread (elsewhere signals cannot be caught; it is then a no-op).
    A second signal of the same kind while stopping restores the default action (a second
    Ctrl-C kills at once). The previous handlers are restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: Optional[str] = None
        self._old: Dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:  # asked twice: stop now
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            os.kill(os.getpid(), signum)
            return
        self.requested = signal.Signals(signum).name
        log.warning("%s received: stopping at the next step boundary with a checkpoint", self.requested)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


def stopped_message(step: int, what: str = "step", resumable: bool = True) -> str:
    """The one line a stopped run ends with."""
    if resumable:
        return f"stopped at {what} {step}, resume with the same command"
    return f"stopped at {what} {step}; this command does not resume: run it again to start afresh"


def _get(cfg: Mapping[str, Any], path: Sequence[str]) -> Any:
    cur: Any = cfg
    for k in path:
        if not isinstance(cur, Mapping) or k not in cur:
            return None
        cur = cur[k]
    return cur


def resume_difference(saved: Mapping[str, Any], own: Mapping[str, Any],
                      keys: Sequence[Sequence[str]] = RESUME_KEYS) -> Optional[str]:
    """``"data.batch_size: 8 → 4"`` for the first key path whose value differs (JSON-compared), else ``None``.

    ``saved``/``own`` are run configs, with the manifest's hash under ``data_sha256`` when known
    (a checkpoint that predates it is not compared on it).
    """
    norm = lambda v: json.loads(json.dumps(v, sort_keys=True, default=str))  # noqa: E731
    for path in list(keys) + [("data_sha256",)]:
        a, b = _get(saved, path), _get(own, path)
        if path == ("data_sha256",) and (a is None or b is None):
            continue
        if norm(a) != norm(b):
            return f"{'.'.join(path)}: {json.dumps(norm(a))} → {json.dumps(norm(b))}"
    return None
