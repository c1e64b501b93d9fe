"""HL7 v3 annotated ECG (FDA aECG, ``<AnnotatedECG xmlns="urn:hl7-org:v3">``) reader.

What is read (HL7 aECG implementation guide, the ``urn:hl7-org:v3`` schema):

* the first ``component/series`` whose ``code`` is ``RHYTHM`` (else the first series); derived
  series (representative beats, under ``derivation``) are not read;
* its first ``sequenceSet``: the time sequence (``TIME_ABSOLUTE`` as ``GLIST_TS`` or
  ``TIME_RELATIVE`` as ``GLIST_PQ``) gives the sampling rate = 1 / ``increment`` (``s`` or ``ms``);
* each lead sequence (``MDC_ECG_LEAD_*`` code, ``SLIST_PQ`` value): physical value =
  ``origin + scale × digits``, both converted to millivolts from their ``unit`` (uV, mV, V).

Not read: the subject's demographics (never), annotations (``annotationSet``: fiducials,
intervals, interpretations), other series, and non-uniform time sequences (``SLIST_TS``), which
are refused with the file named. Leads beyond the standard 12 (``MDC_ECG_LEAD_V7``, ``V3R``, …)
are returned with their MDC names and ignored by the 12-lead canonical form.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from medfm.errors import DataError
from medfm.input_files import read_bytes, read_head

HL7 = "{urn:hl7-org:v3}"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_TO_MV = {"uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "mv": 1.0, "v": 1e3, "nv": 1e-6}
_TO_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def is_hl7_aecg(path: Path) -> bool:
    """True when the XML file's root element is HL7 ``AnnotatedECG`` (sniffs the first 4 KB)."""
    head = read_head(path, 4096)
    return b"AnnotatedECG" in head and b"urn:hl7-org:v3" in head


def _quantity(node: Optional[ET.Element], table: Dict[str, float], *, what: str, source: str) -> float:
    if node is None or node.get("value") is None:
        raise DataError(f"aECG {what} missing", source=source, field=what)
    unit = (node.get("unit") or "").strip()
    factor = table.get(unit.lower())
    if factor is None:
        raise DataError(f"aECG {what} unit {unit!r} unsupported (expected one of {sorted(table)})",
                        source=source, field=what)
    try:
        return float(node.get("value")) * factor
    except ValueError:
        raise DataError(f"aECG {what} {node.get('value')!r} is not a number", source=source, field=what) from None


def _rhythm_series(root: ET.Element) -> ET.Element:
    series = [s for c in root.findall(f"{HL7}component") for s in c.findall(f"{HL7}series")]
    if not series:
        raise DataError("no <series> under <AnnotatedECG>/<component>", field="series")
    code = lambda s: ((s.find(f"{HL7}code") if s.find(f"{HL7}code") is not None else ET.Element("c")).get("code") or "")
    return next((s for s in series if code(s).upper() == "RHYTHM"), series[0])


def read_hl7_aecg(path: Any) -> Tuple[np.ndarray, float, List[str], List[str], Dict[str, Any]]:
    """An HL7 aECG file → ``(signal (C, T) float64 mV, fs Hz, lead names, units ["mV"…], meta)``.

    Lead names are the MDC codes without ``MDC_ECG_LEAD_`` (``"I"``, ``"AVR"``, ``"V1"``);
    ``meta["series_code"]`` is the code of the series read.
    """
    p = Path(str(path))
    src = str(p)
    try:
        root = ET.fromstring(read_bytes(p, limit="max_file_mb", what="HL7 aECG file"))
    except ET.ParseError as e:
        raise DataError(f"not well-formed XML: {e}", source=src) from e
    if root.tag != f"{HL7}AnnotatedECG":
        raise DataError(f"root element is {root.tag!r}, not HL7 v3 AnnotatedECG", source=src, field="AnnotatedECG")
    try:
        series = _rhythm_series(root)
    except DataError as e:
        raise DataError(str(e), source=src, field="series") from None
    seqset = next(series.iter(f"{HL7}sequenceSet"), None)
    if seqset is None:
        raise DataError("series has no <sequenceSet>", source=src, field="sequenceSet")
    fs: Optional[float] = None
    names, rows = [], []
    for seq in seqset.iter(f"{HL7}sequence"):
        code = (seq.find(f"{HL7}code").get("code") if seq.find(f"{HL7}code") is not None else "") or ""
        value = seq.find(f"{HL7}value")
        if value is None:
            continue
        vtype = (value.get(XSI_TYPE) or "").split(":")[-1]
        if code.startswith("TIME_"):
            if vtype not in ("GLIST_TS", "GLIST_PQ"):
                raise DataError(f"time sequence {vtype or 'untyped'} unsupported (only uniform GLIST_TS/GLIST_PQ)",
                                source=src, field=code)
            step = _quantity(value.find(f"{HL7}increment"), _TO_S, what="increment", source=src)
            if not step > 0:
                raise DataError(f"time increment {step} s is not positive", source=src, field="increment")
            fs = 1.0 / step
        elif code.startswith("MDC_ECG_LEAD_") and vtype == "SLIST_PQ":
            origin = _quantity(value.find(f"{HL7}origin"), _TO_MV, what="origin", source=src)
            scale = _quantity(value.find(f"{HL7}scale"), _TO_MV, what="scale", source=src)
            try:
                digits = np.array((value.findtext(f"{HL7}digits") or "").split(), dtype=np.float64)
            except ValueError:
                raise DataError("digits are not integers", source=src, field=code) from None
            names.append(code[len("MDC_ECG_LEAD_"):])
            rows.append(origin + scale * digits)
    if fs is None:
        raise DataError("no TIME_ABSOLUTE/TIME_RELATIVE sequence: sampling rate unknown", source=src,
                        field="sampling_rate")
    if not rows:
        raise DataError("no MDC_ECG_LEAD_* sequence with SLIST_PQ values", source=src, field="sequence")
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise DataError(f"lead sequences differ in length {sorted(lengths)}", source=src, field="digits")
    series_code = series.find(f"{HL7}code")
    return (np.stack(rows), fs, names, ["mV"] * len(rows),
            {"series_code": series_code.get("code") if series_code is not None else None, "format": "hl7-aecg"})
