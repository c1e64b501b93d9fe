"""12-lead ECG (``ecg``): the adapter (reading, canonical 12-lead form, filtering, 1-D patch tower).

The readers are in :mod:`medfm.modalities.ecg_files`, the lead names, units and canonical form in
:mod:`medfm.modalities.ecg_leads`, the filters in :mod:`medfm.modalities.signal`; their names stay
importable from here.

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

import math
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from medfm.errors import ConfigError, DataError
from medfm.modality import ModalityAdapter, Record, check_format
from medfm.registry import register_modality

from . import signal as sig
from .ecg_files import (MAX_WFDB_SIGNALS, check_wfdb_header, read_array, read_dicom_waveform,  # noqa: F401
                        read_muse_xml, read_sidecar, read_wfdb, wfdb_header_lines)
from .ecg_leads import (FLAT_MV, LEAD_ALIASES, LEAD_INDEX, LEADS, UNIT_TO_MV, UNKNOWN_UNITS,  # noqa: F401
                        canonicalize, derive_limb_leads, normalize_lead_name, unit_factor)
from .ecg_hl7 import is_hl7_aecg, read_hl7_aecg


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
        info.update({k: v for k, v in read_sidecar(p).items() if k in ("fs", "leads", "units")})
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
                                     "removed; then this table", "table": dict(LEAD_ALIASES)},
                 "units": {"to": "mV", "factors": dict(UNIT_TO_MV), "assumed_mV": sorted(UNKNOWN_UNITS)}},
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
