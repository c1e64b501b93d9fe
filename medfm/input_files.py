"""Opening input files: regular files only, symlink targets confined, every read bounded.

Every reader of user data goes through here before a byte is read:

* :func:`check_regular` — ``os.stat`` (following links) *before* ``open``: a named pipe, a
  socket or a character/block device is refused by name (``'x.png' is a named pipe, not a
  file``), so a FIFO cannot block a run and ``/dev/zero`` cannot be read until memory runs out;
* :func:`open_regular` — opens with ``O_NONBLOCK`` (a FIFO swapped in after the check cannot
  block the ``open``) and checks the opened descriptor again with ``fstat``;
* :func:`read_bytes` / :func:`read_text` / :func:`open_bounded` — read at most the limit and one
  byte more (:mod:`medfm.limits`), so a size the file system misreports (``st_size`` 0 for
  ``/proc`` files) cannot pass a limit; :func:`open_bounded` is a streaming handle for
  parsers (Biopython, pandas), gzip decompressed output bounded as well;
* :func:`confine_target` — the *target* of a path (symlinks resolved) must lie inside a data
  root, so a ``report.txt -> /etc/shadow`` link inside the root is refused.

Errors are :class:`~medfm.errors.DataError` naming the file.
"""
from __future__ import annotations

import gzip
import io
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Optional, Sequence, Union

from .errors import DataError
from .limits import byte_limit, over_limit

PathLike = Union[str, os.PathLike]

