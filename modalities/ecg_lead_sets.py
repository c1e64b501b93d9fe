"""Named ECG lead subsets for partial-input evaluation: ``I``, ``I,II``, ``limb``, ``precordial``, any list.

A spec is a comma-separated list of lead names (any spelling :func:`~.ecg_leads.normalize_lead_name`
reads: ``v1``, ``Lead II``) and group names:

==============  ===========================================
``all``         the 12 leads
``limb``        I, II, III, aVR, aVL, aVF (frontal plane)
``precordial``  V1–V6 (horizontal plane)
``einthoven``   I, II, III
``single``      I (a single-lead wearable)
==============  ===========================================
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from medfm.errors import UsageError

from .ecg_leads import LEADS, normalize_lead_name

LEAD_GROUPS: Dict[str, Tuple[str, ...]] = {
    "all": LEADS, "limb": LEADS[:6], "precordial": LEADS[6:], "einthoven": LEADS[:3], "single": ("I",),
}


def parse_lead_spec(spec: str) -> np.ndarray:
    """A lead spec → ``keep (12,) bool`` in the canonical order :data:`~.ecg_leads.LEADS`.

    Raises:
        UsageError: a name that is neither a lead nor a group, or an empty spec.
    """
    keep = np.zeros(len(LEADS), bool)
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        group = LEAD_GROUPS.get(part.lower())
        names = group if group is not None else (normalize_lead_name(part),)
        if names == (None,):
            raise UsageError(f"--leads: {part!r} is not an ECG lead ({', '.join(LEADS)}) or a group "
                             f"({', '.join(LEAD_GROUPS)})")
        for n in names:
            keep[LEADS.index(n)] = True
    if not keep.any():
        raise UsageError(f"--leads {spec!r} names no lead")
    return keep


def lead_names(keep: np.ndarray) -> List[str]:
    """The names of the kept leads, canonical order."""
    return [n for n, k in zip(LEADS, keep) if k]
