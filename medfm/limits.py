"""Limits on what one input may cost, checked before a file is decoded.

Three limits, one per way a hostile or broken file exhausts a machine:

=====================  ==============  =====================================================
limit                  default         what it bounds
=====================  ==============  =====================================================
``max_file_mb``        4096 MiB        bytes on disk of one input (a file, or a folder's files)
``max_elements``       2**29 (~537 M)  product of the dimensions a header declares (voxels ×
                                       channels, samples × leads), read *before* decoding
``max_sample_mb``      4096 MiB        memory of the decoded sample as float32 (elements × 4)
=====================  ==============  =====================================================

A 512×512×2000 CT (524 M voxels, 2 GiB as float32) passes; a NIfTI header claiming
32767³ voxels or a PNG claiming 100 000² pixels fails at once, with an error naming the
file, the declared size and the limit. Raise a limit with ``data.limits`` in a run config
(``--set data.limits.max_elements=2e9``), :func:`set_limits` in Python, or the environment
variables ``MEDFM_MAX_FILE_MB``, ``MEDFM_MAX_ELEMENTS``, ``MEDFM_MAX_SAMPLE_MB`` (read at
import, so DataLoader workers started with ``spawn`` see them too).
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from .errors import ConfigError, DataError

HINT = "raise it with data.limits.{key} in the run config or the {env} environment variable"


@dataclass(frozen=True)
class InputLimits:
    """See the module docstring. Every value must be positive."""

    max_file_mb: float = 4096.0
    max_elements: int = 2 ** 29
    max_sample_mb: float = 4096.0

    def __post_init__(self):
        for key, val in asdict(self).items():
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not val > 0 or not math.isfinite(val):
                raise ConfigError(f"data.limits.{key}: expected a positive number, got {val!r}")


_ENV = {"max_file_mb": "MEDFM_MAX_FILE_MB", "max_elements": "MEDFM_MAX_ELEMENTS", "max_sample_mb": "MEDFM_MAX_SAMPLE_MB"}


def _from_env() -> InputLimits:
    values = {}
    for key, env in _ENV.items():
        raw = os.environ.get(env)
        if raw:
            try:
                values[key] = float(raw) if key != "max_elements" else int(float(raw))
            except ValueError:
                raise ConfigError(f"{env}: expected a number, got {raw!r}") from None
    return InputLimits(**values)


_current = _from_env()


def get_limits() -> InputLimits:
    return _current


def set_limits(**values: Any) -> InputLimits:
    """Change limits for this process (``None`` values keep the current one); returns the old limits."""
    global _current
    old = _current
    clean = {k: (int(float(v)) if k == "max_elements" else float(v)) for k, v in values.items() if v is not None}
    unknown = sorted(set(clean) - set(_ENV))
    if unknown:
        raise ConfigError(f"data.limits: unknown key(s) {unknown}; known: {sorted(_ENV)}")
    _current = replace(_current, **clean)
    return old


@contextlib.contextmanager
def limits(**values: Any) -> Iterator[InputLimits]:
    """``with limits(max_elements=10**6): ...`` — temporary limits (tests, one-off reads)."""
    old = set_limits(**values)
    try:
        yield _current
    finally:
        globals()["_current"] = old


def _hint(key: str) -> str:
    return HINT.format(key=key, env=_ENV[key])


def check_file_size(path: os.PathLike, *, source: Optional[str] = None) -> int:
    """Bytes of ``path`` (a folder: its files, not recursing); :class:`DataError` over ``max_file_mb``."""
    p = Path(path)
    try:
        size = sum(f.stat().st_size for f in p.iterdir() if f.is_file()) if p.is_dir() else p.stat().st_size
    except OSError:
        return 0  # the reader reports a missing/unreadable file in its own words
    lim = _current.max_file_mb
    if size > lim * 2 ** 20:
        raise DataError(f"input is {size / 2 ** 20:.1f} MiB, over the limit max_file_mb={lim:g} ({_hint('max_file_mb')})",
                        source=source or str(p), field="size")
    return size


def check_declared_shape(shape: Iterable[Any], *, source: Any, what: str = "input") -> int:
    """Before decoding: the product of the header's dimensions against ``max_elements`` and
    its float32 size against ``max_sample_mb``. Returns the element count."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise DataError(f"{what} declares a negative dimension {tuple(dims)}", source=str(source), field="shape")
    n = math.prod(dims) if dims else 0
    lim = _current
    if n > lim.max_elements:
        raise DataError(f"{what} declares {'×'.join(map(str, dims))} = {n:,} elements, over the limit "
                        f"max_elements={lim.max_elements:,} ({_hint('max_elements')})", source=str(source), field="shape")
    if n * 4 > lim.max_sample_mb * 2 ** 20:
        raise DataError(f"{what} of {'×'.join(map(str, dims))} needs {n * 4 / 2 ** 20:.0f} MiB as float32, over the "
                        f"limit max_sample_mb={lim.max_sample_mb:g} ({_hint('max_sample_mb')})",
                        source=str(source), field="shape")
    return n