#: what a non-regular file is, by its ``st_mode``
_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def kind_of(mode: int) -> Optional[str]:
    """``None`` for a regular file, else what ``st_mode`` says it is (``"a named pipe"``, ...)."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_a_file(path: PathLike, mode: int, *, source: Any = None) -> DataError:
    """``'x.png' is a named pipe, not a file`` (the link's target named when ``path`` is a symlink)."""
    p = Path(str(path))
    via = ""
    if p.is_symlink():
        via = f" (a symlink to {os.path.realpath(p)})"
    return DataError(f"{p.name!r}{via} is {kind_of(mode)}, not a file", source=str(source or p), field="file type")


def check_regular(path: PathLike, *, what: str = "file", allow_dir: bool = False, source: Any = None) -> os.stat_result:
    """``os.stat`` of ``path`` (links followed); :class:`DataError` unless it is a regular file
    (or a folder with ``allow_dir``). Nothing is opened."""
    p = Path(str(path)).expanduser()
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise DataError(f"{what} not found", source=str(source or p)) from None
    except OSError as e:  # a symlink loop, a permission error
        raise DataError(f"cannot use {what}: {e.strerror or e}", source=str(source or p)) from None
    if stat.S_ISREG(st.st_mode) or (allow_dir and stat.S_ISDIR(st.st_mode)):
        return st
    raise not_a_file(p, st.st_mode, source=source)


def is_regular(path: PathLike) -> bool:
    """Whether ``path`` (links followed) is a regular file; ``False`` for missing and special files."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def open_regular(path: PathLike, *, what: str = "file", source: Any = None) -> BinaryIO:
    """A binary read handle of a regular file: checked with ``stat`` before ``open``, opened with
    ``O_NONBLOCK`` (no hang if the path became a FIFO meanwhile) and checked again with ``fstat``."""
    check_regular(path, what=what, source=source)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(str(Path(str(path)).expanduser()), flags)
    except OSError as e:
        raise DataError(f"cannot open {what}: {e.strerror or e}", source=str(source or path)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_a_file(path, st.st_mode, source=source)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _Bounded(io.RawIOBase):
    """A raw stream that raises :class:`DataError` once more than ``limit`` bytes were read."""

    def __init__(self, inner: BinaryIO, limit: int, key: str, what: str, source: Any):
        self._inner, self._left, self._limit = inner, limit, limit
        self._key, self._what, self._source = key, what, source

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        want = min(len(b), self._left + 1)
        data = self._inner.read(want)
        n = len(data)
        if n > self._left:
            raise over_limit(self._limit + 1, self._key, what=self._what, source=self._source)
        self._left -= n
        b[:n] = data
        return n

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            super().close()


def open_bounded(path: PathLike, *, limit: str = "max_file_mb", what: str = "file", text: bool = False,
                 encoding: str = "utf-8", errors: str = "strict", decompress: Optional[bool] = None,
                 source: Any = None):
    """A streaming read handle of a regular file that fails (:class:`DataError` naming ``limit``)
    after the limit's bytes: for parsers that read as they go (Biopython, ``pandas.read_csv``).

    ``decompress`` (default: a ``.gz`` name) reads gzip; the decompressed bytes are bounded too,
    so a small gzip bomb fails at the limit instead of filling memory. ``text`` gives a text handle.
    """
    src = source or path
    cap = byte_limit(limit)
    raw = _Bounded(open_regular(path, what=what, source=source), cap, limit, what, src)
    stream: Any = io.BufferedReader(raw)
    if decompress if decompress is not None else str(path).lower().endswith(".gz"):
        stream = io.BufferedReader(_Bounded(gzip.GzipFile(fileobj=stream, mode="rb"), cap, limit,
                                            f"{what} (decompressed)", src))
    return io.TextIOWrapper(stream, encoding=encoding, errors=errors, newline=None) if text else stream


def read_bytes(path: PathLike, *, limit: str = "max_file_mb", what: str = "file", source: Any = None) -> bytes:
    """All bytes of a regular file, read with a cap of the limit plus one byte."""
    cap = byte_limit(limit)
    with open_regular(path, what=what, source=source) as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise over_limit(len(data), limit, what=what, source=source or path)
    return data


def read_text(path: PathLike, *, limit: str = "max_file_mb", what: str = "file", encoding: str = "utf-8",
              errors: str = "strict", source: Any = None) -> str:
    """:func:`read_bytes` decoded; an undecodable file is a :class:`DataError` naming it."""
    data = read_bytes(path, limit=limit, what=what, source=source)
    try:
        return data.decode(encoding, errors)
    except UnicodeDecodeError as e:
        raise DataError(f"{what} is not {encoding} text: {e.reason} at byte {e.start}", source=str(source or path)) from None


def read_head(path: PathLike, n: int) -> bytes:
    """The first ``n`` bytes of a regular file (format sniffing); ``b""`` for anything else, never blocking."""
    try:
        with open_regular(path) as fh:
            return fh.read(n)
    except (DataError, OSError):
        return b""


def _roots(roots: Union[PathLike, Iterable[PathLike]]) -> Sequence[Path]:
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    return [Path(os.path.realpath(os.path.expanduser(str(r)))) for r in roots]


def inside(path: PathLike, roots: Union[PathLike, Iterable[PathLike]]) -> bool:
    """Whether the target of ``path`` (symlinks resolved) lies inside one of ``roots`` (resolved too)."""
    target = Path(os.path.realpath(os.path.expanduser(str(path))))
    return any(target == r or target.is_relative_to(r) for r in _roots(roots))


def confine_target(path: PathLike, roots: Union[PathLike, Iterable[PathLike]], *, field: Optional[str] = None,
                   source: Any = None) -> Path:
    """``path`` when what it leads to (symlinks resolved, ``..`` applied) is inside one of ``roots``.

    Raises:
        DataError: the target is outside: ``'r.txt' is a symlink to /etc/shadow, outside the data root``.
    """
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    if inside(p, roots):
        return p
    target = os.path.realpath(p)
    shown = ", ".join(str(r) for r in _roots(roots))
    how = f"leads to {target}" if target != str(p) else "is"
    raise DataError(f"{p.name!r} {how}, outside the data root {shown}; set data.root to a folder that holds "
                    "it (or data.confine_paths: false)", source=None if source is None else str(source), field=field)
