"""The ``ecg_spec`` adapter: a 12-lead ECG preprocessed as an ECG family's weights expect.

Reading is the ``ecg`` adapter's (WFDB, DICOM waveform, MUSE XML, arrays; canonical lead order, mV,
native rate). The spec is then applied in this order:

1. ``leads``: the family's lead order (a lead the file lacks is zero and named in ``flags``);
2. the first ``duration_s`` seconds at the native rate (zero-padded when shorter);
3. ``band_hz``: zero-phase Butterworth band-pass (``scipy.signal.butter(filter_order, band, fs=fs_in,
   output="sos")`` + ``sosfiltfilt``) at the native rate;
4. ``fs``: polyphase resampling (``scipy.signal.resample_poly`` with the reduced ratio);
5. ``scaling``: ``minmax_per_lead_to_[-1,1]`` (``2 (x - min) / max(max - min, 1e-8) - 1`` per lead) or ``none``;
6. ``layout``: ``leads concatenated`` → ``x (n_leads * fs * duration_s,)``, lead after lead.

Options: ``family``, ``fs``, ``duration_s``, ``leads``, ``band_hz``, ``filter_order``, ``scaling``,
``layout``, ``strict``; an option that differs from the family's spec is a departure (reported,
refused under ``strict``).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Dict, Optional

import numpy as np
import scipy.signal as sps
import torch

from medfm.errors import ConfigError
from medfm.modality import Record
from medfm.registry import register_modality

from .ecg import LEADS, ECGAdapter
from .family_specs import departures, family, family_tower, reference_spec
from .signal import fill_nan

_SPEC_DEFAULTS: Dict[str, Any] = {
    "fs": 100.0, "duration_s": 5.0, "leads": list(LEADS), "band_hz": [0.05, 47.0],
    "scaling": "minmax_per_lead_to_[-1,1]", "layout": "leads concatenated: (12 * fs * duration,)",
}


def spec_signal(x: np.ndarray, fs_in: float, o: Dict[str, Any]) -> np.ndarray:
    """``(n_leads, T)`` mV at ``fs_in`` → the spec's 1-D ``(n_leads * fs * duration_s,)`` float32."""
    n_in = int(round(fs_in * float(o["duration_s"])))
    x = x[:, :n_in]
    if x.shape[1] < n_in:
        x = np.pad(x, ((0, 0), (0, n_in - x.shape[1])))
    if o["band_hz"] is not None:
        sos = sps.butter(int(o["filter_order"]), [float(v) for v in o["band_hz"]], btype="bandpass", fs=fs_in,
                         output="sos")
        x = sps.sosfiltfilt(sos, x, axis=-1)
    ratio = Fraction(float(o["fs"]) / fs_in).limit_denominator(1000)
    if ratio != 1:
        x = sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)
    n_out = int(round(float(o["fs"]) * float(o["duration_s"])))
    x = x[:, :n_out]
    if o["scaling"] == "minmax_per_lead_to_[-1,1]":
        lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
        x = 2 * (x - lo) / np.maximum(hi - lo, 1e-8) - 1
    return np.ascontiguousarray(x.reshape(-1), dtype=np.float32)


@register_modality("ecg_spec")
class SpecECGAdapter(ECGAdapter):
    """12-lead ECGs under an ECG family's input spec (see the module docstring)."""

    name = "ecg_spec"
    suffix_priority = 90  # never chosen by suffix over ecg
    defaults: Dict[str, Any] = {**ECGAdapter.defaults, **_SPEC_DEFAULTS, "filter_order": 4, "family": None,
                                "weights_spec": None, "strict": False, "random_crop": False, "patch_size": 1}

    def __init__(self, **options: Any):
        fam = options.get("family")
        if fam:
            options = {**reference_spec(fam, self.name, options.get("weights_spec")), **options}
        super().__init__(**options)
        o = self.options
        if o["scaling"] not in ("minmax_per_lead_to_[-1,1]", "none"):
            raise ConfigError(f"ecg_spec: scaling must be 'minmax_per_lead_to_[-1,1]' or 'none', got {o['scaling']!r}")
        unknown = [lead for lead in o["leads"] if lead not in LEADS]
        if unknown:
            raise ConfigError(f"ecg_spec: unknown lead name(s) {unknown}; leads are named {list(LEADS)}")
        self.departures = departures(fam, self.name, o)
        if self.departures and o["strict"]:
            raise ConfigError(f"ecg_spec: departs from the {fam} input spec under strict: {'; '.join(self.departures)}")

    def preprocess(self, record: Record, *, train: bool = False, rng: Optional[np.random.Generator] = None
                   ) -> Dict[str, Any]:
        """``(12, T)`` mV at the native rate → ``{"x": (n_leads * fs * duration_s,) float32}``."""
        o = self.options
        data = np.asarray(record.data, dtype=np.float64)
        mask = np.asarray(record.meta.get("lead_mask", np.ones(len(LEADS), bool)), dtype=bool)
        idx = [LEADS.index(lead) for lead in o["leads"]]
        x = fill_nan(data[idx])  # gaps in a record: interpolated, as the ecg adapter does
        missing = [lead for lead, i in zip(o["leads"], idx) if not mask[i]]
        item: Dict[str, Any] = {"x": torch.from_numpy(spec_signal(x, float(record.meta["fs"]), o))}
        if missing:
            item["flags"] = [f"leads absent from the file, zero-filled: {', '.join(missing)}"]
        return item

    def augment(self, item: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
        return item

    def inference_spec(self) -> Dict[str, Any]:
        o = self.options
        fam = o.get("family")
        return {"input": "one 12-lead ECG file (WFDB, DICOM waveform, MUSE XML, array); output x "
                         "(n_leads * fs * duration_s,) float32",
                "family": fam, "spec": {**{k: o[k] for k in _SPEC_DEFAULTS}, "filter_order": o["filter_order"]},
                "steps": ["lead order", "first duration_s seconds (zero-padded)", "Butterworth band-pass, "
                          "sosfiltfilt, native rate", "resample_poly to fs", "scaling", "leads concatenated"],
                "departures": list(self.departures), "sources": family(fam)["cite"] if fam else {}}

    def example_input_shape(self) -> tuple:
        """``(n_leads * fs * duration_s,)``: the tensor one ECG becomes (an export traces with it)."""
        o = self.options
        return (len(o["leads"]) * int(round(float(o["fs"]) * float(o["duration_s"]))),)

    def tower_config(self) -> Dict[str, Any]:
        """The family's tower; without a family: a transformers HuBERT encoder (base config), mean-pooled."""
        if o_f := self.options.get("family"):
            return family_tower(o_f, self.name)
        return {"type": "hf_encoder", "hf_arch": {"model_type": "hubert", "config": {}}, "pool": "mean"}
