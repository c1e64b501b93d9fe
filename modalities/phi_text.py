"""Protected health information in free text: names, record numbers, dates, phone numbers, e-mails.

Rule-based detectors (regular expressions), in the manner of the regex layer of the Philter and
Physionet ``deid`` tools, for reports and other free-text manifest cells. A maintained library with
a trained recogniser (Presidio) needs a spaCy model downloaded at run time, which medfm never does;
the PyPI ``deid`` package de-identifies DICOM headers from recipes, not free text. What this module
finds is therefore a floor: every hit is a reason to look, and no hit is not proof of absence.

:func:`find_phi` returns spans (kind, start, end); the matched text is never returned to a caller
that reports it: :func:`redact` replaces each span by ``[KIND]``.

=============  =====================================================================================
kind           pattern
=============  =====================================================================================
``name``       a title (Dr, Mr, Mrs, Ms, Miss, Prof) or a label (patient, name, pt, seen by, signed by,
               dictated by) followed by one to three capitalised words; ``Last^First`` (DICOM PN)
``record``     MRN / medical record / record number / accession / patient id / hospital number / ID
               followed by an id of 5 or more digits or letters with at least 4 digits; any run of
               7 or more digits
``date``       ``12/31/2020``, ``31.12.2020`` (one separator), ``2020-12-31``, ``December 31, 2020``, ``31 Dec 2020``
``phone``      ``(555) 123-4567``, ``555-123-4567``, ``+1 555 123 4567``
``email``      ``name@host.tld``
=============  =====================================================================================
"""
from __future__ import annotations

import re
from typing import Dict, List, Tuple

__all__ = ["PATTERNS", "find_phi", "redact"]

_CAP = r"[A-Z][a-z'\-]+"
_MONTHS = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|"
           r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")

#: kind → compiled patterns (the group ``v``, when present, is the span reported; else the whole match)
PATTERNS: Dict[str, List["re.Pattern[str]"]] = {
    "name": [
        re.compile(rf"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+(?P<v>{_CAP}(?:\s+{_CAP}){{0,2}})"),
        re.compile(rf"(?i:\b(?:patient(?:\s+name)?|name|pt|seen\s+by|signed\s+by|dictated\s+by|"
                   rf"reviewed\s+by|attending))\s*[:\-]?\s+(?!(?:Dr|Mr|Mrs|Ms|Miss|Prof)\b)(?P<v>{_CAP}(?:\s+{_CAP}){{0,2}})"),
        re.compile(r"\b(?P<v>[A-Z][A-Za-z'\-]+\^[A-Z][A-Za-z'\-]+(?:\^[A-Za-z'\-]*)*)"),
    ],
    "record": [
        re.compile(r"(?i:\b(?:mrn|mr\s*#|medical\s+record(?:\s+(?:number|no\.?))?|record\s+(?:number|no\.?|#)|"
                   r"accession(?:\s+(?:number|no\.?))?|patient\s+id|hospital\s+(?:number|no\.?)|id))"
                   r"\s*[:#\-]?\s*(?P<v>(?=[A-Za-z\-]*\d[A-Za-z\-]*\d[A-Za-z\-]*\d[A-Za-z\-]*\d)[A-Za-z0-9\-]{5,})"),
        re.compile(r"(?<![\d.])(?P<v>\d{7,})(?!\d)(?!\.\d)"),
    ],
    "date": [
        re.compile(r"(?<![\d.])(?P<v>\d{1,2}(?P<sep>[/.\-])\d{1,2}(?P=sep)(?:\d{4}|\d{2}))(?!\d)(?!\.\d)"),
        re.compile(r"\b(?P<v>(?:19|20)\d{2}-\d{1,2}-\d{1,2})\b"),
        re.compile(rf"\b(?P<v>{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+(?:19|20)\d{{2}})\b"),
        re.compile(rf"\b(?P<v>\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\.?,?\s+(?:19|20)\d{{2}})\b"),
    ],
    "phone": [
        re.compile(r"(?P<v>(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{3}\)\s*|\b\d{3}[\s.\-])\d{3}[\s.\-]\d{4})\b"),
    ],
    "email": [re.compile(r"\b(?P<v>[\w.+\-]+@[\w\-]+\.[\w.\-]+)\b")],
}


def find_phi(text: str) -> List[Tuple[str, int, int]]:
    """Spans ``(kind, start, end)`` of PHI found in ``text``, sorted, overlaps merged (first kind wins)."""
    if not isinstance(text, str) or not text:
        return []
    spans: List[Tuple[int, int, str]] = []
    for kind, pats in PATTERNS.items():
        for pat in pats:
            for m in pat.finditer(text):
                g = "v" if "v" in pat.groupindex and m.group("v") is not None else 0
                spans.append((m.start(g), m.end(g), kind))
    spans.sort(key=lambda s: (s[0], -(s[1] - s[0])))
    out: List[Tuple[str, int, int]] = []
    end = -1
    for s, e, kind in spans:
        if s >= end:
            out.append((kind, s, e))
            end = e
    return out


def redact(text: str) -> str:
    """``text`` with every span of :func:`find_phi` replaced by ``[KIND]`` (upper-case kind)."""
    pieces, pos = [], 0
    for kind, s, e in find_phi(text):
        pieces += [text[pos:s], f"[{kind.upper()}]"]
        pos = e
    return "".join(pieces) + text[pos:]
