"""Classical baseline encoders: what every learned representation must beat, behind one interface.

A baseline encoder turns the cells of one modality — what its adapter's ``read`` returns
(a cleaned DNA sequence, a normalised report, a ``(12, T)`` ECG in millivolts with its
sampling rate) — into fixed feature vectors, so that probes, retrieval and BIOSCAN
accuracy can be computed on exactly the same samples as a model's embeddings:

    enc = get_baseline("kmer")            # or "tfidf", "ecg-features"
    enc.fit(train_values)                 # data-dependent state (TF-IDF vocabulary); a no-op for others
    X = enc.transform(values)             # (N, D) float32 numpy array

========================  =========  ==========================================================
name                      modality   features
========================  =========  ==========================================================
``kmer`` (``kmer6``...)   ``dna``    overlapping k-mer frequencies ``(N, 4**k)``, windows with a
                                     non-ACGT letter skipped (BarcodeBERT's baseline; cosine 1-NN)
``tfidf``                 ``text``   scikit-learn TF-IDF, word uni+bigrams, sublinear tf, min_df 2,
                                     rows L2-normalised (inner product = cosine)
``ecg-features``          ``ecg``    heart rate and RR SD from R peaks (``scipy.signal.find_peaks``),
                                     a QRS-width proxy, number of beats, per-lead mean / SD /
                                     peak-to-peak / skewness / kurtosis after a 0.5–40 Hz band-pass
``tabular``               ``tabular`` the tabular tower's features as a design matrix: standardised
                                     numbers, one-hot categories, multi-hot codes, a missing
                                     indicator per column (:mod:`.tabular_baseline`)
========================  =========  ==========================================================

The functions behind them (:func:`kmer_frequencies`, :func:`ecg_features`,
:func:`tfidf_embeddings`) are public for callers that hold raw arrays.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import signal as sps
from scipy import stats
from sklearn.feature_extraction.text import TfidfVectorizer

from medfm.errors import ConfigError, UsageError

from .tabular_baseline import TabularFeatureEncoder
from .vectors import l2_normalize

__all__ = [
    "BaselineEncoder", "KmerEncoder", "TfidfEncoder", "EcgFeatureEncoder", "BASELINES", "get_baseline",
    "kmer_frequencies", "ecg_features", "ecg_feature_names", "r_peaks", "tfidf_embeddings", "read_values",
]


# --------------------------------------------------------------------- DNA
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
        codes = _CODE[np.frombuffer(str(s).upper().encode("ascii", "replace"), dtype=np.uint8)]
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
    """R-peak sample indices of one lead ``(T,)``: 5–15 Hz band-pass, squared slope, ``find_peaks``.

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
def _tfidf(**kw: Any):

    opts = {"lowercase": True, "ngram_range": (1, 2), "min_df": 2, "sublinear_tf": True}
    opts.update(kw)
    return TfidfVectorizer(**opts)


def tfidf_embeddings(train_texts: Sequence[str], *corpora: Sequence[str], seed: int = 0):
    """Fit TF-IDF (word uni+bigrams, sublinear tf) on ``train_texts``; transform each corpus.

    Returns a list of sparse ``(N_i, V)`` L2-normalised matrices, one per corpus.
    """
    vec = _tfidf()
    vec.fit(list(train_texts))
    return [vec.transform(list(c)) for c in corpora]


# --------------------------------------------------------------- encoders
class BaselineEncoder:
    """A non-learned encoder of one modality's values.

    Attributes:
        name: baseline name as the CLI spells it (``"kmer6"``, ``"tfidf"``, ``"ecg-features"``).
        modality: the adapter whose ``read`` output it takes (``"dna"``, ``"text"``, ``"ecg"``).
        metric: ``"cosine"`` (compare rows by cosine) or ``"euclidean"`` (standardise first).
    """

    name = ""
    modality = ""
    metric = "cosine"

    def fit(self, values: Sequence[Any]) -> "BaselineEncoder":
        """Learn data-dependent state from training values; returns ``self``. Default: nothing."""
        return self

    def transform(self, values: Sequence[Any]) -> np.ndarray:
        """``N`` values → ``(N, D)`` float32."""
        raise NotImplementedError

    def fit_transform(self, values: Sequence[Any]) -> np.ndarray:
        return self.fit(values).transform(values)

    def describe(self) -> Dict[str, Any]:
        """What produced the features (goes into ``results.json``)."""
        return {"name": self.name, "modality": self.modality, "metric": self.metric}


