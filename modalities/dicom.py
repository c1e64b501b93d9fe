"""DICOM: safe reading, pixels, series geometry, and which adapter reads an object.

Reading (shared by the ``ct``, ``xray``, ``oct``, ``fundus`` and ``ecg`` adapters):
:func:`read_dicom` (failures as :class:`DataError` naming the file), :func:`dicom_pixels`
(the modality LUT; a missing decoder names the packages, :func:`decoder_hint`),
:func:`safe_dicom_meta` (a PHI-free header summary), :func:`read_dicom_series` (slices
ordered by position, gaps detected) and :func:`read_dicom_file_volume` (multi-frame).

Which adapter reads an object: each adapter declares the DICOM Modality (0008,0060)
values it reads (:attr:`medfm.modality.ModalityAdapter.dicom_modalities`); nothing here
names a modality. ``medfm manifest`` (the column of a DICOM series), ``medfm inspect``
(the adapter of a file) and every DICOM reader (:func:`check_dicom_modality`) ask the
registry through this module, so a plug-in adapter that declares ``("MR",)`` takes part
everywhere.

* a Modality value no adapter declares is refused with one wording everywhere:
  ``DICOM Modality 'MR' is not read by the ct adapter; medfm reads CT (ct), ...``;
  non-image objects (SEG, RTDOSE, SR, ...) say what they are;
* a DICOM object without a Modality value is read, with a counted flag.

Patient-identifying DICOM fields (PatientName, PatientID, BirthDate, ...) are never
copied into metadata or error messages: errors name the file path or manifest id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder

from medfm.errors import DataError
from medfm.limits import check_declared_shape

from .facts import adapter_facts
from .imaging import Volume

#: DICOM objects that hold no image or waveform to read (or a derived one): what each is
NON_IMAGE = {
    "SEG": "a segmentation", "RTDOSE": "a radiotherapy dose grid", "RTSTRUCT": "a radiotherapy structure set",
    "RTPLAN": "a radiotherapy plan", "RTRECORD": "a radiotherapy treatment record", "RTIMAGE": "a radiotherapy image",
    "SR": "a structured report", "PR": "a presentation state", "KO": "a key object selection",
    "REG": "a spatial registration", "FID": "a fiducials object", "DOC": "an encapsulated document",
    "PLAN": "a plan", "RWV": "a real world value map", "AU": "an audio waveform",
}
#: pip names of the decoders pydicom lists under their module name
_PIP_NAMES = {"gdcm": "python-gdcm"}


def is_dicom_file(path: Any) -> bool:
    """``DICM`` at byte 128 (the DICOM file preamble), whatever the suffix."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def modality_tag(ds: Any) -> str:
    """The Modality value of a pydicom dataset, upper case (``""`` when absent)."""
    return str(ds.get("Modality", "") or "").strip().upper()


