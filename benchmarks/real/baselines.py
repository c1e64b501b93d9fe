"""Non-learned baselines of the real-data suite: k-mer frequencies, simple ECG features, TF-IDF.

- :func:`kmer_frequencies` — DNA → ``(N, 4**k)`` overlapping k-mer frequency vectors
  (k-mers holding N are skipped), compared by cosine 1-NN (BarcodeBERT's baseline).
- :func:`ecg_features` — a 12-lead ECG in millivolts → heart rate from R peaks
  (:func:`scipy.signal.find_peaks`), RR variability, a QRS-width proxy (R-peak width at
  half prominence, :func:`scipy.signal.peak_widths`) and per-lead statistics.
- :func:`tfidf_embeddings` — scikit-learn TF-IDF vectors (L2-normalised, so an inner
  product is the cosine) fitted on training texts only.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy import signal as sps
from scipy import stats

_CODE = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate("ACGT"):
    _CODE[ord(_c)] = _i


def kmer_frequencies(seqs: Sequence[str], k: int) -> np.ndarray:
    """Overlapping k-mer frequency vectors ``(N, 4**k)`` float32, each row summing to 1.

    Windows containing a letter other than A/C/G/T are skipped; a sequence without any
    valid window gives a zero row.
    """
    weights = 4 ** np.arange(k - 1, -1, -1, dtype=np.int64)
    out = np.zeros((len(seqs), 4 ** k), dtype=np.float32)
    for i, s in enumerate(seqs):
        codes = _CODE[np.frombuffer(str(s).upper().encode("ascii"), dtype=np.uint8)]
        if codes.size < k:
            continue
        win = np.lib.stride_tricks.sliding_window_view(codes, k)
        ok = (win >= 0).all(1)
        idx = win[ok] @ weights
        if idx.size:
            out[i] = np.bincount(idx, minlength=4 ** k) / idx.size
    return out


# --------------------------------------------------------------------- ECG
ECG_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def _bandpass(x: np.ndarray, fs: float, lo: float, hi: float, order: int = 3) -> np.ndarray:
    sos = sps.butter(order, [lo, min(hi, 0.45 * fs)], btype="band", fs=fs, output="sos")
    return sps.sosfiltfilt(sos, x, axis=-1)


def r_peaks(lead: np.ndarray, fs: float) -> np.ndarray:
    """R-peak sample indices of one lead: 5–15 Hz band-pass, squared slope, ``find_peaks``.

    Peaks are at least 250 ms apart (≤ 240 bpm) and above 35 % of the median height of the
    upper half of envelope peaks; each is then moved to the largest |amplitude| within ±60 ms.
    """
    f = _bandpass(lead, fs, 5.0, 15.0)
    env = np.convolve(np.gradient(f) ** 2, np.ones(max(1, int(0.08 * fs))) / max(1, int(0.08 * fs)), mode="same")
    cand, props = sps.find_peaks(env, distance=int(0.25 * fs), height=0.0)
    if cand.size == 0:
        return cand
    h = np.sort(props["peak_heights"])
    # robust to a few artefact spikes: 35 % of the median of the upper half of candidate heights
    peaks = cand[props["peak_heights"] >= 0.35 * np.median(h[-max(3, h.size // 2):])]
    w = int(0.06 * fs)
    refined = [max(0, p - w) + int(np.argmax(np.abs(lead[max(0, p - w): p + w + 1]))) for p in peaks]
    return np.unique(np.asarray(refined, dtype=np.int64))


def ecg_feature_names() -> List[str]:
    stats_names = ("mean", "std", "p2p", "skew", "kurt")
    return (["heart_rate_bpm", "rr_sd_ms", "qrs_width_ms", "n_beats"]
            + [f"{lead}_{s}" for lead in ECG_LEADS for s in stats_names])


def ecg_features(x_mv: np.ndarray, fs: float) -> Tuple[np.ndarray, Dict[str, float]]:
    """Simple features of a ``(12, T)`` ECG in millivolts at ``fs`` Hz.

    Returns ``(vector (4 + 12*5,), summary)``: heart rate (bpm, 60 / median RR), SD of RR (ms),
    QRS-width proxy (median R-peak width at half prominence on lead II, ms), number of beats,
    then per lead mean, SD, peak-to-peak, skewness and kurtosis after a 0.5–40 Hz band-pass.
    """
    x = _bandpass(np.nan_to_num(np.asarray(x_mv, dtype=np.float64)), fs, 0.5, 40.0)
    lead = x[1] if np.ptp(x[1]) > 0 else x[np.argmax(np.ptp(x, axis=1))]
    peaks = r_peaks(lead, fs)
    rr = np.diff(peaks) / fs
    hr = 60.0 / np.median(rr) if rr.size else 0.0
    rr_sd = float(np.std(rr) * 1000) if rr.size > 1 else 0.0
    if peaks.size:
        sig = lead if np.median(lead[peaks]) >= 0 else -lead
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            widths = sps.peak_widths(sig, peaks, rel_height=0.5)[0]
        qrs = float(np.median(widths) / fs * 1000)
    else:
        qrs = 0.0
    per_lead = []
    for row in x:
        sd = row.std()
        per_lead += [row.mean(), sd, np.ptp(row), float(stats.skew(row)) if sd > 0 else 0.0,
                     float(stats.kurtosis(row)) if sd > 0 else 0.0]
    vec = np.asarray([hr, rr_sd, qrs, float(peaks.size)] + per_lead, dtype=np.float64)
    return np.nan_to_num(vec), {"heart_rate_bpm": float(hr), "qrs_width_ms": qrs, "rr_sd_ms": rr_sd,
                                "n_beats": int(peaks.size)}


# -------------------------------------------------------------------- text
def tfidf_embeddings(train_texts: Sequence[str], *corpora: Sequence[str], seed: int = 0):
    """Fit TF-IDF (word uni+bigrams, sublinear tf) on ``train_texts``; transform each corpus.

    Returns a list of sparse ``(N_i, V)`` L2-normalised matrices, one per corpus.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(lowercase=True, ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    vec.fit(list(train_texts))
    return [vec.transform(list(c)) for c in corpora]
