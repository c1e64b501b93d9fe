"""12-lead ECG (``ecg``): readers, canonical 12-lead form, filtering, 1-D patch tower.

Readers (by suffix):

- WFDB records (``.hea`` + ``.dat``/``.mat``, multi-segment too) through ``wfdb.rdrecord``;
- DICOM waveforms (12-lead ECG Waveform Storage) through pydicom's ``waveform_array``;
- ``.npy`` / ``.npz`` and ``.csv`` (one column per lead), with the sampling rate, lead names
  and units from a JSON sidecar (``<stem>.json``: ``{"fs": 500, "leads": [...], "units": "mV"}``),
  the manifest row (``fs_column`` / ``leads_column``) or the adapter options.

- GE MUSE XML (``.xml`` with ``<RestingECG>``): the ``Rhythm`` waveform's base64 int16 lead data;
  MUSE stores I, II, V1–V6 and the other limb leads are derived.

- HL7 aECG XML (``<AnnotatedECG xmlns="urn:hl7-org:v3">``): the rhythm series (:mod:`.ecg_hl7`).

Canonical form after :meth:`ECGAdapter.read`: ``(12, T)`` float64 in millivolts at the
native rate, leads in the order of :data:`LEADS` whatever the names in the file; absent
leads are zero and ``lead_mask`` is False there. With ``derive_limb_leads`` the limb
leads III, aVR, aVL, aVF (and II from I and III) are computed by Einthoven/Goldberger
when missing, flagged in ``derived_mask``.

:meth:`ECGAdapter.preprocess` (all leads vectorised)::

    window of `duration` s (+1 s margin; random start when train) ──► NaN gaps interpolated
      ──► resample_poly to `fs` ──► zero-phase band-pass (sosfiltfilt) [+ notch]
      ──► crop/pad to `duration` ──► per-lead standardisation (flat → 0)

Output: ``{"x": float32 (12, fs*duration), "lead_mask": bool (12,), "derived_mask": bool (12,)}``.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from medfm.errors import ConfigError, DataError
from medfm.modality import ModalityAdapter, Record, check_format, require_file
from medfm.registry import register_modality

from . import signal as sig
from medfm.limits import check_declared_shape
from medfm.input_files import check_regular, open_bounded, read_text
from .dicom import check_dicom_modality, read_dicom
from .ecg_hl7 import is_hl7_aecg, read_hl7_aecg
from .imaging import npy_declared_shape, npz_member_shape

LEADS: Tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
LEAD_INDEX = {name: i for i, name in enumerate(LEADS)}
#: a lead whose peak-to-peak range is below this (mV) carries no signal (flat line, electrode off)
FLAT_MV = 1e-3
#: signals one WFDB record may declare; more is refused before wfdb parses the header (wfdb spends
#: about 1.5 ms per signal line, so 100 000 declared signals would pin a core for minutes)
MAX_WFDB_SIGNALS = 256

#: normalised spelling (lower case, no spaces/punctuation, "lead" dropped) → canonical lead
_ALIASES: Dict[str, str] = {
    **{name.lower(): name for name in LEADS},
    "mli": "I", "mlii": "II", "mliii": "III", "di": "I", "dii": "II", "diii": "III",
    "leadi": "I", "leadii": "II", "leadiii": "III", "1": "I", "2": "II", "3": "III",
    "avr": "aVR", "avl": "aVL", "avf": "aVF", "-avr": "aVR",
    **{f"c{i}": f"V{i}" for i in range(1, 7)},
}
#: units → factor to millivolts
_UNIT_TO_MV = {"mv": 1.0, "millivolt": 1.0, "millivolts": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3,
               "microvolt": 1e-3, "microvolts": 1e-3, "v": 1e3, "volt": 1e3, "volts": 1e3, "nv": 1e-6}
_UNKNOWN_UNITS = {"", "nu", "none", "adu"}


def normalize_lead_name(name: Any) -> Optional[str]:
    """``"MLII"`` → ``"II"``, ``"Lead I (Einthoven)"`` → ``"I"``, ``"v1 "`` → ``"V1"``, ``"AVR"`` → ``"aVR"``.

    Returns ``None`` for a name that is not one of the 12 standard leads.
    """
    s = re.sub(r"\(.*?\)", "", str(name)).strip().lower()
    s = re.sub(r"^(lead|ecg)[\s_:-]*", "", s)
    s = re.sub(r"[\s_:.]", "", s)
    return _ALIASES.get(s)


def unit_factor(units: Any, *, source: Any = None, lead: Optional[str] = None) -> Tuple[float, bool]:
    """``(factor to mV, assumed)``; unknown-but-empty units are assumed mV (``assumed=True``)."""
    u = str(units or "").strip().lower()
    if u in _UNIT_TO_MV:
        return _UNIT_TO_MV[u], False
    if u in _UNKNOWN_UNITS:
        return 1.0, True
    raise DataError(f"unsupported signal units {units!r} (expected mV, uV or V)", source=source, field=lead or "units")


def canonicalize(signal: np.ndarray, names: Sequence[Any], units: Sequence[Any], *, source: Any = None,
                 derive: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Dict[str, Any]]:
    """Raw channels → the 12 standard leads in millivolts.

    Args:
        signal: ``(C, T)`` physical values; names, units: ``C`` channel names and units.
    Returns:
        ``(x (12, T) float64 mV, lead_mask (12,) bool, derived_mask (12,) bool, meta)``; ``meta`` lists
        the ``ignored_channels`` and whether units were ``units_assumed``.
    Raises:
        DataError: no standard lead, a lead that is all NaN, unknown units.
    """
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 2:
        raise DataError(f"signal must be 2-D (channels, time), got shape {signal.shape}", source=source, field="signal")
    C, T = signal.shape
    x = np.zeros((12, T))
    mask = np.zeros(12, bool)
    ignored, assumed = [], False
    for c in range(C):
        lead = normalize_lead_name(names[c])
        if lead is None or mask[LEAD_INDEX[lead]]:
            ignored.append(str(names[c]))
            continue
        factor, a = unit_factor(units[c] if c < len(units) else None, source=source, lead=lead)
        assumed |= a
        row = signal[c] * factor
        if np.isnan(row).all():
            raise DataError("lead is all NaN", source=source, field=lead)
        x[LEAD_INDEX[lead]] = row
        mask[LEAD_INDEX[lead]] = True
    if not mask.any():
        raise DataError(f"no standard ECG lead among channels {[str(n) for n in names]}", source=source, field="leads")
    derived = derive_limb_leads(x, mask) if derive else np.zeros(12, bool)
    return x, mask | derived, derived, {"ignored_channels": ignored, "units_assumed": assumed}


def derive_limb_leads(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fill missing limb leads in place from I and II (Einthoven/Goldberger); returns the derived mask.

    II = I + III when only I and III exist; then III = II − I, aVR = −(I + II)/2,
    aVL = I − II/2, aVF = II − I/2.
    """
    i1, i2, i3 = LEAD_INDEX["I"], LEAD_INDEX["II"], LEAD_INDEX["III"]
    derived = np.zeros(12, bool)
    if mask[i1] and mask[i3] and not mask[i2]:
        x[i2] = x[i1] + x[i3]
        derived[i2] = True
    have = mask | derived
    if not (have[i1] and have[i2]):
        return derived
    I, II = x[i1], x[i2]
    for name, val in (("III", lambda: II - I), ("aVR", lambda: -(I + II) / 2),
                      ("aVL", lambda: I - II / 2), ("aVF", lambda: II - I / 2)):
        j = LEAD_INDEX[name]
        if not have[j]:
            x[j] = val()
            derived[j] = True
    return derived