def header_modality(path: Any) -> Optional[str]:
    """The Modality value of a DICOM file (header only), ``""`` when absent, ``None`` when the
    file is not a readable DICOM file (its reader then says why)."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # pydicom raises many types for damaged files; the reader reports them
        return None
    return modality_tag(ds)


def declared_modalities() -> List[Tuple[str, Tuple[str, ...]]]:
    """``[(adapter name, its DICOM Modality values)]`` of every registered adapter that declares some,
    in :attr:`suffix_priority` order."""
    facts = adapter_facts()
    found = [(name, tuple(v.upper() for v in cls.dicom_modalities)) for name, cls in facts.items()
             if getattr(cls, "dicom_modalities", ())]
    return sorted(found, key=lambda kv: (getattr(facts[kv[0]], "suffix_priority", 50), kv[0]))


def adapter_for_tag(tag: str) -> Optional[str]:
    """The registered adapter that declares the DICOM Modality value ``tag`` (first by priority), or ``None``."""
    return next((name for name, tags in declared_modalities() if tag.upper() in tags), None)


def medfm_reads() -> str:
    """``CT (ct), CR/DX/RG (xray), ...``: what the registered adapters read, for messages."""
    return ", ".join(f"{'/'.join(tags)} ({name})" for name, tags in declared_modalities()) or "(nothing)"


def tag_reason(tag: str, adapter: Optional[str] = None) -> str:
    """Why a DICOM object of Modality ``tag`` is not read (by ``adapter``, or by any adapter)."""
    what = f" ({NON_IMAGE[tag]}, not an image)" if tag in NON_IMAGE else ""
    who = f"is not read by the {adapter} adapter" if adapter else "has no medfm modality"
    return f"DICOM Modality {tag or '(empty)'!r}{what} {who}; medfm reads {medfm_reads()}"


def check_dicom_modality(ds: Any, adapter: Any, path: Any) -> List[str]:
    """Refuse a DICOM object the adapter does not read; return the flags of one read unchecked.

    Args:
        ds: the pydicom dataset (a header is enough).
        adapter: the adapter (instance or class) that is about to read it; its
            ``dicom_modalities`` are the values it accepts.
        path: the file, named in the error.
    Returns:
        ``[]``, or one flag when the object has no Modality value (nothing to check).
    Raises:
        DataError: a Modality value the adapter does not declare (``field="Modality"``).
    """
    tag = modality_tag(ds)
    name = getattr(adapter, "name", str(adapter))
    if not tag:
        return [f"DICOM has no Modality value: read as {name} unchecked"]
    if tag not in {v.upper() for v in getattr(adapter, "dicom_modalities", ())}:
        raise DataError(tag_reason(tag, name), source=str(path), field="Modality")
    return []


def decoder_hint(transfer_syntax: Any) -> str:
    """Which packages decode ``transfer_syntax`` (a UID), from pydicom's decoder tables.

    ``""`` when pydicom has no decoder for it at all or every plug-in is installed.
    """
    try:
        missing = get_decoder(transfer_syntax).missing_dependencies
    except Exception:  # no decoder for the UID, or an older pydicom
        return ""
    options = []
    for line in missing:  # "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        plugin, _, req = line.partition(" - requires ")
        pkgs = [p.strip().split(">")[0].split("=")[0].split("<")[0] for p in req.replace(",", " and ").split(" and ")]
        pkgs = [_PIP_NAMES.get(p, p) for p in pkgs if p and p != "numpy"] or [_PIP_NAMES.get(plugin, plugin)]
        options.append(" ".join(pkgs))
    if not options:
        return ""
    return "install one of: " + "; ".join(f"pip install {o}" for o in options)


def codec_error(ds: Any, path: os.PathLike, exc: BaseException) -> DataError:
    """The :class:`DataError` of pixel data that could not be decoded: the transfer syntax, the file
    and the packages that decode it (first, so that a one-line message keeps them)."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(ts, "name", str(ts))
    hint = decoder_hint(ts) if ts is not None else ""
    try:
        installed = ts is not None and get_decoder(ts).is_available
    except Exception:  # no decoder for the UID at all
        installed = False
    if hint and not installed:  # pydicom's own text repeats the missing plug-ins at length
        return DataError(f"cannot decode pixel data (transfer syntax {name}): no installed decoder reads it; {hint}",
                         source=str(path), field="PixelData")
    tried = f"; the installed decoders failed, other decoders: {hint}" if hint else ""
    return DataError(f"cannot decode pixel data (transfer syntax {name}{tried}): {type(exc).__name__}: {exc}",
                     source=str(path), field="PixelData")


#: DICOM keywords that may be copied into metadata (no patient identifiers).
SAFE_DICOM_FIELDS = (
    "Modality", "PhotometricInterpretation", "Rows", "Columns", "BitsStored",
    "SamplesPerPixel", "NumberOfFrames", "SeriesInstanceUID", "ViewPosition", "BodyPartExamined",
)


# ---------------------------------------------------------------------- DICOM
def read_dicom(path: os.PathLike, *, stop_before_pixels: bool = False):
    """``pydicom.dcmread`` with failures turned into :class:`DataError` naming ``path``."""
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as e:
        raise DataError(f"not a DICOM file ({e})", source=str(path)) from e
    except (EOFError, OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"unreadable or truncated DICOM: {type(e).__name__}: {e}", source=str(path)) from e


