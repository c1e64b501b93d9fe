"""Where a manifest's path cells may lead: the one confinement rule of every reader.

A manifest's relative cells resolve against the manifest's folder. Reading them is
*confined*: a cell that leads out of the allowed folders (``../``, an absolute path elsewhere)
is a :class:`~medfm.errors.DataError` for that sample (logged, counted, skipped in a run), and
the file is never opened. The allowed folders are, in order of precedence:

1. ``data.root`` when a config sets it (that folder alone);
2. otherwise the manifest's folder **and** the data roots ``medfm manifest`` recorded in the
   manifest's sidecar (``<manifest>.summary.json`` → ``"data_roots"``: the folders it walked,
   written relative to the manifest's folder). So a manifest written to ``cohort/cohort.csv``
   from ``../shared/data`` (cells ``../../shared/data/...``) is read as it is.

``data.confine_paths: false`` turns confinement off. A manifest without a sidecar whose path
cells are all absolute is not confined (there is no folder to confine it to).

The check is lexical (``os.path.normpath`` of the absolute path); symlinks inside a root are
followed. A recorded root that is a filesystem root, the home folder or one of its ancestors
is not used (a warning says so): a sidecar never unlocks the whole disk.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from ..config_files import load_data_file
from ..errors import ConfigError, DataError
from ..input_files import confine_target

log = logging.getLogger("medfm.data")

#: the sidecar ``medfm manifest`` writes beside a manifest, and its key that lists the walked data roots
SIDECAR_SUFFIX = ".summary.json"
ROOTS_KEY = "data_roots"


def sidecar_path(manifest: os.PathLike) -> Path:
    """``<manifest>.summary.json``: the sidecar ``medfm manifest`` writes beside a manifest."""
    return Path(str(manifest) + SIDECAR_SUFFIX)


def _absolute(path: os.PathLike) -> Path:
    """Absolute and normalised, symlinks kept (the lexical form the check compares)."""
    return Path(os.path.normpath(os.path.abspath(os.path.expanduser(str(path)))))


def roots_entry(folders: Iterable[os.PathLike], manifest_dir: os.PathLike) -> List[str]:
    """The ``data_roots`` value to record: each folder relative to the manifest's folder
    (absolute only where no relative path exists, e.g. another drive), without duplicates."""
    base = _absolute(manifest_dir)
    out: List[str] = []
    for f in folders:
        p = _absolute(f)
        try:
            s = os.path.relpath(p, base)
        except ValueError:  # another drive on Windows
            s = str(p)
        s = Path(s).as_posix()
        if s not in out:
            out.append(s)
    return out


def _unsafe(root: Path) -> bool:
    """A filesystem root, the home folder or an ancestor of it: too wide to be a data root."""
    if root == Path(root.anchor):
        return True
    home = _absolute(Path.home())
    return home == root or home.is_relative_to(root)


def recorded_roots(manifest: os.PathLike) -> List[Path]:
    """The data roots recorded in ``manifest``'s sidecar, absolute (``[]`` without a sidecar).

    Raises:
        DataError: a sidecar that is not JSON or whose ``data_roots`` is not a list of strings.
    """
    side = sidecar_path(manifest)
    if not side.is_file():
        return []
    try:
        data = load_data_file(side, kind="json")  # size and nesting bounded
    except (OSError, ValueError, ConfigError) as e:
        raise DataError(f"unreadable manifest sidecar: {e}", source=str(side)) from None
    entry = data.get(ROOTS_KEY, []) if isinstance(data, dict) else []
    if not isinstance(entry, list) or not all(isinstance(r, str) and r for r in entry):
        raise DataError(f"{ROOTS_KEY} must be a list of folder paths, got {entry!r}", source=str(side),
                        field=ROOTS_KEY)
    base = Path(manifest).parent
    out: List[Path] = []
    for r in entry:
        p = Path(r).expanduser()
        root = _absolute(p if p.is_absolute() else base / p)
        if _unsafe(root):
            log.warning("%s: recorded data root %r is a filesystem root or the home folder; not used for "
                        "confinement (set data.root to widen it on purpose)", side, r)
        elif root not in out:
            out.append(root)
    return out


@dataclass(frozen=True)
class Confinement:
    """The folders a manifest's path cells must stay inside (absolute, normalised)."""

    roots: Tuple[Path, ...]

    def allows(self, path: os.PathLike) -> bool:
        """Whether ``path`` (absolute, or relative to the working directory) lies inside a root."""
        p = _absolute(path)
        return any(p.is_relative_to(r) for r in self.roots)

    def check(self, path: os.PathLike, value: Any, column: Optional[str] = None) -> None:
        """:class:`DataError` naming the cell ``value`` when ``path`` (its resolved form) leaves every root."""
        if not self.allows(path):
            where = ", ".join(str(r) for r in self.roots)
            raise DataError(f"path {value!r} leads outside the data root{'s' if len(self.roots) > 1 else ''} "
                            f"{where}; set data.root to a folder that holds it (or data.confine_paths: false)",
                            field=column)
        if os.path.lexists(path):  # and so must what it leads to: a symlink is followed, then checked
            confine_target(path, self.roots, field=column)


def confinement(*, root: Optional[os.PathLike] = None, confine: bool = True,
                base_dir: Optional[os.PathLike] = None, recorded: Sequence[os.PathLike] = (),
                has_relative_cells: bool = False) -> Optional[Confinement]:
    """The confinement of one manifest by the rule of the module docstring (``None``: not confined).

    Args:
        root: ``data.root`` (already resolved by the config path rule), or None.
        confine: ``data.confine_paths``.
        base_dir: the manifest's folder (relative cells resolve against it).
        recorded: the data roots of the manifest's sidecar (:func:`recorded_roots`).
        has_relative_cells: whether any path cell of the manifest is relative.
    """
    if not confine:
        return None
    if root is not None:
        return Confinement((_absolute(root),))
    if base_dir is None or not (recorded or has_relative_cells):
        return None
    roots = [_absolute(base_dir)]
    roots += [_absolute(r) for r in recorded if _absolute(r) not in roots]
    return Confinement(tuple(roots))
