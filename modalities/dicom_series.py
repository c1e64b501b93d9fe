"""One DICOM series of a folder that holds several: the ``FOLDER#SeriesInstanceUID`` reference.

``medfm manifest`` writes one row per series of such a folder, each cell ``FOLDER#UID`` (the UID
as the files carry it, which ``medfm inspect FOLDER#UID`` also takes); the CT adapter reads the
series the reference names (:func:`split_series_reference`). A folder of one series stays a plain
folder cell. Files without a SeriesInstanceUID cannot be told apart and stay unreadable there.

Only adapters that read a DICOM series folder take the reference (:data:`SERIES_FOLDER_MODALITIES`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Tuple

#: adapters whose ``read`` takes ``FOLDER#UID`` (a series folder → one volume)
SERIES_FOLDER_MODALITIES = ("ct",)
#: a DICOM UID (PS3.5 §9.1): digits and dots, at most 64 characters
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_uid(value: str) -> bool:
    return len(value) <= 64 and _UID.fullmatch(value) is not None


def series_reference(folder: Any, uid: str) -> str:
    """``FOLDER#UID``: the cell that names one series of a multi-series folder."""
    return f"{folder}#{uid}"


def split_series_reference(source: Any) -> Tuple[str, Optional[str]]:
    """``"dir#1.2.3"`` → ``("dir", "1.2.3")`` when ``dir`` is a folder and ``1.2.3`` a UID; else ``(source, None)``."""
    s = str(source)
    head, sep, uid = s.rpartition("#")
    if sep and is_uid(uid) and Path(head).expanduser().is_dir():
        return head, uid
    return s, None