def dicom_pixels(ds, path: os.PathLike, *, modality_lut: bool = True) -> np.ndarray:
    """Pixel data as float32 with the modality LUT (slope/intercept → HU for CT) applied.

    Returns ``(H, W)``, ``(F, H, W)`` or ``(..., 3)`` for colour, as pydicom decodes it.
    A missing pixel decoder (JPEG without pylibjpeg/gdcm: the error names the packages),
    truncated pixel data or no pixel data at all become a :class:`DataError` naming ``path``.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError("DICOM has no pixel data", source=str(path), field="PixelData")
    check_dicom_pixel_header(ds, path)
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises RuntimeError/ValueError/NotImplementedError by handler
        raise codec_error(ds, path, e) from e
    if modality_lut:
        arr = apply_modality_lut(arr, ds)
    return np.asarray(arr, dtype=np.float32)


def check_dicom_pixel_header(ds, path: os.PathLike) -> None:
    """Before decoding: Rows × Columns × frames × samples against the limits, and, for
    uncompressed transfer syntaxes, the length of PixelData against what the header declares
    (pydicom only warns and reshapes a wrong-sized buffer). :class:`DataError` naming ``path``."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.get("BitsAllocated") or 0)
    except (AttributeError, TypeError, ValueError) as e:
        raise DataError(f"DICOM image header is incomplete or malformed ({type(e).__name__}: {e})",
                        source=str(path), field="Rows") from e
    if rows <= 0 or cols <= 0 or frames <= 0 or samples <= 0:
        raise DataError(f"DICOM declares an empty image: Rows={rows}, Columns={cols}, NumberOfFrames={frames}",
                        source=str(path), field="Rows")
    check_declared_shape((frames, rows, cols, samples), source=path, what="DICOM pixel data")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" in ds and ts is not None and not ts.is_compressed and bits in (8, 16, 32, 64):
        expected = rows * cols * frames * samples * bits // 8
        actual = len(ds.PixelData)
        if actual not in (expected, expected + 1):  # one pad byte makes an odd length even
            raise DataError(f"pixel data holds {actual} bytes but Rows×Columns×frames×samples×bits "
                            f"({rows}×{cols}×{frames}×{samples}×{bits}) needs {expected}: wrong Rows/Columns or a "
                            "truncated file", source=str(path), field="Rows/Columns")


def safe_dicom_meta(ds) -> Dict[str, Any]:
    """Whitelisted, non-identifying header fields (see :data:`SAFE_DICOM_FIELDS`)."""
    out: Dict[str, Any] = {}
    for key in SAFE_DICOM_FIELDS:
        val = ds.get(key)
        if val is None or val == "":
            continue
        out[key] = val if isinstance(val, (int, float)) else str(val)
    return out


def _floats(val: Any, n: int, path: Any, field: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in val], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"malformed {field}", source=str(path), field=field) from e
    if arr.shape != (n,):
        raise DataError(f"{field} must have {n} values, got {arr.size}", source=str(path), field=field)
    return arr



def lps_affine(origin: np.ndarray, row_cos: np.ndarray, col_cos: np.ndarray, normal: np.ndarray,
               spacing: Tuple[float, float, float]) -> np.ndarray:
    """Affine mapping ``(column i, row j, slice k)`` → RAS mm from DICOM (LPS) geometry.

    ``spacing`` is ``(slice, row, column)`` spacing. DICOM's row direction cosine is
    the direction of increasing column index.
    """
    sd, sh, sw = spacing
    aff = np.eye(4)
    aff[:3, 0] = row_cos * sw
    aff[:3, 1] = col_cos * sh
    aff[:3, 2] = normal * sd
    aff[:3, 3] = origin
    aff[:2, :] *= -1.0  # LPS → RAS
    return aff


