"""ECG file readers, each returning ``(signal (C, T), fs, names, units, meta)`` as stored in the
file (the adapter canonicalises): WFDB records (header checked before wfdb parses it), DICOM
waveforms, GE MUSE XML, and ``.npy``/``.npz``/``.csv`` arrays with an optional JSON sidecar.
"""
from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import wfdb

from medfm.errors import DataError
from medfm.input_files import check_regular, open_bounded, read_text
from medfm.limits import check_declared_shape
from medfm.modality import require_file

from .dicom import check_dicom_modality, read_dicom
from .imaging import npy_declared_shape, npz_member_shape

#: signals one WFDB record may declare; more is refused before wfdb parses the header (wfdb spends
#: about 1.5 ms per signal line, so 100 000 declared signals would pin a core for minutes)
MAX_WFDB_SIGNALS = 256


def wfdb_header_lines(hea: Path) -> List[List[str]]:
    """The non-comment lines of a WFDB header, split in fields: read with the ``max_header_mb``
    cap (a regular file only) before any library parses it."""
    text = read_text(hea, limit="max_header_mb", what="WFDB header", errors="replace")
    return [ln.split() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def check_wfdb_header(hea: Path) -> Tuple[bool, List[str], Optional[float]]:
    """Cheap parse of a WFDB header before ``wfdb.rdheader``/``rdrecord``: ``(multi_segment, files
    it needs, fs or None)``, with the declared counts checked.

    The record line is ``name[/n_seg] n_sig [fs[/counter][(base)] [sig_len ...]]``; then one line
    per signal (its file name first) or per segment (``seg_name seg_len``, ``~`` = gap). Refused
    (:class:`DataError`): a header over ``max_header_mb``, more than :data:`MAX_WFDB_SIGNALS`
    signals, signals × samples over ``max_elements``/``max_sample_mb``, a bad sampling rate.
    """
    lines = wfdb_header_lines(hea)
    if not lines:
        raise DataError("empty WFDB header", source=str(hea), field="header")
    head = lines[0]
    fs = None
    if len(head) > 2:
        try:
            fs = float(re.split(r"[/(]", head[2])[0])
        except ValueError:
            raise DataError(f"bad sampling rate {head[2]!r}", source=str(hea), field="sampling_rate") from None
    try:
        n_sig = int(head[1]) if len(head) > 1 else 0
        sig_len = int(head[3]) if len(head) > 3 else 0
        n_seg = int(head[0].split("/")[1]) if "/" in head[0] else None
    except ValueError:
        raise DataError(f"malformed record line {' '.join(head)[:200]!r}", source=str(hea), field="header") from None
    if n_sig > MAX_WFDB_SIGNALS:
        raise DataError(f"header declares {n_sig:,} signals, more than an ECG record holds (at most "
                        f"{MAX_WFDB_SIGNALS})", source=str(hea), field="header")
    check_declared_shape((n_sig, sig_len), source=hea, what="WFDB record")
    if n_seg is not None:
        segs = [ln[0] for ln in lines[1:1 + n_seg] if ln[0] != "~"]
        return True, sorted({s + ".hea" for s in segs}), fs
    return False, sorted({ln[0] for ln in lines[1:1 + n_sig] if ln and ln[0] != "-"}), fs


def read_wfdb(path: Any) -> Tuple[np.ndarray, float, List[str], List[str], Dict[str, Any]]:
    """A WFDB record (``.hea`` path, or the record path without suffix, or its signal file).

    Returns ``(signal (C, T) physical, fs, names, units, meta)``. Multi-segment records are
    merged (``m2s``); gaps between segments are NaN.
    """
    p = Path(str(path))
    base = p.with_suffix("") if p.suffix.lower() in (".hea", ".dat", ".mat") else p
    hea = base.with_suffix(".hea")
    if not hea.exists() and not hea.is_symlink():  # the error names the file the user gave
        raise DataError("WFDB header not found" + (f" ({hea.name} beside the signal file)" if hea != p else ""),
                        source=str(p))
    hea = require_file(hea, what="WFDB header")
    multi, needed, fs = check_wfdb_header(hea)
    for f in needed:
        what = "segment header" if multi else "signal file"
        try:
            check_regular(hea.parent / f, what=f"{what} {f} listed in the header")
        except DataError as e:
            msg = f"{what} {f} listed in the header is missing" if "not found" in e.reason else e.reason
            raise DataError(msg, source=str(hea), field="signal file") from None
        if multi:
            check_wfdb_header(hea.parent / f)
    if fs is not None and fs <= 0:
        raise DataError(f"sampling rate is {fs}", source=str(hea), field="sampling_rate")
    rec = wfdb.rdrecord(str(base), physical=True, m2s=True)
    if rec.p_signal is None or rec.p_signal.size == 0:
        raise DataError("record has no samples", source=str(hea), field="signal")
    return (rec.p_signal.T.astype(np.float64), float(rec.fs), list(rec.sig_name), list(rec.units or []),
            {"comments": list(rec.comments or [])})


def read_dicom_waveform(path: Any, *, adapter: Any = None) -> Tuple[np.ndarray, float, List[str], List[str], Dict[str, Any]]:
    """A DICOM waveform: the multiplex group with the most channels (then the longest).

    Values come from ``ds.waveform_array(i)`` (sensitivity, correction and baseline applied);
    lead names from ``ChannelSourceSequence`` code meanings, units from
    ``ChannelSensitivityUnitsSequence``. No header field that identifies the patient is read.
    With ``adapter``, the Modality value is checked against the adapter's first
    (:func:`medfm.modalities.dicom.check_dicom_modality`); ``meta["flags"]`` holds the flag of an
    object without one.
    """
    p = require_file(path, what="DICOM file")
    ds = read_dicom(p)
    flags = check_dicom_modality(ds, adapter, p) if adapter is not None else []
    groups = ds.get("WaveformSequence")
    if not groups:
        raise DataError("DICOM file has no WaveformSequence (not a waveform object)", source=str(p), field="WaveformSequence")
    best = max(range(len(groups)), key=lambda i: (int(groups[i].NumberOfWaveformChannels),
                                                   int(groups[i].NumberOfWaveformSamples) / max(float(groups[i].SamplingFrequency), 1e-9)))
    g = groups[best]
    check_declared_shape((int(g.NumberOfWaveformChannels), int(g.NumberOfWaveformSamples)), source=p,
                         what="DICOM waveform")  # before pydicom decodes it
    fs = float(g.SamplingFrequency)
    if fs <= 0:
        raise DataError(f"sampling rate is {fs}", source=str(p), field="SamplingFrequency")
    arr = np.asarray(ds.waveform_array(best), dtype=np.float64).T  # (C, T)
    names, units = [], []
    for ch in g.ChannelDefinitionSequence:
        src = ch.get("ChannelSourceSequence")
        names.append(str(src[0].CodeMeaning) if src else str(ch.get("ChannelLabel", "")))
        us = ch.get("ChannelSensitivityUnitsSequence")
        units.append(str(us[0].CodeValue) if us else "")
    return arr, fs, names, units, {"multiplex_group": best, **({"flags": flags} if flags else {})}


def read_muse_xml(path: Any) -> Tuple[np.ndarray, float, List[str], List[str], Dict[str, Any]]:
    """A GE MUSE XML export: the ``Rhythm`` waveform (else the first one).

    Each ``LeadData`` holds ``LeadID``, base64 little-endian int16 ``WaveFormData``,
    ``LeadAmplitudeUnitsPerBit`` and ``LeadAmplitudeUnits``; the rate is ``SampleBase``.
    Patient demographics in the file are not read.
    """
    p = require_file(path, what="MUSE XML file")
    try:
        root = ET.parse(p).getroot()
    except ET.ParseError as e:
        raise DataError(f"not well-formed XML: {e}", source=str(p)) from e
    waves = root.findall(".//Waveform")
    if not waves:
        raise DataError("no <Waveform> element (not a GE MUSE export)", source=str(p), field="Waveform")
    wave = next((w for w in waves if (w.findtext("WaveformType") or "").strip().lower() == "rhythm"), waves[0])
    try:
        fs = float(wave.findtext("SampleBase") or 0)
    except ValueError:
        fs = 0.0
    names, rows, units = [], [], []
    for lead in wave.findall("LeadData"):
        raw = np.frombuffer(base64.b64decode(lead.findtext("WaveFormData") or ""), dtype="<i2").astype(np.float64)
        rows.append(raw * float(lead.findtext("LeadAmplitudeUnitsPerBit") or 1.0))
        names.append((lead.findtext("LeadID") or "").strip())
        units.append({"microvolts": "uV", "millivolts": "mV"}.get(
            (lead.findtext("LeadAmplitudeUnits") or "").strip().lower(), "uV"))
    if not rows:
        raise DataError("waveform has no <LeadData>", source=str(p), field="LeadData")
    n = min(len(r) for r in rows)
    return np.stack([r[:n] for r in rows]), fs, names, units, {}


def read_sidecar(path: Path) -> Dict[str, Any]:
    """The JSON sidecar ``<stem>.json`` of an array file (``fs``, ``leads``, ``units``), ``{}`` when there is none."""
    side = path.with_suffix(".json")
    if side.exists():
        try:
            return json.loads(read_text(side, limit="max_header_mb", what="JSON sidecar"))
        except json.JSONDecodeError as e:
            raise DataError(f"bad JSON sidecar: {e}", source=str(side)) from e
    return {}


def read_array(path: Any) -> Tuple[np.ndarray, Dict[str, Any]]:
    """``.npy`` / ``.npz`` / ``.csv`` → ``(signal (C, T) or (T, C), info)``; ``info`` may hold fs/leads/units."""
    p = require_file(path, what="ECG file")
    suffix = p.suffix.lower()
    info: Dict[str, Any] = {}
    if suffix == ".npy":

        try:
            shape = npy_declared_shape(p)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"unreadable .npy header: {e}", source=str(p)) from e
        check_declared_shape(shape, source=p, what=".npy array")
        arr = np.load(p, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            key = next((k for k in ("signal", "ecg", "x", "data") if k in z.files), z.files[0] if z.files else None)
            if key is None:
                raise DataError("empty .npz", source=str(p), field="signal")
            check_declared_shape(npz_member_shape(z, key), source=p, what=f".npz array {key!r}")
            arr = z[key]
            for k in ("fs", "leads", "units"):
                if k in z.files:
                    info[k] = z[k].tolist()
    elif suffix == ".csv":
        with open_bounded(p, what="ECG table") as fh:
            df = pd.read_csv(fh)
        df = df[[c for c in df.columns if str(c).strip().lower() not in ("time", "t", "sec", "ms", "sample", "index")]]
        arr = df.to_numpy(dtype=np.float64).T
        info["leads"] = [str(c) for c in df.columns]
        info["_channels_first"] = True
    else:
        raise DataError(f"unsupported ECG file type {suffix!r}", source=str(p))
    return np.asarray(arr, dtype=np.float64), info