def _data(v: Any) -> Any:
    """A :class:`medfm.modality.Record`'s data, or the value itself."""
    return getattr(v, "data", v)


class KmerEncoder(BaselineEncoder):
    """Overlapping k-mer frequencies of DNA sequences (strings or ``dna`` adapter records)."""

    modality = "dna"

    def __init__(self, k: int = 6):
        if not 1 <= int(k) <= 8:
            raise ValueError(f"kmer: k must be in 1..8, got {k}")
        self.k = int(k)
        self.name = f"kmer{self.k}"

    def transform(self, values: Sequence[Any]) -> np.ndarray:
        return kmer_frequencies([str(_data(v)) for v in values], self.k)

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "k": self.k, "dim": 4 ** self.k}


class TfidfEncoder(BaselineEncoder):
    """TF-IDF vectors of texts (strings or ``text`` adapter records), fitted in :meth:`fit`.

    Rows are L2-normalised, so the inner product of two rows is their cosine. Returned
    dense (``float32``); for large corpora use :func:`tfidf_embeddings` (sparse).
    """

    name = "tfidf"
    modality = "text"

    def __init__(self, **options: Any):
        self.options = options
        self.vectorizer = None

    def fit(self, values: Sequence[Any]) -> "TfidfEncoder":
        self.vectorizer = _tfidf(**self.options)
        try:
            self.vectorizer.fit([str(_data(v)) for v in values])
        except ValueError:  # too few texts for min_df: keep every term
            self.vectorizer = _tfidf(**{**self.options, "min_df": 1}).fit([str(_data(v)) for v in values])
        return self

    def transform(self, values: Sequence[Any]) -> np.ndarray:
        if self.vectorizer is None:
            raise RuntimeError("tfidf: call fit(texts) first")
        return self.vectorizer.transform([str(_data(v)) for v in values]).toarray().astype(np.float32)

    def describe(self) -> Dict[str, Any]:
        dim = len(self.vectorizer.vocabulary_) if self.vectorizer is not None else None
        return {**super().describe(), "ngram_range": [1, 2], "sublinear_tf": True, "dim": dim}


class EcgFeatureEncoder(BaselineEncoder):
    """Simple ECG features (:func:`ecg_features`) of ``ecg`` adapter records or ``(x (12, T) mV, fs)`` pairs."""

    name = "ecg-features"
    modality = "ecg"
    metric = "euclidean"

    def transform(self, values: Sequence[Any]) -> np.ndarray:
        rows = []
        for v in values:
            if hasattr(v, "data"):
                x, fs = v.data, float(v.meta["fs"])
            else:
                x, fs = v
            rows.append(ecg_features(np.asarray(x), float(fs))[0])
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(ecg_feature_names()))

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "dim": len(ecg_feature_names()), "features": ecg_feature_names()}


#: name → factory; ``kmer<k>`` (k = 1..8) is also accepted.
BASELINES: Dict[str, Callable[[], BaselineEncoder]] = {
    "kmer": lambda: KmerEncoder(6),
    "tfidf": TfidfEncoder,
    "ecg-features": EcgFeatureEncoder,
}


BASELINES["tabular"] = TabularFeatureEncoder


def get_baseline(name: str) -> BaselineEncoder:
    """A baseline encoder by name: ``kmer`` (= ``kmer6``), ``kmer<k>``, ``tfidf``, ``ecg-features``."""
    m = re.fullmatch(r"kmer(\d)", str(name))
    if m:
        return KmerEncoder(int(m.group(1)))
    if name not in BASELINES:

        raise ConfigError(f"unknown baseline {name!r}; known: {', '.join(sorted(BASELINES))}, kmer<k>")
    return BASELINES[name]()