def read_dicom_series(folder: os.PathLike, *, series_uid: Optional[str] = None,
                      spacing_tolerance: float = 0.1, adapter: Any = None) -> Volume:
    """Read one DICOM series from ``folder`` into a :class:`Volume` in HU.

    Slices are ordered by ImagePositionPatient projected on the slice normal
    (cross product of the ImageOrientationPatient cosines), not by file name or
    InstanceNumber. Several series → ``series_uid`` chooses; without it a
    :class:`DataError` lists the SeriesInstanceUIDs. Duplicate positions or a
    spacing deviating from the median by more than ``spacing_tolerance`` (relative)
    — a missing slice — raise :class:`DataError`. With ``adapter``, the chosen series' Modality
    values are checked against the adapter's (:func:`medfm.modalities.dicom.check_dicom_modality`)
    before any pixel is decoded; ``meta["flags"]`` holds the flag of a series without one.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name.upper() != "DICOMDIR")
    headers = []
    for p in files:
        try:
            headers.append((p, read_dicom(p, stop_before_pixels=True)))
        except DataError:
            continue  # non-DICOM side files (README, thumbnails) are ignored
    if not headers:
        raise DataError("folder holds no readable DICOM file", source=str(folder))
    groups: Dict[str, list] = {}
    for p, ds in headers:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
    if series_uid is not None:
        if series_uid not in groups:
            raise DataError(f"series {series_uid!r} not in folder; series present: "
                            + ", ".join(f"{u} ({len(v)} files)" for u, v in sorted(groups.items())),
                            source=str(folder), field="SeriesInstanceUID")
        chosen = groups[series_uid]
    elif len(groups) > 1:
        raise DataError("folder holds several DICOM series; choose one with the series_uid option: "
                        + ", ".join(f"{u} ({len(v)} files)" for u, v in sorted(groups.items())),
                        source=str(folder), field="SeriesInstanceUID")
    else:
        chosen = next(iter(groups.values()))

    p0, ds0 = chosen[0]
    flags = []
    if adapter is not None:
        for p, ds in chosen:
            flags = check_dicom_modality(ds, adapter, p) or flags
    if "ImageOrientationPatient" not in ds0 or "ImagePositionPatient" not in ds0:
        if len(chosen) == 1:
            return read_dicom_file_volume(p0, adapter=adapter)
        raise DataError("series lacks ImagePositionPatient/ImageOrientationPatient; cannot order slices",
                        source=str(folder), field="ImagePositionPatient")
    iop = _floats(ds0.ImageOrientationPatient, 6, p0, "ImageOrientationPatient")
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    pos = []
    for p, ds in chosen:
        other = _floats(ds.get("ImageOrientationPatient", iop), 6, p, "ImageOrientationPatient")
        if np.abs(other - iop).max() > 1e-3:
            raise DataError("slices of the series have different orientations", source=str(p),
                            field="ImageOrientationPatient")
        ipp = _floats(ds.ImagePositionPatient, 3, p, "ImagePositionPatient")
        pos.append((float(ipp @ normal), ipp, p, ds))
    pos.sort(key=lambda t: t[0])
    z = np.array([t[0] for t in pos])
    if len(z) > 1:
        dz = np.diff(z)
        if (dz < 1e-4).any():
            i = int(np.argmax(dz < 1e-4))
            raise DataError(f"two slices at the same position {z[i]:.3f} mm", source=str(pos[i + 1][2]),
                            field="ImagePositionPatient")
        med = float(np.median(dz))
        bad = np.abs(dz - med) > spacing_tolerance * med
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"inconsistent slice spacing: {dz[i]:.3f} mm between slices at {z[i]:.3f} and "
                            f"{z[i + 1]:.3f} mm (median {med:.3f} mm) — missing slice or mixed series",
                            source=str(folder), field="ImagePositionPatient")
        sd = med
    else:
        sd = float(ds0.get("SpacingBetweenSlices", ds0.get("SliceThickness", 1.0)) or 1.0)
    try:
        rows, cols = int(ds0.Rows), int(ds0.Columns)
    except (AttributeError, TypeError, ValueError):
        rows = cols = 0
    check_declared_shape((len(pos), rows, cols), source=folder, what="DICOM series")
    slices = []
    for _, _, p, _ in pos:
        ds = read_dicom(p)
        img = dicom_pixels(ds, p)
        if img.ndim != 2:
            raise DataError(f"expected one 2D frame per file, got shape {img.shape}", source=str(p))
        if slices and img.shape != slices[0].shape:
            raise DataError(f"slice size {img.shape} differs from {slices[0].shape}", source=str(p), field="Rows")
        slices.append(img)
    ps = _floats(ds0.get("PixelSpacing", [1.0, 1.0]), 2, p0, "PixelSpacing")
    spacing = (sd, float(ps[0]), float(ps[1]))
    data = np.stack(slices).astype(np.float32)
    aff = lps_affine(pos[0][1], row_cos, col_cos, normal, spacing)
    meta = safe_dicom_meta(ds0)
    meta.update(n_files=len(slices))
    if flags:
        meta["flags"] = flags
    return Volume(data, spacing, aff, meta)


def read_dicom_file_volume(path: os.PathLike, *, adapter: Any = None) -> Volume:
    """A single DICOM file (one slice, or a multi-frame/enhanced object) as a :class:`Volume` in HU.

    Multi-frame geometry comes from the functional groups when present (per-frame
    ImagePositionPatient), else SpacingBetweenSlices/SliceThickness. With ``adapter``, the
    Modality value is checked first (as :func:`read_dicom_series`).
    """
    ds = read_dicom(path)
    flags = check_dicom_modality(ds, adapter, path) if adapter is not None else []
    arr = _modality_lut_frames(ds, path)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(f"expected a grayscale image or frame stack, got shape {arr.shape}", source=str(path))
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")

    def _grp(seq, name, attr):
        try:
            return getattr(getattr(seq[0], name)[0], attr)
        except (AttributeError, IndexError, TypeError):
            return None

    iop = ds.get("ImageOrientationPatient") or (shared and _grp(shared, "PlaneOrientationSequence", "ImageOrientationPatient"))
    ps = ds.get("PixelSpacing") or (shared and _grp(shared, "PixelMeasuresSequence", "PixelSpacing")) or [1.0, 1.0]
    ps = _floats(ps, 2, path, "PixelSpacing")
    iop = _floats(iop, 6, path, "ImageOrientationPatient") if iop is not None else np.array([1, 0, 0, 0, 1, 0.0])
    normal = np.cross(iop[:3], iop[3:])
    sd = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or
               (shared and _grp(shared, "PixelMeasuresSequence", "SliceThickness")) or 1.0)
    origin = np.zeros(3)
    if per_frame is not None and len(per_frame) == arr.shape[0]:
        pos = [_grp([f], "PlanePositionSequence", "ImagePositionPatient") for f in per_frame]
        if all(p is not None for p in pos):
            pts = np.array([_floats(p, 3, path, "ImagePositionPatient") for p in pos])
            z = pts @ normal
            order = np.argsort(z, kind="stable")
            arr, pts, z = arr[order], pts[order], z[order]
            if len(z) > 1:
                dz = np.diff(z)
                med = float(np.median(dz))
                if med <= 0 or (np.abs(dz - med) > 0.1 * med).any():
                    raise DataError("inconsistent frame spacing in multi-frame DICOM", source=str(path),
                                    field="PlanePositionSequence")
                sd = med
            origin = pts[0]
    elif "ImagePositionPatient" in ds:
        origin = _floats(ds.ImagePositionPatient, 3, path, "ImagePositionPatient")
    spacing = (sd, float(ps[0]), float(ps[1]))
    meta = safe_dicom_meta(ds)
    if flags:
        meta["flags"] = flags
    return Volume(arr.astype(np.float32), spacing, lps_affine(origin, iop[:3], iop[3:], normal, spacing), meta)


def _modality_lut_frames(ds, path) -> np.ndarray:
    """Pixels with the modality LUT; enhanced objects carry slope/intercept in functional groups."""
    arr = dicom_pixels(ds, path, modality_lut="RescaleSlope" in ds or "ModalityLUTSequence" in ds)
    if "RescaleSlope" not in ds and "SharedFunctionalGroupsSequence" in ds:
        try:
            t = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
            arr = arr * float(t.RescaleSlope) + float(t.RescaleIntercept)
        except (AttributeError, IndexError):
            pass
    return arr
