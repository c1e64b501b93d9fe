"""When the command started: the clock ``train.max_minutes`` counts from (standard library only, so the
CLI can read it before anything heavy is imported)."""
from __future__ import annotations

import os
import time

_IMPORTED = time.monotonic()


def process_started_at() -> float:
    """The ``time.monotonic()`` reading at which this process started, so a budget covers start-up
    (imports) too. Linux: from ``/proc/self/stat``; elsewhere (or unreadable): when this module was
    imported."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - float(fields[19]) / os.sysconf("SC_CLK_TCK")
        if 0 <= age < 365 * 86400:
            return time.monotonic() - age
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    return _IMPORTED


def command_started_at(argv_given: bool) -> float:
    """The start of a CLI command: the process start when the process *is* the command (``medfm ...``,
    ``python -m medfm``: ``main()`` called without arguments), else the moment ``main(argv)`` was
    called (a command run from Python or a test, in a process that started long before)."""
    return time.monotonic() if argv_given else process_started_at()
