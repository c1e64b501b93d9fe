"""Warnings about one cause, summarised: the first few logged, then only a running count.

A cohort with 99 % broken rows must give a readable log, not one line per row. Each warning
has a *cause*: what went wrong with the sample-specific parts (quoted names, numbers, paths)
blanked (:func:`medfm.data.skips.reason_key`), e.g. ``"text: text file … not found"``. The first :attr:`first` warnings of a
cause are logged as they are; the next one says that further ones are only counted; after that a
line is logged at 10, 100, 1000, … of that cause (``1000 warnings like this so far``). The counts
per cause are kept (:attr:`counts`) for a summary at the end of a run.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Hashable, Tuple


class RepeatedWarnings:
    """Logs warnings of ``logger`` summarised per cause (see the module docstring).

    ``notices=False`` logs the first :attr:`first` of a cause and nothing after them (for a note that
    says the same of every sample, e.g. a reader flag: said once, then only counted).
    """

    def __init__(self, logger: logging.Logger, first: int = 5, notices: bool = True):
        self.logger, self.first, self.notices = logger, int(first), bool(notices)
        self.counts: Counter = Counter()

    def warning(self, cause: Hashable, msg: str, *args) -> bool:
        """Log ``msg % args`` if it is among the first of ``cause``; returns whether it was logged."""
        self.counts[cause] += 1
        n = self.counts[cause]
        if n <= self.first:
            self.logger.warning(msg, *args)
            return True
        if not self.notices:
            return False
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
