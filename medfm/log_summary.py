"""Warnings about one cause, summarised: the first few logged, then only a running count.

A cohort with 99 % broken rows must give a readable log, not one line per row. Each warning
has a *cause*: what went wrong with the sample-specific parts (quoted names, numbers, paths)
blanked, e.g. ``("skip", "text", "text file not found")``. The first :attr:`first` warnings of a
cause are logged as they are; the next one says that further ones are only counted; after that a
line is logged at 10, 100, 1000, … of that cause (``1000 warnings like this so far``). The counts
per cause are kept (:attr:`counts`) for a summary at the end of a run.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Hashable, Tuple

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\w.-]*/)+[\w.-]*")


def cause_of(reason: str) -> str:
    """A reason with its sample-specific parts blanked: ``"row 12: 'a.png' not found"`` → ``"row #: … not found"``."""
    s = _QUOTED.sub("…", str(reason))
    s = _PATH.sub("…", s)
    return _NUMBER.sub("#", s)[:200]


class RepeatedWarnings:
    """Logs warnings of ``logger`` summarised per cause (see the module docstring)."""

    def __init__(self, logger: logging.Logger, first: int = 5):
        self.logger, self.first = logger, int(first)
        self.counts: Counter = Counter()

    def warning(self, cause: Hashable, msg: str, *args) -> bool:
        """Log ``msg % args`` if it is among the first of ``cause``; returns whether it was logged."""
        self.counts[cause] += 1
        n = self.counts[cause]
        if n <= self.first:
            self.logger.warning(msg, *args)
            return True
        if n == self.first + 1:
            self.logger.warning("more warnings like this are counted, not logged (%s): " + msg, _show(cause), *args)
        elif _is_power_of_ten(n):
            self.logger.warning("%d warnings like this so far (%s)", n, _show(cause))
        return False

    def summary(self) -> Tuple[Tuple[Hashable, int], ...]:
        """``((cause, count), ...)`` of the causes that were warned about more than :attr:`first` times."""
        return tuple((c, n) for c, n in self.counts.most_common() if n > self.first)


def _show(cause: Hashable) -> str:
    return " / ".join(map(str, cause)) if isinstance(cause, tuple) else str(cause)


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1
