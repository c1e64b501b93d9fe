"""The 12 ECG leads: canonical names and order, lead-name aliases, units to millivolts, the
canonical ``(12, T)`` form of a recording and the limb leads derived by Einthoven/Goldberger.

Numpy only, so :mod:`medfm.modalities.inspect` can name the leads without loading the adapter
(scipy for filtering, wfdb and pandas for the readers).
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from medfm.errors import DataError

LEADS: Tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
LEAD_INDEX = {name: i for i, name in enumerate(LEADS)}
#: a lead whose peak-to-peak range is below this (mV) carries no signal (flat line, electrode off)
FLAT_MV = 1e-3

#: normalised spelling (lower case, no spaces/punctuation, "lead" dropped) → canonical lead
LEAD_ALIASES: Dict[str, str] = {
    **{name.lower(): name for name in LEADS},
    "mli": "I", "mlii": "II", "mliii": "III", "di": "I", "dii": "II", "diii": "III",
    "leadi": "I", "leadii": "II", "leadiii": "III", "1": "I", "2": "II", "3": "III",
    "avr": "aVR", "avl": "aVL", "avf": "aVF", "-avr": "aVR",
    **{f"c{i}": f"V{i}" for i in range(1, 7)},
}
#: units → factor to millivolts
UNIT_TO_MV = {"mv": 1.0, "millivolt": 1.0, "millivolts": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3,
               "microvolt": 1e-3, "microvolts": 1e-3, "v": 1e3, "volt": 1e3, "volts": 1e3, "nv": 1e-6}
UNKNOWN_UNITS = {"", "nu", "none", "adu"}


def normalize_lead_name(name: Any) -> Optional[str]:
    """``"MLII"`` → ``"II"``, ``"Lead I (Einthoven)"`` → ``"I"``, ``"v1 "`` → ``"V1"``, ``"AVR"`` → ``"aVR"``.

    Returns ``None`` for a name that is not one of the 12 standard leads.
    """
    s = re.sub(r"\(.*?\)", "", str(name)).strip().lower()
    s = re.sub(r"^(lead|ecg)[\s_:-]*", "", s)
    s = re.sub(r"[\s_:.]", "", s)
    return LEAD_ALIASES.get(s)


def unit_factor(units: Any, *, source: Any = None, lead: Optional[str] = None) -> Tuple[float, bool]:
    """``(factor to mV, assumed)``; unknown-but-empty units are assumed mV (``assumed=True``)."""
    u = str(units or "").strip().lower()
    if u in UNIT_TO_MV:
        return UNIT_TO_MV[u], False
    if u in UNKNOWN_UNITS:
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