def read_values(adapter: Any, rows: Any, column: Optional[str] = None) -> List[Any]:
    """The adapter's ``read`` output (a :class:`~medfm.modality.Record`) of every manifest row.

    Relative paths resolve against the manifest's folder (``rows.attrs["base_dir"]``), as
    in :class:`medfm.data.ManifestDataset`. A row that cannot be read raises the
    adapter's :class:`medfm.errors.DataError` naming it (callers pass rows the model
    embedded, so they are readable).
    """
    col = column or adapter.name
    base = rows.attrs.get("base_dir")
    out = []
    for row in rows.to_dict("records"):
        value = adapter.source_from_row(row, col)
        if adapter.input_kind == "path" and isinstance(value, str) and base:
            p = Path(value).expanduser()
            value = str(p if p.is_absolute() else Path(base) / p)
        out.append(adapter.read(value, sample_id=str(row.get("id")), row=row))
    return out


# ------------------------------------------------- "vs baseline" in evaluations
def _check_modality(enc: BaselineEncoder, adapter: Any, role: str) -> None:

    if adapter.name != enc.modality:
        raise UsageError(f"--baseline {enc.name} encodes {enc.modality!r} data, but the {role} modality is "
                         f"{adapter.name!r}; choose a baseline of that modality "
                         f"(kmer: dna, tfidf: text, ecg-features: ecg, tabular: tabular)")


def standardize(X: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    """``(X - mean) / sd`` with mean and SD of ``X[fit_rows]`` (SD 0 → 1)."""
    mu = X[fit_rows].mean(0)
    sd = X[fit_rows].std(0)
    return ((X - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def _unit(X: np.ndarray) -> np.ndarray:
    return l2_normalize(X, axis=1).astype(np.float32)


def retrieval_features(name: str, model: Any, query_modality: str, gallery_modality: str, query_rows: Any,
                       gallery_rows: Any, base_dir: Any = None, columns: Optional[Mapping[str, str]] = None
                       ) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """Baseline features of the query and gallery rows, L2-normalised for cosine ranking.

    ``columns`` (``{modality: manifest column}``, the ``--column`` mapping) says where each modality's
    cells are, as for the model: the baseline reads the same cells (default: the modality's name).

    Both modalities must be the baseline's (TF-IDF compares texts with texts). Unsupervised
    state (the TF-IDF vocabulary, the feature standardisation) is fitted on the query and
    gallery values together; no label or match is used.

    Returns ``(Q (Nq, D), G (Ng, D), description)``.
    """
    enc = get_baseline(name)
    aq, ag = model.adapters[query_modality], model.adapters[gallery_modality]
    _check_modality(enc, aq, "query")
    _check_modality(enc, ag, "gallery")
    for rows in (query_rows, gallery_rows):
        if base_dir is not None:
            rows.attrs["base_dir"] = base_dir
    cols = dict(columns or {})
    vq = read_values(aq, query_rows, cols.get(query_modality, query_modality))
    vg = read_values(ag, gallery_rows, cols.get(gallery_modality, gallery_modality))
    X = enc.fit_transform(list(vq) + list(vg))
    if enc.metric == "euclidean":
        X = standardize(X, np.ones(len(X), dtype=bool))
    X = _unit(X)
    return X[: len(vq)], X[len(vq):], {**enc.describe(), "fitted_on": "query + gallery values (unsupervised)"}


def probe_features(name: str, model: Any, modality: str, rows: Any, train_rows: np.ndarray,
                   base_dir: Any = None, column: Optional[str] = None) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Baseline features of ``rows`` for a probe: fitted on the train rows only, standardised with
    the train rows' statistics (logistic regression and cosine kNN then treat them like embeddings).
    ``column``: the manifest column of ``modality`` (the ``--column`` mapping; default its name).

    Returns ``(X (N, D), description)``.
    """
    enc = get_baseline(name)
    adapter = model.adapters[modality]
    _check_modality(enc, adapter, "probed")
    if base_dir is not None:
        rows.attrs["base_dir"] = base_dir
    values = read_values(adapter, rows, column or modality)
    train_rows = np.asarray(train_rows, dtype=bool)
    enc.fit([v for v, t in zip(values, train_rows) if t])
    X = standardize(enc.transform(values), train_rows)
    return X, {**enc.describe(), "fitted_on": "train split only", "standardised": "train mean / SD"}
