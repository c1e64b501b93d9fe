"""Vendor OCT files that the vendor libraries do not read as published: Topcon and Heidelberg E2E.

**Topcon ``.fda`` / ``.fds`` (oct-converter 0.7.0, the latest release).** The reader calls
``np.fromstring(bytes, dtype)``, whose binary mode numpy 2 removed (``The binary mode of
fromstring is removed, use frombuffer instead``). No maintained release fixes it, so
:func:`topcon_readers` gives the two reader modules (``oct_converter.readers.fda``/``.fds``) their
own ``np`` namespace, :class:`_NumpyBinaryFromstring`: every attribute is numpy's, except that
``fromstring`` without ``sep`` is ``frombuffer(...).copy()`` — numpy 1's documented meaning of
the binary mode (a new, writable array of the bytes). numpy itself and every other module are
untouched, and none of the reader's parsing is copied. A release that stops calling
``fromstring`` makes the layer a no-op.

**Heidelberg ``.E2E`` (eyepy).** eyepy's high-level reader indexes an E2E through its directory
chunks (``MDbDir``) and raises ``No Series in the E2E file can be parsed`` when they are absent or
hold no complete series. :func:`read_e2e` reads through that index when it works; otherwise it walks the data containers themselves (``MDbData``,
60-byte header + item) and parses each with eyepy's own container format
(``eyepy.io.he.e2e_format.datacontainer_format``): B-scans (``float16u`` decoded by eyepy), the
NIR localizer (fundus) and laterality. A container whose declared item runs past the end of the
file (a truncated or minimised file) is listed in ``meta["unreadable"]`` with its kind and the
bytes missing; patient containers (type 9) are never decoded.
"""
from __future__ import annotations

import importlib
import types
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from medfm.errors import DataError
from medfm.input_files import read_bytes

E2E_BSCAN, E2E_LOCALIZER = 35652097, 33620481  # Type1073741824.type values (eyepy's names)
_E2E_MAGIC = b"MDbData"
_E2E_CONTAINER_HEADER = 60
_E2E_IMAGE_TYPE, _E2E_LATERALITY_TYPE, _E2E_PATIENT_TYPE = 1073741824, 11, 9


class _NumpyBinaryFromstring(types.ModuleType):
    """numpy, with numpy 1's binary ``fromstring`` (a copy of the bytes) for one library's modules."""

    def __init__(self) -> None:
        super().__init__("numpy")

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def fromstring(string, dtype=float, count=-1, *, sep="", like=None):
        if sep:  # text mode still exists in numpy 2
            return np.fromstring(string, dtype=dtype, count=count, sep=sep)
        return np.frombuffer(string, dtype=dtype, count=count).copy()


_NUMPY_COMPAT = _NumpyBinaryFromstring()


def topcon_readers(path: Path):
    """``oct_converter.readers`` with the Topcon modules' ``np`` set to the compatibility namespace."""
    try:
        readers = importlib.import_module("oct_converter.readers")
        for name in ("fda", "fds"):
            module = importlib.import_module(f"oct_converter.readers.{name}")
            if getattr(module, "np", None) is np:
                module.np = _NUMPY_COMPAT
    except ImportError as e:
        raise DataError("reading Topcon files needs the optional extra medfm[oct-vendor] "
                        f"(missing module {e.name!r})", source=str(path)) from e
    return readers


def _e2e_format(path: Path):
    try:
        from eyepy.io.he import e2e_format  # deferred: optional extra medfm[oct-vendor]
    except ImportError as e:
        raise DataError("reading .e2e files needs the optional extra medfm[oct-vendor] "
                        f"(missing module {e.name!r})", source=str(path)) from e
    return e2e_format


