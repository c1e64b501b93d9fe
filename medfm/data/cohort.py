"""Build a cohort manifest from folders and tables (the engine side of ``medfm manifest``).

Modality-specific *scanners* (registered in :data:`SOURCES`, implemented in
``medfm.modalities.sources``) walk a source and yield :class:`Entry` objects: one
manifest cell each, with the raw patient and study keys it belongs to. This module,
which knows nothing about DICOM or FASTA, turns entries into rows:

* entries sharing a (patient, study) key become one row — paired modalities;
* ``patient_id`` is a salted hash (HMAC-SHA256) of the raw patient key; sample ids of
  entries keyed by a study are a salted hash of the study key. Raw keys never leave
  this module;
* an optional patient-grouped split (:func:`medfm.data.splits.assign_patients`);
* a summary: rows per modality, missing modalities, unreadable files.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import pandas as pd
from tqdm.auto import tqdm

from ..errors import DataError, UsageError
from ..input_files import inside, not_a_file
from ..registry import SOURCES
from .confine import ROOTS_KEY, roots_entry, sidecar_path
from .splits import assign_patients

log = logging.getLogger("medfm.manifest")

register_source = SOURCES.register


@dataclass
class Entry:
    """One manifest cell found by a scanner.

    Attributes:
        modality: the column it goes into (``ct``, ``ecg``, ``dna``, ...).
        value: the cell: an absolute path (made relative to the manifest on writing when
            ``is_path``), a ``path#record`` reference, or an inline value.
        key: a name for the sample unique within its source, used for the row id when
            there is no study; must not be a patient identifier (record names, process ids).
        patient: raw patient identifier (hashed before writing; ``None`` = unknown: the
            sample is its own patient).
        study: raw study/visit key (hashed); entries sharing ``(patient, study)`` pair into one row.
        columns: extra columns (labels, reports, taxonomy), written as they are.
        source: the file or folder it came from (for messages).
    """

    modality: str
    value: str
    key: str
    patient: Optional[str] = None
    study: Optional[str] = None
    columns: Dict[str, Any] = field(default_factory=dict)
    is_path: bool = True
    source: str = ""


@dataclass
class Unreadable:
    """A file a scanner could not use, and why (listed in the summary)."""

    path: str
    reason: str


#: folders below a source walked at most (deeper ones are listed as unreadable)
MAX_DEPTH = 32


@dataclass
class ScanContext:
    """Options every scanner sees: ``modality`` forces the column (``xray=folder/`` on the command line).

    The walk's own state: ``root`` (the source folder, resolved), ``follow_links`` (follow symlinks
    that lead outside ``root``), ``max_depth`` and ``visited`` (``(st_dev, st_ino)`` of the folders
    walked: each real folder once, so a ``loop -> .`` link adds nothing).
    """

    modality: Optional[str] = None
    exclude: Tuple[str, ...] = ()
    root: Optional[str] = None
    follow_links: bool = False
    max_depth: int = MAX_DEPTH
    visited: set = field(default_factory=set)


def salted_hash(value: str, salt: bytes, n: int = 16) -> str:
    """HMAC-SHA256 of ``value`` keyed by ``salt``, first ``n`` hex digits. Irreversible without the salt."""
    return hmac.new(salt, str(value).encode("utf-8"), hashlib.sha256).hexdigest()[:n]


def salt_from_text(text: str) -> bytes:
    """A salt given as text (``medfm manifest --salt TEXT``): its UTF-8 bytes, at least 16 of them.

    For public data and reproducible examples (the README walkthrough pins one so that every reader
    gets the same split); a salt written in a document is public, so keep patient cohorts on a
    private salt file.
    """
    salt = str(text).encode("utf-8")
    if len(salt) < 16:
        raise UsageError(f"--salt must be at least 16 characters (UTF-8 bytes), got {len(salt)}")
    return salt


def load_or_create_salt(path: os.PathLike) -> bytes:
    """The salt in ``path`` (hex), created with :mod:`secrets` on first use; keep it private.

    The same salt gives the same ``patient_id`` for the same patient across manifests
    (pairing of cohorts built separately); another salt gives unrelated ids.
    """
    p = Path(path)
    if p.is_file():
        text = p.read_text().strip()
        try:
            salt = bytes.fromhex(text)
        except ValueError:
            raise DataError("salt file is not hex", source=str(p)) from None
        if len(salt) < 16:
            raise DataError("salt is shorter than 16 bytes", source=str(p))
        return salt
    p.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_bytes(32)
    fd = os.open(str(p), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(salt.hex() + "\n")
    return salt


def parse_source(spec: str) -> Tuple[Optional[str], Path]:
    """``"PATH"`` or ``"MODALITY=PATH"`` (forces the column of what the source holds)."""
    mod, sep, rest = spec.partition("=")
    if sep and re.fullmatch(r"[a-z][a-z0-9_]*", mod) and not Path(spec).exists():
        return mod, Path(rest)
    return None, Path(spec)


def scan(spec: str, exclude: Sequence[os.PathLike] = (), *, follow_links: bool = False,
         max_depth: int = MAX_DEPTH) -> Iterator[Union[Entry, Unreadable]]:
    """Everything the registered scanners find under one source (a file or a folder).

    A file goes to the first scanner that claims it; a folder is offered whole to the
    scanners that take folders (a DICOM tree, a WFDB folder, an image folder with label
    subfolders) and else walked file by file: each real folder once, at most ``max_depth``
    levels down, never through a folder symlink leading outside the source unless ``follow_links``.
    Named pipes, sockets and devices are listed as unreadable, never opened.
    """
    forced, path = parse_source(spec)
    if not os.path.lexists(path):
        raise DataError("source not found", source=str(path))
    ctx = ScanContext(modality=forced, exclude=tuple(str(Path(x).resolve()) for x in exclude),
                      root=os.path.realpath(path), follow_links=follow_links, max_depth=max_depth)
    scanners = [cls() for _, cls in sorted(SOURCES.items(), key=lambda kv: getattr(kv[1], "priority", 50))]
    refused = _refusal(path, ctx)
    if refused:
        yield Unreadable(str(path), refused)
        return
    if path.is_file():
        for s in scanners:
            if s.claims_file(path, ctx):
                yield from s.scan_file(path, ctx)
                return
        yield Unreadable(str(path), "no scanner reads this kind of file")
        return
    yield from _walk(path, scanners, ctx)


def _refusal(path: Path, ctx: ScanContext) -> Optional[str]:
    """Why the walk does not enter or offer ``path`` (``None``: it does): not a file nor a folder, a
    symlink loop, or a folder symlink leading outside the source without ``follow_links``. (A file
    symlink is listed; reading it is confined to the data root: :class:`medfm.data.ManifestDataset`.)"""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"cannot use it: {e.strerror or e}"  # a dangling link, a loop of links
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return not_a_file(path, st.st_mode).reason
    if stat.S_ISDIR(st.st_mode) and path.is_symlink() and not ctx.follow_links and not inside(path, ctx.root):
        return (f"a symlink to {os.path.realpath(path)}, outside the source folder {ctx.root}; not followed "
                "(--follow-links follows it)")
    return None


def _walk(folder: Path, scanners, ctx: ScanContext, depth: int = 0) -> Iterator[Union[Entry, Unreadable]]:
    """Folders first offered whole, then their files one by one, recursively (hidden entries skipped);
    each real folder once (by ``(st_dev, st_ino)``), at most ``ctx.max_depth`` levels down."""
    st = os.stat(folder)
    if (st.st_dev, st.st_ino) in ctx.visited:
        yield Unreadable(str(folder), "a folder already walked (a symlink to it or above it); not walked again")
        return
    ctx.visited.add((st.st_dev, st.st_ino))
    if depth > ctx.max_depth:
        yield Unreadable(str(folder), f"more than {ctx.max_depth} folders deep below the source; not walked")
        return
    for s in scanners:
        if s.claims_folder(folder, ctx):
            yield from s.scan_folder(folder, ctx)
            return
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or str(p.resolve()) in ctx.exclude:
            continue
        refused = _refusal(p, ctx)
        if refused:
            yield Unreadable(str(p), refused)
        else:
            files.append(p)
    taken: set = set()
    for s in scanners:  # scanners that gather several files of one folder (DICOM series, WFDB records)
        if hasattr(s, "scan_files"):
            mine = [p for p in files if p.is_file() and p not in taken and s.claims_file(p, ctx)]
            if mine:
                taken.update(mine)
                yield from s.scan_files(mine, ctx)
    for p in files:
        if p.is_dir():
            yield from _walk(p, scanners, ctx, depth + 1)
        elif p not in taken:
            for s in scanners:
                if not hasattr(s, "scan_files") and s.claims_file(p, ctx):
                    yield from s.scan_file(p, ctx)
                    break


@dataclass
class BuildResult:
    """The manifest frame and its summary (a JSON-able dict)."""

    df: pd.DataFrame
    summary: Dict[str, Any]


def build_manifest(sources: Sequence[str], out: os.PathLike, *, salt: bytes,
                   split: Optional[Dict[str, float]] = None, seed: int = 0,
                   verify: Optional[Callable[[Entry], Optional[str]]] = None, follow_links: bool = False,
                   max_depth: int = MAX_DEPTH, progress: bool = False) -> BuildResult:
    """Scan ``sources`` and return the manifest rows (paths relative to ``out``'s folder).

    Args:
        sources: paths (or ``MODALITY=PATH``) of folders and files.
        out: where the manifest will be written (relative paths are computed against its folder).
        salt: key of the identifier hashes (:func:`load_or_create_salt`).
        split: e.g. ``{"val": 0.1, "test": 0.2}``; the rest is ``train``. Grouped by patient.
        verify: optional ``entry -> None | reason``; a reason drops the cell and lists it as unreadable.
        follow_links: follow symlinks that lead outside a source folder (default: listed, not followed).
        max_depth: folders walked below a source at most.
        progress: a bar of the cells found (and read, with ``verify``) on stderr.
    """
    base = Path(os.path.abspath(out)).parent
    bar = tqdm(desc="manifest", unit="cell", disable=not progress)
    entries: List[Entry] = []
    unreadable: List[Dict[str, str]] = []
    for spec in sources:
        for item in scan(spec, exclude=[out, sidecar_path(out)], follow_links=follow_links,
                         max_depth=max_depth):
            bar.update(1)
            if isinstance(item, Unreadable):
                unreadable.append({"path": _rel(item.path, base), "reason": item.reason})
                continue
            if verify is not None:
                reason = verify(item)
                if reason:
                    unreadable.append({"path": _rel(item.value if item.is_path else item.source, base), "reason": reason})
                    continue
            entries.append(item)
    bar.close()
    entries = _merge_duplicates(entries)
    if not entries:
        raise DataError(f"nothing usable found in {list(sources)} ({len(unreadable)} unreadable file(s))",
                        source=", ".join(map(str, sources)))
    rows: Dict[Tuple, Dict[str, Any]] = {}
    path_warnings = 0
    for e in entries:
        if e.study is not None:
            rk = ("study", e.patient, e.study)
        else:
            rk = ("sample", e.key, e.source)
        row = rows.get(rk)
        if row is None:
            pid = salted_hash(e.patient, salt) if e.patient is not None else salted_hash(f"sample:{Path(e.source).name}:{e.key}", salt)
            sid = f"st-{salted_hash(f'{e.patient}|{e.study}', salt, 12)}" if e.study is not None else _safe_id(e.key)
            row = rows[rk] = {"id": sid, "patient_id": pid}
        value = _rel(e.value, base) if e.is_path else e.value
        if e.patient and len(e.patient) >= 4 and e.is_path and e.patient in value:
            path_warnings += 1
        if row.get(e.modality) not in (None, value):
            # a second cell of one modality in the same study: it becomes its own row of that study
            rk2 = rk + (e.modality, value)
            row = rows.setdefault(rk2, {"id": f"{row['id']}-{len(rows)}", "patient_id": row["patient_id"]})
        row[e.modality] = value
        for k, v in e.columns.items():
            if v is not None and row.get(k) is None:
                row[k] = v
    df = pd.DataFrame(list(rows.values()))
    df = _dedupe_ids(df)
    modalities = sorted({e.modality for e in entries})
    if split:

        assign = assign_patients(list(df["patient_id"]), split, seed=seed)
        df["split"] = [assign[p] for p in df["patient_id"]]
    front = ["id", "patient_id"] + (["split"] if split else []) + modalities
    df = df[front + [c for c in df.columns if c not in front]]
    summary = summarize(df, modalities, unreadable)
    # the folders walked: readers confine the manifest's path cells to them (medfm.data.confine)
    summary[ROOTS_KEY] = roots_entry([_source_folder(s) for s in sources], base)
    if path_warnings:
        summary["paths_containing_patient_id"] = path_warnings
        log.warning("%d path(s) in the manifest contain the patient identifier of their DICOM header; "
                    "rename those folders before sharing the manifest", path_warnings)
    return BuildResult(df, summary)


def _source_folder(spec: str) -> Path:
    """The folder a source spec stands for: the folder itself, or a file's folder."""
    _, path = parse_source(spec)
    return path if path.is_dir() else path.parent


def _merge_duplicates(entries: List[Entry]) -> List[Entry]:
    """One entry per (modality, file): a file named by a table and also found in a folder walk stays once,
    as the table's entry (it knows the patient and the report), with the folder entry's columns merged in."""
    by_key: Dict[Tuple[str, str], Entry] = {}
    out: List[Entry] = []
    for e in entries:
        if not e.is_path:
            out.append(e)
            continue
        k = (e.modality, os.path.abspath(e.value))
        prev = by_key.get(k)
        if prev is None:
            by_key[k] = e
            out.append(e)
            continue
        richer, other = (e, prev) if _richness(e) > _richness(prev) else (prev, e)
        for c, v in other.columns.items():
            richer.columns.setdefault(c, v)
        if richer is e:
            out[out.index(prev)] = e
            by_key[k] = e
    return out


def _richness(e: Entry) -> int:
    return 2 * (e.patient is not None) + (e.study is not None) + (os.path.abspath(e.source) != os.path.abspath(e.value))


def summarize(df: pd.DataFrame, modalities: Sequence[str], unreadable: List[Dict[str, str]]) -> Dict[str, Any]:
    """Rows per modality, rows missing each modality, paired rows, patients, splits, unreadable files."""
    present = df[list(modalities)].notna()
    s: Dict[str, Any] = {
        "n_rows": int(len(df)), "n_patients": int(df["patient_id"].nunique()),
        "rows_per_modality": {m: int(present[m].sum()) for m in modalities},
        "rows_missing_modality": {m: int((~present[m]).sum()) for m in modalities},
        "rows_with_n_modalities": {str(k): int(v) for k, v in present.sum(1).value_counts().sort_index().items()},
        "n_unreadable": len(unreadable), "unreadable": unreadable[:200],
    }
    if "split" in df.columns:
        s["split_rows"] = {k: int(v) for k, v in df["split"].value_counts().sort_index().items()}
        s["split_patients"] = {k: int(v) for k, v in df.groupby("split")["patient_id"].nunique().items()}
    return s


def format_summary(s: Dict[str, Any]) -> str:
    """The summary as a few lines for the terminal."""
    lines = [f"{s['n_rows']} rows, {s['n_patients']} patients"]
    w = max(len(m) for m in s["rows_per_modality"]) if s["rows_per_modality"] else 4
    lines.append(f"  {'modality':<{max(w, 8)}}  rows  missing")
    for m, n in s["rows_per_modality"].items():
        lines.append(f"  {m:<{max(w, 8)}} {n:>5} {s['rows_missing_modality'][m]:>8}")
    lines.append("  rows by number of modalities: " + ", ".join(f"{k}: {v}" for k, v in s["rows_with_n_modalities"].items()))
    if "split_rows" in s:
        lines.append("  split rows: " + ", ".join(f"{k} {v}" for k, v in s["split_rows"].items())
                     + "; patients: " + ", ".join(f"{k} {v}" for k, v in s["split_patients"].items()))
    lines.append(f"  unreadable files: {s['n_unreadable']}")
    for u in s["unreadable"][:5]:
        lines.append(f"    {u['path']}: {u['reason']}")
    if s["n_unreadable"] > 5:
        lines.append(f"    … {s['n_unreadable'] - 5} more in the summary JSON")
    return "\n".join(lines)


def parse_fractions(spec: str) -> Dict[str, float]:
    """``"train=0.7,val=0.1,test=0.2"`` (or ``"val=0.1,test=0.2"``) → ``{"val": 0.1, "test": 0.2}``."""
    out: Dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, sep, frac = part.partition("=")
        try:
            out[name.strip()] = float(frac)
        except ValueError:
            raise UsageError(f"--split takes NAME=FRACTION pairs, got {part!r}") from None
        if not sep or not name.strip():
            raise UsageError(f"--split takes NAME=FRACTION pairs, got {part!r}")
    train = out.pop("train", None)
    total = sum(out.values()) + (train or 0.0)
    if train is not None and abs(total - 1.0) > 1e-6:
        raise UsageError(f"--split fractions sum to {total:g}, not 1")
    if any(v < 0 for v in out.values()) or sum(out.values()) >= 1:
        raise UsageError("--split: the non-train fractions must be >= 0 and leave some rows for train")
    return out


def _rel(value: str, base: Path) -> str:
    path, sep, rec = str(value).partition("#")
    p = os.path.abspath(os.path.expanduser(path))  # not resolve(): keep the user's symlinks
    try:
        path = os.path.relpath(p, base)
    except ValueError:  # another drive on Windows
        path = p
    return path + (sep + rec if sep else "")


def _safe_id(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(key)).strip("_") or "sample"


def _dedupe_ids(df: pd.DataFrame) -> pd.DataFrame:
    seen: Dict[str, int] = {}
    ids = []
    for i in df["id"]:
        n = seen.get(i, 0)
        seen[i] = n + 1
        ids.append(i if n == 0 else f"{i}-{n + 1}")
    df = df.copy()
    df["id"] = ids
    return df
