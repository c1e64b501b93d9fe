"""Limits on what one input may cost, checked before a file is decoded.

Five limits, one per way a hostile or broken file exhausts a machine:

=====================  ==============  =====================================================
limit                  default         what it bounds
=====================  ==============  =====================================================
``max_file_mb``        4096 MiB        bytes on disk of one input (a file, or a folder's files)
``max_elements``       2**29 (~537 M)  product of the dimensions a header declares (voxels ×
                                       channels, samples × leads), read *before* decoding
``max_sample_mb``      4096 MiB        memory of the decoded sample as float32 (elements × 4)
``max_text_mb``        4 MiB           one text value as UTF-8: an inline manifest cell (report,
                                       sequence), a ``.txt`` report, one FASTA/TSV record
``max_header_mb``      1 MiB           a header read before its library parses it (a WFDB
                                       ``.hea``, a JSON sidecar)
=====================  ==============  =====================================================

Files are read through :mod:`medfm.input_files`, which counts the bytes while reading: a
file whose size the file system misreports (``/proc``, a device) cannot pass a limit.

A 512×512×2000 CT (524 M voxels, 2 GiB as float32) passes; a NIfTI header claiming
32767³ voxels or a PNG claiming 100 000² pixels fails at once, with an error naming the
file, the declared size and the limit. Raise a limit with ``data.limits`` in a run config
(``--set data.limits.max_elements=2e9``), :func:`set_limits` in Python, or the environment
variables ``MEDFM_MAX_FILE_MB``, ``MEDFM_MAX_ELEMENTS``, ``MEDFM_MAX_SAMPLE_MB``,
``MEDFM_MAX_TEXT_MB``, ``MEDFM_MAX_HEADER_MB`` (read at
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
    max_text_mb: float = 4.0
    max_header_mb: float = 1.0

    def __post_init__(self):
        for key, val in asdict(self).items():
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not val > 0 or not math.isfinite(val):
                raise ConfigError(f"data.limits.{key}: expected a positive number, got {val!r}")


_ENV = {"max_file_mb": "MEDFM_MAX_FILE_MB", "max_elements": "MEDFM_MAX_ELEMENTS", "max_sample_mb": "MEDFM_MAX_SAMPLE_MB",
        "max_text_mb": "MEDFM_MAX_TEXT_MB", "max_header_mb": "MEDFM_MAX_HEADER_MB"}


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


def byte_limit(key: str) -> int:
    """The limit ``key`` (a ``*_mb`` field) in bytes."""
    return int(getattr(_current, key) * 2 ** 20)


def over_limit(n_bytes: float, key: str, *, what: str, source: Any, field: Optional[str] = "size") -> DataError:
    """The error for ``what`` of ``n_bytes`` (or more) over the byte limit ``key``."""
    lim = getattr(_current, key)
    return DataError(f"{what} is over {n_bytes / 2 ** 20:.1f} MiB, over the limit {key}={lim:g} ({_hint(key)})",
                     source=None if source is None else str(source), field=field)


def check_text_size(value: str, *, source: Any, field: Optional[str] = None, what: str = "text value") -> None:
    """An in-memory text (an inline manifest cell) against ``max_text_mb``, counted as UTF-8 bytes.

    Cheap for any length: a string of more characters than the limit has bytes is over it
    without encoding; one of fewer than a quarter of them is under it.
    """
    limit = byte_limit("max_text_mb")
    n = len(value)
    if n * 4 <= limit:
        return
    size = n if n > limit else len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise over_limit(size, "max_text_mb", what=what, source=source, field=field)


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


def within_text_limit(value: str) -> bool:
    """Whether an inline value is within ``max_text_mb``: values over it are skipped when a tokenizer
    is fitted, as they are skipped when read (:meth:`medfm.modality.ModalityAdapter.load`)."""
    try:
        check_text_size(value, source=None)
    except DataError:
        return False
    return True
