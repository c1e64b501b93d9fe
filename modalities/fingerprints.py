"""Content fingerprints of decoded samples: what counts as "the same sample" per modality.

``medfm audit data`` compares samples after the adapters' readers decoded them (``adapter.read``:
HU volumes, pixel arrays, millivolt signals, sequences, report text), so a PNG re-saved as a TIFF or
a DICOM re-written with a new header is still the same sample.

* **exact**: :func:`content_hash` — sha256 of the decoded array (dtype, shape, bytes) or of the text.
* **near** (one stated distance per modality kind, :data:`NEAR_RULES`):

  ============  ============================================================  ==============================
  kind          fingerprint                                                   near when
  ============  ============================================================  ==============================
  ``image``     average hash: block means of a 16×16 grid (2D) or 4×16×16     Hamming ≤ 5 % of the bits
                grid (volumes), one bit per block: above the median
  ``signal``    every lead resampled to 500 points, z-scored per lead         mean per-lead Pearson r ≥ 0.99
  ``sequence``  set of 12-mers of the cleaned sequence (A/C/G/T only)         Jaccard (k-mer identity) ≥ 0.95
  ``text``      normalised text: lower case, punctuation and extra blanks     equal normalised text
                dropped
  ============  ============================================================  ==============================

``SHARED_CONTENT_IS_NATURAL``: for sequences and text, one content shared by many people is expected
(a common haplotype, a templated "no acute findings" report); the audit treats a content seen in at
least ``template_min_patients`` patients (default 2) as shared content, not as a leak (it is still
counted). A study copied under a second patient id is caught by its image or signal, not its report.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from scipy import sparse

__all__ = ["KIND_OF", "NEAR_RULES", "SHARED_CONTENT_IS_NATURAL", "Fingerprint", "content_hash", "fingerprint",
           "kind_of", "near_pairs", "normalise_text"]

#: adapter name → fingerprint kind (adapters not listed: ``image`` for arrays, ``text`` for strings)
KIND_OF: Dict[str, str] = {"ct": "image", "oct": "image", "xray": "image", "fundus": "image",
                           "ecg": "signal", "dna": "sequence", "text": "text"}
#: the stated near-duplicate rule of each kind (written into the audit record)
NEAR_RULES: Dict[str, Dict[str, Any]] = {
    "image": {"fingerprint": "average hash, 16x16 (2D) or 4x16x16 (3D) block means > median",
              "near_if": "hamming <= 0.05 * bits", "max_hamming_fraction": 0.05},
    "signal": {"fingerprint": "leads resampled to 500 points, z-scored per lead",
               "near_if": "mean per-lead pearson r >= 0.99", "min_correlation": 0.99},
    "sequence": {"fingerprint": "set of 12-mers (A/C/G/T)", "near_if": "jaccard >= 0.95", "k": 12,
                 "min_jaccard": 0.95},
    "text": {"fingerprint": "lower case, punctuation removed, blanks collapsed", "near_if": "equal normalised text"},
}
SHARED_CONTENT_IS_NATURAL = ("sequence", "text")

_SIGNAL_POINTS = 500
_PUNCT = re.compile(r"[^\w\s]+")
_BLANKS = re.compile(r"\s+")


def kind_of(adapter_name: str, data: Any) -> str:
    """The fingerprint kind of ``adapter_name`` (falls back on the decoded data's type)."""
    if adapter_name in KIND_OF:
        return KIND_OF[adapter_name]
    return "text" if isinstance(data, str) else "image"


def content_hash(data: Any) -> str:
    """sha256 of a decoded sample: an array's dtype, shape and bytes, or a string's UTF-8."""
    h = hashlib.sha256()
    if isinstance(data, str):
        h.update(b"str:" + data.encode("utf-8"))
    else:
        a = np.ascontiguousarray(np.asarray(data))
        h.update(f"{a.dtype.str}:{a.shape}:".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def normalise_text(text: str) -> str:
    """Lower case, punctuation removed, runs of blanks collapsed: ``"No  acute, findings."`` → ``"no acute findings"``."""
    return _BLANKS.sub(" ", _PUNCT.sub(" ", str(text).lower())).strip()


def _block_means(a: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Mean of ``a`` over a regular grid of blocks (``np.array_split`` along each axis) → array of ``grid``."""
    out = a.astype(np.float64)
    for axis, n in enumerate(grid):
        n = max(1, min(int(n), out.shape[axis]))
        parts = np.array_split(out, n, axis=axis)
        out = np.stack([p.mean(axis=axis) for p in parts], axis=axis)
    return out


def _image_bits(a: np.ndarray, adapter_name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if adapter_name in ("xray", "fundus") or a.ndim == 2:
        if a.ndim == 3 and a.shape[-1] in (3, 4):  # (H, W, C) colour
            a = a[..., :3].mean(axis=-1)
        grid = (16, 16)
    else:  # (D, H, W) volume or stack
        a = a.reshape((-1,) + a.shape[-2:])
        grid = (4, 16, 16) if a.shape[0] >= 4 else (a.shape[0], 16, 16)
    blocks = _block_means(a, grid)
    return (blocks > np.median(blocks)).ravel()


def _signal_vector(a: np.ndarray) -> np.ndarray:
    """``(leads, T)`` → ``(leads * 500,)`` per-lead z-scored, each lead resampled to 500 points."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    t_new = np.linspace(0.0, 1.0, _SIGNAL_POINTS)
    t_old = np.linspace(0.0, 1.0, a.shape[-1])
    rows = []
    for lead in a.reshape(-1, a.shape[-1]):
        lead = np.nan_to_num(lead)
        r = np.interp(t_new, t_old, lead)
        sd = r.std()
        rows.append((r - r.mean()) / sd if sd > 1e-9 else np.zeros_like(r))
    return np.concatenate(rows).astype(np.float32)


def _kmers(seq: str, k: int) -> frozenset:
    s = re.sub(r"[^ACGT]", "", seq.upper())
    return frozenset(s[i:i + k] for i in range(max(0, len(s) - k + 1)))


@dataclass
class Fingerprint:
    """One decoded sample's fingerprints: ``exact`` (sha256), ``kind``, ``near`` (kind-specific key) and
    ``shape`` (only fingerprints of equal ``shape`` are compared: a 12-lead ECG with a 12-lead ECG)."""

    exact: str
    kind: str
    near: Any
    shape: Tuple[int, ...] = ()


def fingerprint(adapter_name: str, data: Any) -> Fingerprint:
    """The :class:`Fingerprint` of a decoded sample (``adapter.read(...).data``)."""
    kind = kind_of(adapter_name, data)
    exact = content_hash(data)
    if kind == "text":
        return Fingerprint(exact, kind, normalise_text(data))
    if kind == "sequence":
        km = _kmers(str(data), NEAR_RULES["sequence"]["k"])
        return Fingerprint(exact, kind, km)
    if kind == "signal":
        a = np.asarray(data)
        return Fingerprint(exact, kind, _signal_vector(a), (a.shape[0] if a.ndim > 1 else 1,))
    bits = _image_bits(np.asarray(data), adapter_name)
    return Fingerprint(exact, kind, bits, (bits.size,))


def near_pairs(fps: Sequence[Fingerprint]) -> List[Tuple[int, int, float]]:
    """Pairs ``(i, j, distance)``, ``i < j``, of fingerprints (one kind) that are near by :data:`NEAR_RULES`.

    The distance is the Hamming fraction (image), ``1 - r`` (signal), ``1 - Jaccard`` (sequence) or 0
    (text). Exact duplicates are included (distance 0).
    """
    if not fps:
        return []
    kind = fps[0].kind
    out: List[Tuple[int, int, float]] = []
    if kind == "text":
        groups: Dict[str, List[int]] = {}
        for i, f in enumerate(fps):
            if f.near:
                groups.setdefault(f.near, []).append(i)
        for idx in groups.values():
            out += [(a, b, 0.0) for n, a in enumerate(idx) for b in idx[n + 1:]]
        return out
    by_shape: Dict[Tuple[int, ...], List[int]] = {}
    for i, f in enumerate(fps):
        by_shape.setdefault(f.shape, []).append(i)
    for shape, idx in by_shape.items():
        if len(idx) < 2:
            continue
        if kind == "image":
            bits = np.stack([fps[i].near for i in idx]).astype(np.float32)
            dist = (bits @ (1 - bits).T + (1 - bits) @ bits.T) / bits.shape[1]  # Hamming fraction
            limit = NEAR_RULES["image"]["max_hamming_fraction"]
        elif kind == "signal":
            v = np.stack([fps[i].near for i in idx]).astype(np.float64)
            active = (v.reshape(len(idx), -1, _SIGNAL_POINTS) != 0).any(-1).astype(np.float64)  # (n, leads)
            # mean per-lead Pearson r over the leads both records carry (each lead z-scored, 500 points)
            corr = (v @ v.T) / (_SIGNAL_POINTS * np.maximum(active @ active.T, 1.0))
            dist, limit = 1.0 - corr, 1.0 - NEAR_RULES["signal"]["min_correlation"]
        else:  # sequence: k-mer Jaccard
            dist = _jaccard_distance([fps[i].near for i in idx])
            limit = 1.0 - NEAR_RULES["sequence"]["min_jaccard"]
        a, b = np.nonzero(np.triu(dist <= limit + 1e-9, k=1))
        out += [(idx[i], idx[j], float(max(0.0, dist[i, j]))) for i, j in zip(a.tolist(), b.tolist())]
    return out


def _jaccard_distance(sets: Sequence[frozenset]) -> np.ndarray:
    """``1 - |A∩B| / |A∪B|`` for every pair of k-mer sets (a sparse presence matrix, one product)."""

    vocab: Dict[str, int] = {}
    rows, cols = [], []
    for r, s in enumerate(sets):
        for km in s:
            rows.append(r)
            cols.append(vocab.setdefault(km, len(vocab)))
    m = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(sets), max(1, len(vocab))))
    inter = (m @ m.T).toarray()
    size = np.asarray(m.sum(axis=1)).ravel()
    union = size[:, None] + size[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        jac = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return 1.0 - jac