def e2e_containers(path: Path) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Every data container of an E2E file → ``(parsed, unreadable)``.

    ``parsed``: ``{"offset", "series", "slice", "type", "item"}`` (``item`` eyepy's object);
    ``unreadable``: ``{"offset", "series", "slice", "kind", "declared", "present"}`` (bytes).
    Series and slice ids are the file's; patient containers (type 9) are skipped, not decoded.
    """
    fmt = _e2e_format(path)
    data = read_bytes(path, limit="max_file_mb", what="E2E file")
    if not data.startswith(b"CMDb"):
        raise DataError("not a Heidelberg E2E file (no CMDb version header)", source=str(path))
    parsed: List[Dict[str, Any]] = []
    unreadable: List[Dict[str, Any]] = []
    pos, end = data.find(_E2E_MAGIC), 0
    while pos >= 0:
        if pos < end:  # a magic inside a complete container's pixels
            pos = data.find(_E2E_MAGIC, end)
            continue
        head = fmt.containerheader_format.parse(data[pos:pos + _E2E_CONTAINER_HEADER])
        kind = int(head.type)
        present = len(data) - pos - _E2E_CONTAINER_HEADER
        entry = {"offset": pos, "series": int(head.series_id), "slice": int(head.slice_id), "type": kind}
        if kind == _E2E_PATIENT_TYPE:
            end = pos + _E2E_CONTAINER_HEADER + min(head.size, present)
        elif head.size > present:  # truncated: the item ends where the next container starts
            nxt = data.find(_E2E_MAGIC, pos + 1)
            have = (nxt if nxt >= 0 else len(data)) - pos - _E2E_CONTAINER_HEADER
            unreadable.append({"offset": pos, "series": entry["series"], "slice": entry["slice"],
                               "kind": _e2e_kind(kind, data, pos), "declared": int(head.size), "present": int(have)})
            end = pos + _E2E_CONTAINER_HEADER + max(have, 0)
        else:
            try:
                entry["item"] = fmt.datacontainer_format.parse(data[pos:]).item
                parsed.append(entry)
            except Exception as e:  # construct raises many types for damaged items
                unreadable.append({"offset": pos, "series": entry["series"], "slice": entry["slice"],
                                   "kind": f"{_e2e_kind(kind, data, pos)} ({type(e).__name__})",
                                   "declared": int(head.size), "present": int(present)})
            end = pos + _E2E_CONTAINER_HEADER + head.size
        pos = data.find(_E2E_MAGIC, max(pos + 1, end))
    return parsed, unreadable


def _e2e_kind(kind: int, data: bytes, pos: int) -> str:
    if kind != _E2E_IMAGE_TYPE:
        return f"type {kind}"
    image_type = int.from_bytes(data[pos + 64:pos + 68], "little")
    return {E2E_BSCAN: "bscan", E2E_LOCALIZER: "localizer"}.get(image_type, f"image {image_type}")


def _eyepy_indexed(path: Path, want: str):
    """eyepy's own reader (series index of the directory chunks), or ``None`` when it finds no series."""
    try:
        import eyepy  # deferred: optional extra medfm[oct-vendor]
    except ImportError as e:
        raise DataError("reading .e2e files needs the optional extra medfm[oct-vendor] "
                        f"(missing module {e.name!r})", source=str(path)) from e
    try:
        vol = eyepy.import_heyex_e2e(str(path))
    except ValueError as e:
        if "No Series" in str(e):
            return None  # no usable directory: walk the containers
        raise
    if want == "volume":
        return np.asarray(vol.data, dtype=np.float32), {"format": "heidelberg-e2e", "reader": "eyepy series index"}
    return np.asarray(vol.localizer.data, dtype=np.float32), {"format": "heidelberg-e2e-slo",
                                                               "reader": "eyepy series index"}


def read_e2e(path: Path, *, want: str = "volume") -> Tuple[np.ndarray, Dict[str, Any]]:
    """Heidelberg E2E → ``((F, H, W) float32 B-scans, meta)`` or, ``want="localizer"``, ``((H, W), meta)``.

    The first series with B-scans is read (its slices in slice-id order); ``meta`` names the
    series read, every series present, the laterality and the containers left unreadable.
    """
    indexed = _eyepy_indexed(path, want)
    if indexed is not None:
        return indexed
    parsed, unreadable = e2e_containers(path)
    series = sorted({e["series"] for e in parsed} | {u["series"] for u in unreadable})
    lat = next((str(e["item"].laterality) for e in parsed if e["type"] == _E2E_LATERALITY_TYPE), None)
    images = [e for e in parsed if e["type"] == _E2E_IMAGE_TYPE]
    wanted = E2E_BSCAN if want == "volume" else E2E_LOCALIZER
    hits = [e for e in images if int(e["item"].type) == wanted]
    meta: Dict[str, Any] = {"series_present": series, "unreadable": unreadable, "reader": "eyepy container parser",
                            "format": "heidelberg-e2e" if want == "volume" else "heidelberg-e2e-slo"}
    if lat is not None:
        meta["laterality"] = {"76": "L", "82": "R"}.get(lat, lat).replace("LateralityEnum.", "")
    if not hits:
        lost = [u["kind"] for u in unreadable]
        raise DataError(f"no readable {'B-scan' if want == 'volume' else 'localizer'} in the E2E file "
                        f"(series {series}; unreadable containers: {lost or 'none'})", source=str(path))
    sid = hits[0]["series"]
    hits = sorted((e for e in hits if e["series"] == sid), key=lambda e: e["slice"])
    meta["series_read"] = sid
    if want == "volume":
        return np.stack([np.asarray(e["item"].data, dtype=np.float32) for e in hits]), meta
    return np.asarray(hits[0]["item"].data, dtype=np.float32), meta
