"""Vectorised 1-D signal helpers (all leads at once, time on the last axis).

Every function takes ``x`` of shape ``(C, T)`` (float) and returns the same layout.
Filters are designed once per (rate, band) and cached.
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import signal as sps


def resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling ``(C, T)`` → ``(C, round(T * fs_out / fs_in))`` (``scipy.signal.resample_poly``)."""
    if float(fs_in) == float(fs_out):
        return x
    frac = Fraction(float(fs_out) / float(fs_in)).limit_denominator(1000)
    y = sps.resample_poly(x, frac.numerator, frac.denominator, axis=-1)
    n = int(round(x.shape[-1] * float(fs_out) / float(fs_in)))
    return y[..., :n]


@lru_cache(maxsize=64)
def _bandpass_sos(fs: float, low: Optional[float], high: Optional[float], order: int) -> Optional[np.ndarray]:
    nyq = fs / 2.0
    lo = low if low and low > 0 else None
    hi = high if high and high < nyq else None
    if lo and hi:
        return sps.butter(order, [lo, hi], btype="bandpass", fs=fs, output="sos")
    if lo:
        return sps.butter(order, lo, btype="highpass", fs=fs, output="sos")
    if hi:
        return sps.butter(order, hi, btype="lowpass", fs=fs, output="sos")
    return None


def bandpass(x: np.ndarray, fs: float, band: Sequence[Optional[float]], order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth band-pass (``sosfiltfilt``); ``band = (low, high)``, either may be ``None``.

    The high-pass edge removes baseline wander; a high edge at or above Nyquist is ignored.
    """
    sos = _bandpass_sos(float(fs), None if band[0] is None else float(band[0]),
                        None if band[1] is None else float(band[1]), int(order))
    if sos is None:
        return x
    return sps.sosfiltfilt(sos, x, axis=-1)


@lru_cache(maxsize=16)
def _notch_ba(fs: float, freq: float, q: float) -> Tuple[np.ndarray, np.ndarray]:
    return sps.iirnotch(freq, q, fs=fs)


def notch(x: np.ndarray, fs: float, freq: float, q: float = 30.0) -> np.ndarray:
    """Zero-phase mains notch at ``freq`` Hz (``iirnotch`` + ``filtfilt``); no-op above Nyquist."""
    if freq is None or float(freq) >= float(fs) / 2:
        return x
    b, a = _notch_ba(float(fs), float(freq), float(q))
    return sps.filtfilt(b, a, x, axis=-1)


def fill_nan(x: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN runs of each row (edges take the nearest value). All-NaN rows stay NaN."""
    bad = np.isnan(x)
    if not bad.any():
        return x
    x = x.copy()
    t = np.arange(x.shape[-1])
    for i in np.nonzero(bad.any(axis=-1))[0]:
        ok = ~bad[i]
        if ok.any():
            x[i, ~ok] = np.interp(t[~ok], t[ok], x[i, ok])
    return x


def crop_or_pad(x: np.ndarray, length: int, start: int = 0) -> np.ndarray:
    """``x[:, start:start+length]``, zero-padded on the right when shorter."""
    y = x[..., start:start + length]
    if y.shape[-1] < length:
        pad = np.zeros(y.shape[:-1] + (length - y.shape[-1],), dtype=y.dtype)
        y = np.concatenate([y, pad], axis=-1)
    return y


def standardize(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Per-row zero mean, unit variance; a flat row (std < ``eps``) becomes zeros, never NaN."""
    mean = x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    flat = std < eps
    return np.where(flat, 0.0, (x - mean) / np.where(flat, 1.0, std))
