"""The embedded demo cohort: a seeded generator of small multimodal samples in real file formats.

Every sample has a hidden class ``c`` in :data:`CLASSES` (``normal``, ``early``, ``advanced``
disease), constant per patient, and each modality carries it:

===========  =========================================  =============================================
modality     file (writer)                              what the class changes
===========  =========================================  =============================================
``ct``       ``ct/<id>.nii`` 16×64×64 HU (nibabel)   lung nodule: none / small ground-glass / large dense
``oct``      ``oct/<id>/oct_<k>.png`` 16 B-scans 64×64  drusen bumps under the RPE: none / few small / many large
``xray``     ``xray/<id>.png`` 64×64 8-bit (Pillow)     lung opacity: none / faint patch / dense consolidation
``ecg``      ``ecg/<id>.hea/.dat`` 12×2.5 s @100 Hz     heart rate 60–75 / 85–100 / 110–130 bpm; ST 0 / −0.15 / +0.3 mV
             (``wfdb.wrsamp``)
``dna``      inline (manifest cell), 120 nt             clade-specific mutations at fixed sites of a reference
``text``     inline report                              class-specific findings and impression, MICROBIOLOGY line
===========  =========================================  =============================================

Each non-text modality is missing from a sample with probability ``p_missing`` (at
least two modalities are always kept), the report with a smaller probability. The
manifest ``DIR/manifest.csv`` has columns ``id, patient_id, split, ct, oct, xray, ecg,
dna, text, taxonomy, label``; splits are by patient (``train``/``val``/``test``).

The real files that pydicom and nibabel ship (``CT_small.dcm``, ``waveform_ecg.dcm``,
``anatomical.nii``) are copied to ``DIR/real/`` and listed in a second manifest
``DIR/real_manifest.csv`` (split ``external``, no label): the demo reads them through
the same adapters to show the real readers at work.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the
same files.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import pandas as pd
import wfdb
from nibabel.testing import data_path
from PIL import Image
from pydicom.data import get_testdata_file
from tqdm.auto import tqdm

from medfm.errors import ConfigError

#: the hidden classes, in label order
CLASSES: Tuple[str, ...] = ("normal", "early", "advanced")
MODALITIES: Tuple[str, ...] = ("ct", "oct", "xray", "ecg", "dna", "text")
IMAGING: Tuple[str, ...] = ("ct", "oct", "xray", "ecg", "dna")
LEADS: Tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

CT_SHAPE = (16, 64, 64)       # (D, H, W)
OCT_SHAPE = (16, 64, 64)      # (frames, H, W)
XRAY_SIZE = 64
ECG_FS, ECG_SECONDS = 100, 2.5
DNA_LENGTH = 120

#: one organism per class (the DNA barcode's clade and the report's MICROBIOLOGY line)
TAXONOMY: Dict[str, str] = {
    "normal": "Lactobacillales Lactobacillaceae Lactobacillus crispatus",
    "early": "Enterobacterales Enterobacteriaceae Escherichia coli",
    "advanced": "Pseudomonadales Pseudomonadaceae Pseudomonas aeruginosa",
}

#: report phrases per class and modality (a sample's report mentions what it has)
FINDINGS: Dict[str, Dict[str, List[str]]] = {
    "normal": {
        "ct": ["lungs are clear without nodule", "no pulmonary nodule"],
        "xray": ["no focal opacity", "clear lung fields"],
        "oct": ["retinal layers are regular without drusen", "no drusen"],
        "ecg": ["normal sinus rhythm with normal st segments", "sinus rhythm rate normal"],
    },
    "early": {
        "ct": ["small ground glass nodule", "small faint nodule in the lung"],
        "xray": ["faint patchy opacity", "subtle hazy opacity"],
        "oct": ["few small drusen", "scattered small drusen"],
        "ecg": ["mild sinus tachycardia with st depression", "st depression with fast rate"],
    },
    "advanced": {
        "ct": ["large dense mass", "large solid dense lesion"],
        "xray": ["dense consolidation", "extensive dense opacity"],
        "oct": ["many large confluent drusen", "large drusen elevating the rpe"],
        "ecg": ["marked tachycardia with st elevation", "st elevation with very fast rate"],
    },
}
IMPRESSION: Dict[str, List[str]] = {
    "normal": ["normal study", "no evidence of disease"],
    "early": ["early disease", "mild early changes"],
    "advanced": ["advanced disease", "severe advanced changes"],
}

#: zero-shot prompt set (``medfm.evaluation.zeroshot.parse_prompt_set`` format)
PROMPTS: Dict[str, Any] = {
    "name": "demo_disease_stage",
    "task": "multiclass",
    "classes": {c: [f"impression: {p}" for p in IMPRESSION[c]] + [f"findings: {f}" for m in ("ct", "xray", "oct", "ecg")
                                                                     for f in FINDINGS[c][m][:1]]
                for c in CLASSES},
}


@dataclass
class CohortSpec:
    """Size and signal of the generated cohort.

    Args:
        n_patients: patients; each has 1–3 samples (visits), all of the patient's class.
        p_missing: probability that a non-text modality is absent from a sample.
        p_missing_text: probability that the report is absent.
        noise: scale of the per-sample noise relative to the class signal (1 = default).
        splits: fractions of patients in train / val / test.
        seed: seed of everything.
    """

    n_patients: int = 150
    p_missing: float = 0.2
    p_missing_text: float = 0.1
    noise: float = 1.0
    splits: Tuple[float, float, float] = (0.6, 0.15, 0.25)
    seed: int = 0

    def __post_init__(self):
        if self.n_patients < 6:
            raise ConfigError(f"demo cohort: n_patients must be at least 6, got {self.n_patients}")
        if not 0 <= self.p_missing < 1 or not 0 <= self.p_missing_text < 1:
            raise ConfigError("demo cohort: p_missing and p_missing_text must be in [0, 1)")


# ------------------------------------------------------------------ signals
def _ellipsoid(shape: Sequence[int], center: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Boolean mask ``shape`` of the ellipsoid/ellipse with ``center`` and ``radii`` (voxels)."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    r = sum(((g - c) / max(rr, 1e-6)) ** 2 for g, c, rr in zip(grids, center, radii))
    return r <= 1.0


def make_ct(cls: int, rng: np.random.Generator, noise: float = 1.0) -> np.ndarray:
    """``(D, H, W)`` float32 chest CT in HU: body, two lungs, and the class's nodule.

    Class 0: none; 1: small (radius 5–6.5 vx) ground-glass (−350 HU) nodule;
    2: large (radius 8–10 vx) dense (+50 HU) mass.
    """
    d, h, w = CT_SHAPE
    vol = np.full(CT_SHAPE, -1000.0, np.float32)
    vol[_ellipsoid(CT_SHAPE, (d / 2, h / 2, w / 2), (d, h * 0.45, w * 0.48))] = 40.0
    lungs = []
    for side in (-1, 1):
        m = _ellipsoid(CT_SHAPE, (d / 2, h / 2, w / 2 + side * w * 0.2), (d, h * 0.33, w * 0.16))
        vol[m] = -850.0
        lungs.append(side)
    if cls > 0:
        side = rng.choice(lungs)
        r = rng.uniform(5, 6.5) if cls == 1 else rng.uniform(8, 10)
        c = (rng.uniform(4, d - 4), h / 2 + rng.uniform(-8, 8), w / 2 + side * w * 0.2 + rng.uniform(-3, 3))
        m = _ellipsoid(CT_SHAPE, c, (r * 0.6, r, r))
        vol[m] = -350.0 if cls == 1 else 50.0
    vol += rng.normal(0, 25 * noise, CT_SHAPE).astype(np.float32)
    return vol


def make_oct(cls: int, rng: np.random.Generator, noise: float = 1.0) -> np.ndarray:
    """``(F, H, W)`` uint8 OCT volume: layered retina, drusen bumps lifting the bright RPE band.

    Class 0: no drusen; 1: 2–3 small (height 3–4 px) drusen; 2: 5–7 large (7–10 px) drusen.
    """
    f, h, w = OCT_SHAPE
    x = np.arange(w, dtype=np.float32)
    y = np.arange(h, dtype=np.float32)[:, None]
    n_dru = 0 if cls == 0 else int(rng.integers(2, 4)) if cls == 1 else int(rng.integers(5, 8))
    drusen = [(rng.uniform(0, f), rng.uniform(6, w - 6), rng.uniform(3, 4) if cls == 1 else rng.uniform(7, 10),
               rng.uniform(3, 5) if cls == 1 else rng.uniform(5, 8)) for _ in range(n_dru)]
    tilt = rng.uniform(-0.08, 0.08)
    out = np.empty(OCT_SHAPE, np.float32)
    for k in range(f):
        base = h * 0.62 + tilt * (x - w / 2) + 2.0 * np.sin(x / w * np.pi)
        lift = np.zeros(w, np.float32)
        for fz, cx, height, width in drusen:
            fall = np.exp(-0.5 * ((k - fz) / 3.0) ** 2)
            lift += height * fall * np.exp(-0.5 * ((x - cx) / width) ** 2)
        rpe = base - lift
        img = 0.15 + 0.35 * ((y > rpe - 22) & (y < rpe - 4))              # inner retina
        img = img + 0.6 * np.exp(-0.5 * ((y - rpe) / 1.5) ** 2)           # bright RPE band
        img = img + 0.25 * np.exp(-0.5 * ((y - (rpe - 20)) / 1.2) ** 2)  # nerve fibre layer
        img = img + 0.08 * noise * rng.standard_normal((h, w))
        out[k] = img
    return np.clip(out * 255, 0, 255).astype(np.uint8)


def make_xray(cls: int, rng: np.random.Generator, noise: float = 1.0) -> np.ndarray:
    """``(H, W)`` uint8 frontal chest radiograph: dark lung fields, bright mediastinum, opacity.

    Class 0: none; 1: faint (+0.15) small (radius 6–8 px) patch; 2: dense (+0.45) large (12–15 px).
    """
    s = XRAY_SIZE
    img = np.full((s, s), 0.75, np.float32)
    lung_masks = [_ellipsoid((s, s), (s * 0.5, s * (0.5 + side * 0.2)), (s * 0.34, s * 0.15)) for side in (-1, 1)]
    for m in lung_masks:
        img[m] = 0.2
    if cls > 0:
        side = rng.choice([-1, 1])
        r = rng.uniform(6, 8) if cls == 1 else rng.uniform(12, 15)
        c = (s * 0.5 + rng.uniform(-8, 8), s * (0.5 + side * 0.2) + rng.uniform(-2, 2))
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        blob = np.exp(-0.5 * (((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / r ** 2))
        img += (0.15 if cls == 1 else 0.45) * blob * (lung_masks[0] | lung_masks[1])
    img += 0.04 * noise * rng.standard_normal((s, s))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


#: relative amplitude of the QRS and T waves in the 12 leads (I … V6)
_LEAD_GAIN = np.array([0.8, 1.0, 0.4, -0.9, 0.5, 0.7, -0.6, 0.3, 0.8, 1.2, 1.1, 0.9])


def ecg_params(cls: int, rng: np.random.Generator) -> Tuple[float, float]:
    """``(heart rate bpm, ST shift mV)`` of a class."""
    hr = rng.uniform(*{0: (60, 75), 1: (85, 100), 2: (110, 130)}[cls])
    st = {0: 0.0, 1: -0.15, 2: 0.3}[cls]
    return float(hr), float(st)


def make_ecg(cls: int, rng: np.random.Generator, noise: float = 1.0) -> np.ndarray:
    """``(T, 12)`` float64 ECG in mV at :data:`ECG_FS` for :data:`ECG_SECONDS` s.

    Gaussian P, QRS and T waves at the class's heart rate; the ST segment shifted by the class's
    ST offset in every lead (sign by lead gain); baseline wander and noise.
    """
    n = int(round(ECG_FS * ECG_SECONDS))
    t = np.arange(n) / ECG_FS
    hr, st = ecg_params(cls, rng)
    rr = 60.0 / hr
    start = rng.uniform(0, rr)
    beat = np.zeros(n)
    stseg = np.zeros(n)
    p_t = np.zeros(n)
    for b in np.arange(start - rr, ECG_SECONDS + rr, rr):
        beat += np.exp(-0.5 * ((t - b) / 0.012) ** 2) - 0.15 * np.exp(-0.5 * ((t - b - 0.03) / 0.01) ** 2)
        stseg += np.exp(-0.5 * ((t - b - 0.12) / 0.05) ** 2)
        p_t += 0.12 * np.exp(-0.5 * ((t - b + 0.16) / 0.02) ** 2) + 0.3 * np.exp(-0.5 * ((t - b - 0.28) / 0.04) ** 2)
    gains = _LEAD_GAIN * rng.uniform(0.85, 1.15, 12)
    sig = gains[None] * (1.2 * beat + st * stseg + p_t)[:, None]
    sig += 0.1 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t + rng.uniform(0, 6.3))[:, None]
    sig += 0.02 * noise * rng.standard_normal((n, 12))
    return sig


def dna_reference(seed: int = 2024) -> Tuple[str, Dict[int, List[Tuple[int, str]]]]:
    """The reference barcode and each class's clade mutations ``{class: [(position, base)]}``.

    Fixed by ``seed`` (not by the cohort seed) so that every cohort shares the clades.
    """
    rng = np.random.default_rng(seed)
    ref = "".join(rng.choice(list("ACGT"), DNA_LENGTH))
    sites = rng.choice(DNA_LENGTH, size=3 * 12, replace=False)
    muts: Dict[int, List[Tuple[int, str]]] = {}
    for c in range(len(CLASSES)):
        muts[c] = []
        for pos in sites[c * 12:(c + 1) * 12]:
            alt = rng.choice([b for b in "ACGT" if b != ref[pos]])
            muts[c].append((int(pos), str(alt)))
    return ref, muts


def make_dna(cls: int, rng: np.random.Generator, noise: float = 1.0) -> str:
    """A 120-nt barcode: the reference with the clade's 12 mutations, 2 % random substitutions, rare N."""
    ref, muts = dna_reference()
    seq = list(ref)
    for pos, base in muts[cls]:
        seq[pos] = base
    for i in np.flatnonzero(rng.random(DNA_LENGTH) < 0.02 * noise):
        seq[i] = str(rng.choice(list("ACGT")))
    if rng.random() < 0.1:
        seq[int(rng.integers(DNA_LENGTH))] = "N"
    return "".join(seq)