# ----------------------------------------------------------------------- readers
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
    import wfdb

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
    import base64
    import xml.etree.ElementTree as ET

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


def _sidecar(path: Path) -> Dict[str, Any]:
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
        import pandas as pd

        with open_bounded(p, what="ECG table") as fh:
            df = pd.read_csv(fh)
        df = df[[c for c in df.columns if str(c).strip().lower() not in ("time", "t", "sec", "ms", "sample", "index")]]
        arr = df.to_numpy(dtype=np.float64).T
        info["leads"] = [str(c) for c in df.columns]
        info["_channels_first"] = True
    else:
        raise DataError(f"unsupported ECG file type {suffix!r}", source=str(p))
    return np.asarray(arr, dtype=np.float64), info


@register_modality("ecg")
class ECGAdapter(ModalityAdapter):
    """12-lead ECG adapter.

    Options:
        fs: target sampling rate (500; 100 for PTB-XL/MoRE-style models).
        duration, min_duration: window length in seconds (10) and shortest record accepted (2).
        bandpass: ``[low, high]`` Hz (``[0.5, 40]``; ST-MEM uses ``[0.67, 40]``), ``None`` = off; ``filter_order``.
        notch: mains frequency (50/60) or ``None``; ``notch_q``.
        normalize: ``"lead"`` (per-lead standardisation) or ``"none"`` (millivolts).
        derive_limb_leads: compute missing III/aVR/aVL/aVF (and II) from I and II (I and III).
        min_leads: fewest leads a record must hold (derived ones not counted), e.g. 12 to refuse 3-lead files.
        random_crop: random window start when ``train``.
        input_fs, input_units, input_leads: defaults for ``.npy/.npz/.csv`` without sidecar or manifest columns.
        fs_column, leads_column: manifest columns with the rate and comma-separated lead names.
        patch_size, per_channel, pool: tower options (1-D patches; MAE at 0.75 unless the masked
            objective sets ``mask_ratio``).
    """

    name = "ecg"
    dicom_modalities = ("ECG", "HD")  # 12-lead ECG waveforms; hemodynamic waveforms carry ECG leads too
    suffix_priority = 30
    input_kind = "path"
    suffixes = (".hea", ".dat", ".mat", ".dcm", ".xml", ".npy", ".npz", ".csv")
    defaults: Dict[str, Any] = {
        "fs": 500, "duration": 10.0, "min_duration": 2.0, "bandpass": [0.5, 40.0], "filter_order": 4,
        "notch": None, "notch_q": 30.0, "normalize": "lead", "derive_limb_leads": True, "random_crop": True,
        "input_fs": None, "input_units": "mV", "input_leads": None, "fs_column": "ecg_fs", "leads_column": "ecg_leads",
        "patch_size": 50, "per_channel": False, "pool": "mean", "min_leads": 1,
    }
    mask_ratio = 0.75  # MAE
    training_options = ("random_crop",)  # act only with train=True

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.options
        if float(o["fs"]) <= 0 or float(o["duration"]) <= 0:
            raise ConfigError("ecg: fs and duration must be positive")
        if o["normalize"] not in ("lead", "none"):
            raise ConfigError(f"ecg: normalize must be 'lead' or 'none', got {o['normalize']!r}")
        if self.n_samples % int(o["patch_size"]):
            raise ConfigError(f"ecg: fs*duration = {self.n_samples} is not a multiple of patch_size {o['patch_size']}")

    @property
    def n_samples(self) -> int:
        """Samples per lead of the output window: ``round(fs * duration)``."""
        return int(round(float(self.options["fs"]) * float(self.options["duration"])))

    # ------------------------------------------------------------------ reading
    def read_raw(self, source: Any, row: Optional[Mapping[str, Any]] = None):
        """The file's channels as stored: ``(signal (C, T), fs, names, units, meta)``."""
        p = Path(str(source))
        suffix = p.suffix.lower()
        if suffix in (".hea", ".dat", ".mat") or (not suffix and p.with_suffix(".hea").exists()):
            return read_wfdb(p)
        if suffix in (".dcm", ".dicom") or (not suffix and p.is_file()):
            return read_dicom_waveform(p, adapter=self)
        if suffix == ".xml":
            return read_hl7_aecg(p) if is_hl7_aecg(p) else read_muse_xml(p)
        check_format(p, self.name, self.suffixes)
        arr, info = read_array(p)
        info.update({k: v for k, v in _sidecar(p).items() if k in ("fs", "leads", "units")})
        if row is not None:
            fs_cell = row.get(self.options["fs_column"])
            if fs_cell is not None and not (isinstance(fs_cell, float) and math.isnan(fs_cell)) and str(fs_cell).strip():
                info["fs"] = fs_cell
            leads_cell = row.get(self.options["leads_column"])
            if isinstance(leads_cell, str) and leads_cell.strip():
                info["leads"] = [s for s in re.split(r"[,;|]", leads_cell)]
        fs = info.get("fs", self.options["input_fs"])
        if fs is None:
            raise DataError("sampling rate unknown: give a JSON sidecar, the manifest column "
                            f"{self.options['fs_column']!r} or the option input_fs", source=str(p), field="sampling_rate")
        try:
            fs = float(fs)
        except (TypeError, ValueError):
            raise DataError(f"sampling rate {fs!r} is not a number", source=str(p), field="sampling_rate") from None
        leads = info.get("leads") or self.options["input_leads"] or list(LEADS)
        if arr.ndim != 2:
            raise DataError(f"signal must be 2-D, got shape {arr.shape}", source=str(p), field="signal")
        if not info.get("_channels_first") and arr.shape[0] != len(leads) and arr.shape[1] == len(leads):
            arr = arr.T  # (T, C) → (C, T)
        if arr.shape[0] != len(leads):
            raise DataError(f"{arr.shape[0]} channels but {len(leads)} lead names", source=str(p), field="leads")
        units = info.get("units", self.options["input_units"])
        units = list(units) if isinstance(units, (list, tuple)) else [units] * arr.shape[0]
        return arr, fs, list(leads), units, {}

    def read(self, source: Any, *, sample_id: Optional[str] = None, row: Optional[Mapping[str, Any]] = None) -> Record:
        """A file → ``Record((12, T) mV at the native rate, meta)``; meta: fs, lead_mask, derived_mask, ..."""
        arr, fs, names, units, meta = self.read_raw(source, row)
        if not fs or fs <= 0 or not math.isfinite(fs):
            raise DataError(f"sampling rate is {fs}", source=str(source), field="sampling_rate")
        x, mask, derived, cmeta = canonicalize(arr, names, units, source=str(source),
                                               derive=bool(self.options["derive_limb_leads"]))
        n_real = int((mask & ~derived).sum())
        if n_real < int(self.options["min_leads"]):
            raise DataError(f"record has {n_real} standard lead(s), fewer than min_leads {self.options['min_leads']}",
                            source=str(source), field="leads")
        meta = {k: v for k, v in meta.items() if k != "comments"}
        real = mask & ~derived
        with np.errstate(invalid="ignore"):
            spread = np.nanmax(x, axis=-1) - np.nanmin(x, axis=-1) if x.shape[-1] else np.zeros(12)
        flat = real & ~(spread > FLAT_MV)
        if flat.all() or flat.sum() == real.sum():
            raise DataError(f"flat signal: every lead varies by less than {FLAT_MV} mV (electrodes off or an "
                            "empty recording)", source=str(source), field="signal")
        if flat.any():
            names_flat = [LEADS[i] for i in np.nonzero(flat)[0]]
            mask = mask & ~flat
            meta["flat_leads"] = names_flat
            meta["flags"] = list(meta.get("flags") or ()) + [f"flat lead(s) {', '.join(names_flat)} (range < {FLAT_MV} mV): treated as absent"]
        meta.update(cmeta, fs=float(fs), lead_mask=mask, derived_mask=derived, source_leads=[str(n) for n in names])
        return Record(x, meta)

    # ------------------------------------------------------------ preprocessing
    def preprocess(self, record: Record, *, train: bool = False, rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
        o = self.options
        x, fs_in = record.data, float(record.meta["fs"])
        mask = np.asarray(record.meta.get("lead_mask", np.ones(12, bool)))
        T = x.shape[-1]
        if T / fs_in < float(o["min_duration"]):
            raise DataError(f"record is {T / fs_in:.2f} s long, shorter than min_duration {o['min_duration']} s",
                            field="duration")
        # window in native samples, with a margin against filter edge effects
        n_in = int(round(float(o["duration"]) * fs_in))
        start = 0
        if T > n_in and train and o["random_crop"]:
            rng = rng if rng is not None else np.random.default_rng()
            start = int(rng.integers(0, T - n_in + 1))
        margin = int(round(fs_in))
        lo = max(0, start - margin)
        seg = sig.fill_nan(x[:, lo:start + n_in + margin])
        seg[~mask] = 0.0
        seg = sig.resample(seg, fs_in, float(o["fs"]))
        fs = float(o["fs"])
        if o["bandpass"]:
            seg = sig.bandpass(seg, fs, o["bandpass"], int(o["filter_order"]))
        if o["notch"]:
            seg = sig.notch(seg, fs, float(o["notch"]), float(o["notch_q"]))
        off = int(round((start - lo) * fs / fs_in))
        seg = sig.crop_or_pad(seg, self.n_samples, off)
        if o["normalize"] == "lead":
            seg = sig.standardize(seg)
        seg[~mask] = 0.0
        out = {"x": torch.from_numpy(np.ascontiguousarray(seg, dtype=np.float32)),
               "lead_mask": torch.from_numpy(mask.copy()),
               "derived_mask": torch.from_numpy(np.asarray(record.meta.get("derived_mask", np.zeros(12, bool))).copy())}
        if record.meta.get("flags"):
            out["flags"] = list(record.meta["flags"])
        return out

    def inference_spec(self) -> Dict[str, Any]:
        """Eval-mode preprocessing of one record as data (``preprocessing.json``; see :meth:`preprocess`)."""
        o = self.options
        fs, n = float(o["fs"]), self.n_samples
        band = o["bandpass"]
        return {
            "input": "one ECG record; output x of shape (12, n_samples) float32, batched to (B, 12, n_samples)",
            "n_samples": n, "fs": fs, "duration_s": float(o["duration"]),
            "formats": {
                "wfdb": {"reader": "wfdb.rdrecord(record path without suffix, physical=True, m2s=True); "
                                   "signal = p_signal.T as float64 (C, T); fs = record.fs; names = sig_name; "
                                   "units = units"},
                "dicom": {"reader": "pydicom Dataset.waveform_array(i) of the multiplex group with the most "
                                    "channels (then the longest); names from ChannelSourceSequence CodeMeaning"},
            },
            "steps": [
                {"op": "leads", "order": list(LEADS),
                 "rule": "each channel goes to the standard lead its name denotes (case, spaces, 'lead' and "
                         "punctuation ignored; MLII = II, C1..C6 = V1..V6); other channels and repeats are ignored; "
                         "absent leads are zeros and lead_mask is False there",
                 "aliases": {"rule": "lower case, '(...)' removed, leading 'lead'/'ecg' removed, spaces and _:. "
                                     "removed; then this table", "table": dict(_ALIASES)},
                 "units": {"to": "mV", "factors": dict(_UNIT_TO_MV), "assumed_mV": sorted(_UNKNOWN_UNITS)}},
                {"op": "derive_limb_leads", "enabled": bool(o["derive_limb_leads"]),
                 "rule": "II = I + III when only I and III exist; then the missing ones of III = II - I, "
                         "aVR = -(I + II) / 2, aVL = I - II / 2, aVF = II - I / 2 (flagged in derived_mask)"},
                {"op": "flat_leads", "rule": f"a recorded lead whose max - min (NaN ignored) is <= {FLAT_MV} mV is "
                                             "absent (lead_mask False)", "threshold_mv": FLAT_MV},
                {"op": "window", "rule": "at inference the window starts at sample 0: n_in = round(duration * fs_in), "
                                         "margin = round(fs_in) samples, segment = x[:, 0 : n_in + margin]",
                 "start": 0},
                {"op": "fill_nan", "rule": "per lead, numpy.interp over NaN runs (edges take the nearest value)"},
                {"op": "zero_absent", "rule": "leads with lead_mask False are set to 0"},
                {"op": "resample", "to_hz": fs, "skipped_when": "fs_in == fs",
                 "rule": "up/down = fractions.Fraction(fs / fs_in).limit_denominator(1000); "
                         "scipy.signal.resample_poly(segment, up, down, axis=-1) (default Kaiser window), then the "
                         "first round(T_segment * fs / fs_in) samples"},
                {"op": "bandpass", "band_hz": list(band) if band else None, "order": int(o["filter_order"]),
                 "rule": "scipy.signal.butter(order, [low, high], btype='bandpass', fs=fs, output='sos') "
                         "(highpass / lowpass when one edge is None or <= 0, or high >= fs / 2), then "
                         "scipy.signal.sosfiltfilt(sos, x, axis=-1)"},
                {"op": "notch", "freq_hz": o["notch"], "q": float(o["notch_q"]),
                 "rule": "scipy.signal.iirnotch(freq, q, fs=fs) + filtfilt(b, a, x, axis=-1); none when freq is "
                         "null or >= fs / 2"},
                {"op": "crop_pad", "rule": "x[:, 0:n_samples], zero-padded on the right when shorter",
                 "n_samples": n},
                {"op": "normalize", "mode": o["normalize"],
                 "rule": "per lead (x - mean) / std with numpy's std (ddof=0); a lead with std < 1e-6 becomes 0"},
                {"op": "zero_absent", "rule": "leads with lead_mask False are set to 0 again"},
                {"op": "dtype", "dtype": "float32", "rule": "computed in float64, cast at the end"},
            ],
        }

    # --------------------------------------------------------- model building
    def tower_config(self) -> Dict[str, Any]:
        o = self.options
        return {"type": "vit", "pool": o["pool"],
                "embedder": {"type": "patch1d", "in_chans": 12, "input_size": self.n_samples,
                             "patch_size": int(o["patch_size"]), "per_channel": bool(o["per_channel"])},
                "masked": {"kind": "mae", "mask_ratio": float(self.mask_ratio), "norm_pix_loss": False}}