def make_report(cls: int, present: Sequence[str], rng: np.random.Generator) -> str:
    """A short report: FINDINGS for the modalities the sample has, IMPRESSION, MICROBIOLOGY."""
    name = CLASSES[cls]
    parts = [str(rng.choice(FINDINGS[name][m])) for m in ("ct", "xray", "oct", "ecg") if m in present]
    rng.shuffle(parts)
    text = "FINDINGS: " + ("; ".join(parts) if parts else "limited study") + ". "
    text += f"IMPRESSION: {rng.choice(IMPRESSION[name])}."
    if "dna" in present:
        text += f" MICROBIOLOGY: isolate {TAXONOMY[name]}."
    return text


# ------------------------------------------------------------------ writers
def write_nifti(path: Path, vol_dhw: np.ndarray, spacing: Tuple[float, float, float] = (2.5, 1.5, 1.5)) -> None:
    """``(D, H, W)`` HU → NIfTI (X, Y, Z) = (W, H, D) with an RAS diagonal affine (nibabel)."""
    sd, sh, sw = spacing
    img = nib.Nifti1Image(np.ascontiguousarray(vol_dhw.transpose(2, 1, 0)).astype(np.int16),
                          np.diag([sw, sh, sd, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def write_png(path: Path, img: np.ndarray) -> None:
    Image.fromarray(img).save(str(path))


def write_bscans(folder: Path, vol: np.ndarray) -> None:
    """One PNG per B-scan, ``oct_0.png`` … (natural order), as OCTCube stores volumes."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, frame in enumerate(vol):
        write_png(folder / f"oct_{k}.png", frame)


def write_wfdb(folder: Path, name: str, sig_tc: np.ndarray) -> None:
    """``(T, 12)`` mV → WFDB record ``folder/name.hea`` + ``.dat`` (format 16) via ``wfdb.wrsamp``."""
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=ECG_FS, units=["mV"] * 12, sig_name=list(LEADS), p_signal=sig_tc,
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))


# ------------------------------------------------------------------ cohort
def _patient_splits(patient_class: np.ndarray, fractions: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Split patients into train/val/test with the fractions, stratified by class (balanced test set)."""
    out = np.empty(len(patient_class), dtype=object)
    for c in np.unique(patient_class):
        idx = rng.permutation(np.flatnonzero(patient_class == c))
        n = len(idx)
        n_va = max(1, int(round(fractions[1] * n)))
        n_te = max(1, int(round(fractions[2] * n)))
        out[idx[:n - n_va - n_te]] = "train"
        out[idx[n - n_va - n_te:n - n_te]] = "val"
        out[idx[n - n_te:]] = "test"
    return out


def _present(rng: np.random.Generator, spec: CohortSpec) -> List[str]:
    keep = [m for m in IMAGING if rng.random() >= spec.p_missing]
    while len(keep) < 2:  # at least two non-text modalities
        extra = [m for m in IMAGING if m not in keep]
        keep.append(str(rng.choice(extra)))
    keep = [m for m in IMAGING if m in keep]
    if rng.random() >= spec.p_missing_text:
        keep.append("text")
    return keep


def generate_cohort(out_dir: Any, spec: Optional[CohortSpec] = None, *, progress: bool = True) -> pd.DataFrame:
    """Write the cohort into ``out_dir`` and return its manifest (also ``out_dir/manifest.csv``).

    Args:
        out_dir: folder created if needed; files go in ``ct/``, ``oct/``, ``xray/``, ``ecg/``.
        spec: :class:`CohortSpec` (default: 150 patients, seed 0).
        progress: show a progress bar.
    Returns:
        the manifest with one row per sample; relative paths (against ``out_dir``).
    """
    spec = spec or CohortSpec()
    out = Path(out_dir)
    for sub in ("ct", "oct", "xray", "ecg"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    # balanced classes: cycle through them, then shuffle
    patient_class = rng.permutation(np.arange(spec.n_patients) % len(CLASSES))
    splits = _patient_splits(patient_class, spec.splits, rng)
    visits = rng.integers(1, 4, spec.n_patients)
    rows: List[Dict[str, Any]] = []
    total = int(visits.sum())
    bar = tqdm(total=total, desc="cohort", unit="sample", disable=not progress)
    for p in range(spec.n_patients):
        cls = int(patient_class[p])
        for v in range(int(visits[p])):
            sid = f"S{len(rows):04d}"
            srng = np.random.default_rng([spec.seed, p, v])
            present = _present(srng, spec)
            row: Dict[str, Any] = {"id": sid, "patient_id": f"P{p:04d}", "split": splits[p]}
            row.update({m: None for m in MODALITIES})
            if "ct" in present:
                write_nifti(out / "ct" / f"{sid}.nii", make_ct(cls, srng, spec.noise))
                row["ct"] = f"ct/{sid}.nii"
            if "oct" in present:
                write_bscans(out / "oct" / sid, make_oct(cls, srng, spec.noise))
                row["oct"] = f"oct/{sid}"
            if "xray" in present:
                write_png(out / "xray" / f"{sid}.png", make_xray(cls, srng, spec.noise))
                row["xray"] = f"xray/{sid}.png"
            if "ecg" in present:
                write_wfdb(out / "ecg", sid, make_ecg(cls, srng, spec.noise))
                row["ecg"] = f"ecg/{sid}.hea"
            if "dna" in present:
                row["dna"] = make_dna(cls, srng, spec.noise)
            if "text" in present:
                row["text"] = make_report(cls, present, srng)
            row["taxonomy"] = TAXONOMY[CLASSES[cls]] if "dna" in present else None
            row["label"] = CLASSES[cls]
            rows.append(row)
            bar.update(1)
    bar.close()
    df = pd.DataFrame(rows, columns=["id", "patient_id", "split", *MODALITIES, "taxonomy", "label"])
    df.to_csv(out / "manifest.csv", index=False)
    return df


def copy_real_files(out_dir: Any) -> pd.DataFrame:
    """Copy the real DICOM/NIfTI files that pydicom and nibabel ship into ``out_dir/real``.

    Returns (and writes ``out_dir/real_manifest.csv``) a manifest of unlabeled rows:
    ``CT_small.dcm`` (CT slice) and ``anatomical.nii`` (an MR volume, read by the CT NIfTI
    reader) in ``ct``, ``waveform_ecg.dcm`` (a 12-lead ECG at 1 kHz) in ``ecg``.
    """
    out = Path(out_dir)
    real = out / "real"
    real.mkdir(parents=True, exist_ok=True)
    files = [("REAL_CT_small", "ct", Path(get_testdata_file("CT_small.dcm")), "pydicom CT_small.dcm"),
             ("REAL_anatomical", "ct", Path(data_path) / "anatomical.nii", "nibabel anatomical.nii (MR)"),
             ("REAL_waveform_ecg", "ecg", Path(get_testdata_file("waveform_ecg.dcm")), "pydicom waveform_ecg.dcm")]
    rows = []
    for sid, mod, src, what in files:
        dst = real / src.name
        shutil.copyfile(src, dst)
        row = {"id": sid, "patient_id": sid, "split": "external", **{m: None for m in MODALITIES},
               "taxonomy": None, "label": None, "description": what}
        row[mod] = f"real/{src.name}"
        rows.append(row)
    df = pd.DataFrame(rows)
    df.to_csv(out / "real_manifest.csv", index=False)
    return df
