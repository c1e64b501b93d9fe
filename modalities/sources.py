"""Scanners of ``medfm manifest``: what a folder or table of real files holds, per kind of source.

Each scanner yields :class:`medfm.data.cohort.Entry` (one manifest cell, with the raw
patient/study keys the engine hashes) or :class:`~medfm.data.cohort.Unreadable`.

| scanner | claims | cells |
| --- | --- | --- |
| ``dicom`` | DICOM files (``.dcm`` or sniffed ``DICM``), grouped by series per folder | Modality tag → the column of the adapter that declares it (``dicom_modalities``: CT → ct, CR/DX/RG → xray, OCT/OPT → oct, OP/XC → fundus, ECG → ecg, and any plug-in's); a series folder or a multi-frame/single file is one cell; patient = PatientID, study = StudyInstanceUID |
| ``wfdb`` | ``.hea`` records (CinC/PTB-XL folders) | ecg; ``# Dx:`` codes → ``dx`` (``|``-separated), ``# Age``/``# Sex`` kept |
| ``table`` | CSV/TSV: BOLD/BIOSCAN barcodes, PTB-XL/CinC-style record tables, report tables | dna (``table#processid``) + text (taxonomy) + rank columns; ecg/image paths + report + codes; text reports + labels |
| ``fasta`` | FASTA files | dna (``file#record``), one row per record |
| ``image_folder`` | ``ROOT/LABEL/*.png`` | xray (or the forced modality) + ``label`` from the subfolder |
| ``nifti`` | ``.nii``/``.nii.gz`` | ct (or ``oct=PATH``) |
| ``vendor_oct`` | Heidelberg/Topcon/Zeiss OCT files | oct (+ fundus for files that hold an SLO/fundus image) |
"""
from __future__ import annotations

import ast
import hashlib
import logging
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional

import nibabel as nib
import pandas as pd
import pydicom
import wfdb

from medfm.data.cohort import Entry, ScanContext, Unreadable, register_source
from medfm.data.manifest import is_missing
from medfm.errors import DataError
from medfm.input_files import inside, open_bounded, read_head
from medfm.modality import matching_suffix

from .dna import FASTA_SUFFIXES, RECORD_ID_COLUMNS, SEQUENCE_COLUMNS, TAXONOMY_COLUMNS
from .imaging import IMAGE_SUFFIXES
from .oct import VENDOR_SUFFIXES as OCT_VENDOR
from .fundus import VENDOR_SUFFIXES as FUNDUS_VENDOR
from .text import taxonomy_text
from .choose import choose_modality
from .dicom import adapter_for_tag, modality_tag, tag_reason
from .dicom_series import SERIES_FOLDER_MODALITIES, is_uid, series_reference
from medfm.errors import MedFMError
from .dna import read_fasta
from .ecg_files import check_wfdb_header

log = logging.getLogger("medfm.manifest")

TABLE_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
PATH_COLUMNS = ("path", "file", "filename", "filepath", "record", "record_path", "filename_hr", "filename_lr",
                "image", "image_path", "ecg_path")
REPORT_COLUMNS = ("report", "text", "report_text")
CODE_COLUMNS = ("scp_codes", "dx", "codes", "labels", "label", "diagnosis", "mesh_major", "findings_labels")
PATIENT_COLUMNS = ("patient_id", "patient", "subject_id", "PatientID", "patientid")
STUDY_COLUMNS = ("study_id", "StudyInstanceUID", "visit_id")
KEY_COLUMNS = ("ecg_id", "record_id", "report_id", "uid", "id", "processid", "sampleid")
SAFE_COLUMNS = ("age", "sex", "strat_fold", "fold", "view", "laterality")


class Scanner:
    """Base: claims nothing. ``priority``: lower is asked first."""

    priority = 50

    def claims_file(self, path: Path, ctx: ScanContext) -> bool:
        return False

    def claims_folder(self, folder: Path, ctx: ScanContext) -> bool:
        return False

    def scan_file(self, path: Path, ctx: ScanContext) -> Iterator:
        return iter(())

    def scan_folder(self, folder: Path, ctx: ScanContext) -> Iterator:
        return iter(())


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    if matching_suffix(path, IMAGE_SUFFIXES + TABLE_SUFFIXES + FASTA_SUFFIXES + (".hea", ".mat", ".dat", ".nii",
                                                                              ".nii.gz", ".npy", ".npz", ".json",
                                                                              ".txt", ".md", ".xml")):
        return False
    return read_head(path, 132)[128:132] == b"DICM"  # never opens a FIFO or a device


def _leaves_root(path: Path, ctx: ScanContext) -> bool:
    """A folder symlink leading outside the source being walked (followed only with ``ctx.follow_links``)."""
    return bool(ctx.root) and not ctx.follow_links and path.is_symlink() and not inside(path, ctx.root)


@register_source("dicom")
class DicomScanner(Scanner):
    """DICOM files of one folder, grouped by SeriesInstanceUID (headers only; pixels are not read)."""

    priority = 10

    def claims_file(self, path: Path, ctx: ScanContext) -> bool:
        return _is_dicom(path)

    def scan_file(self, path: Path, ctx: ScanContext) -> Iterator:
        yield from self.scan_files([path], ctx, single=True)

    def scan_files(self, files: List[Path], ctx: ScanContext, single: bool = False) -> Iterator:
        series: Dict[str, List] = {}
        for p in files:
            try:
                ds = pydicom.dcmread(str(p), stop_before_pixels=True)
            except Exception as e:  # pydicom raises many types for damaged files
                yield Unreadable(str(p), f"unreadable DICOM header: {type(e).__name__}")
                continue
            if (p.name.upper() == "DICOMDIR") or "DirectoryRecordSequence" in ds:
                continue
            # anonymised exports may blank the UID: fall back on study + series number + modality per folder
            uid = str(getattr(ds, "SeriesInstanceUID", "") or "") or "|".join(
                str(getattr(ds, k, "") or "") for k in ("StudyInstanceUID", "SeriesNumber", "Modality")) + f"|{p.parent}"
            series.setdefault(uid, []).append((p, ds))
        for uid, members in series.items():
            p0, ds = members[0]
            tag = modality_tag(ds)
            column = ctx.modality or adapter_for_tag(tag)
            if column is None:
                for p, _ in members:
                    yield Unreadable(str(p), tag_reason(tag))
                continue
            if len(members) == 1:
                value = str(p0)
            elif len(series) == 1 and not single:
                value = str(p0.parent)  # the folder is the series
            elif column in SERIES_FOLDER_MODALITIES and is_uid(uid):
                value = series_reference(p0.parent, uid)  # one series of a multi-series folder
            else:
                for p, _ in members:
                    yield Unreadable(str(p), f"{len(series)} DICOM series share the folder {p0.parent.name!r}; "
                                             "give each series its own folder")
                continue
            patient = str(getattr(ds, "PatientID", "") or "").strip() or None
            study = str(getattr(ds, "StudyInstanceUID", "") or "").strip() or None
            key = "dicom-" + hashlib.sha256(uid.encode()).hexdigest()[:10]  # never the UID itself
            yield Entry(column, value, key=key, patient=patient, study=study or f"series:{uid}", source=value)


@register_source("wfdb")
class WfdbScanner(Scanner):
    """WFDB records (``.hea`` + signal files); CinC-style ``# Dx:``/``# Age:``/``# Sex:`` header comments."""

    priority = 20

    def claims_file(self, path: Path, ctx: ScanContext) -> bool:
        sfx = path.suffix.lower()
        return sfx == ".hea" or (sfx in (".mat", ".dat") and path.with_suffix(".hea").is_file())

    def scan_files(self, files: List[Path], ctx: ScanContext) -> Iterator:
        for p in files:
            if p.suffix.lower() == ".hea":
                yield from self.scan_file(p, ctx)

    def scan_file(self, path: Path, ctx: ScanContext) -> Iterator:
        if path.suffix.lower() != ".hea":
            return
        try:
            cols = wfdb_header_columns(path)
        except DataError as e:
            yield Unreadable(str(path), e.reason)
            return
        except Exception as e:  # wfdb raises ValueError/IndexError on bad headers
            yield Unreadable(str(path), f"unreadable WFDB header: {type(e).__name__}: {e}")
            return
        yield Entry(ctx.modality or "ecg", str(path), key=path.stem, columns=cols, source=str(path))


def wfdb_header_columns(hea: Path) -> Dict[str, str]:
    """``{"dx": "code|code", "age": ..., "sex": ...}`` from a WFDB header's comments (CinC 2020/2021 style)."""
    check_wfdb_header(hea)  # bounded and counted before wfdb parses it
    h = wfdb.rdheader(str(hea.with_suffix("")))
    out: Dict[str, str] = {}
    for c in h.comments or []:
        name, sep, val = c.partition(":")
        name, val = name.strip().lower(), val.strip()
        if not sep or not val or val.lower() in ("unknown", "nan"):
            continue
        if name == "dx":
            out["dx"] = "|".join(v.strip() for v in val.split(",") if v.strip())
        elif name in ("age", "sex"):
            out[name] = val
    return out


def _first(columns: Iterable[str], names: Iterable[str]) -> Optional[str]:
    lower = {str(c).lower(): c for c in columns}
    return next((lower[n.lower()] for n in names if n.lower() in lower), None)


def _labels(value) -> Optional[str]:
    """A codes cell → ``a|b|c``: PTB-XL's ``{'NORM': 100.0}`` dicts, comma/semicolon lists, or as it is."""
    if is_missing(value):
        return None
    s = str(value).strip()
    if s.startswith("{"):
        try:
            d = ast.literal_eval(s)
            if isinstance(d, dict):
                return "|".join(str(k) for k in d) or None
        except (ValueError, SyntaxError):
            pass
    parts = [p.strip() for p in s.replace(";", ",").replace("|", ",").split(",") if p.strip()]
    return "|".join(parts) or None


@register_source("table")
class TableScanner(Scanner):
    """CSV/TSV tables: barcode tables, record tables (path + report + codes), report tables."""

    priority = 30

    def claims_file(self, path: Path, ctx: ScanContext) -> bool:
        return matching_suffix(path, TABLE_SUFFIXES) is not None

    def scan_file(self, path: Path, ctx: ScanContext) -> Iterator:
        name = path.name.lower().removesuffix(".gz")
        try:
            with open_bounded(path, what="table") as fh:
                df = pd.read_csv(fh, sep="\t" if name.endswith(".tsv") else ",", dtype=str, keep_default_na=False)
        except DataError as e:
            yield Unreadable(str(path), e.reason)
            return
        except Exception as e:
            yield Unreadable(str(path), f"unreadable table: {type(e).__name__}: {e}")
            return
        cols = list(df.columns)
        if {"id", "patient_id"} <= set(cols):
            yield Unreadable(str(path), "already a medfm manifest (has id and patient_id); not rescanned")
            return
        seq_col = _first(cols, SEQUENCE_COLUMNS)
        if seq_col is not None:
            yield from self._barcodes(path, df, ctx)
            return
        path_col, report_col = _first(cols, PATH_COLUMNS), _first(cols, REPORT_COLUMNS)
        if path_col is None and report_col is None and not {"findings", "impression"} & {c.lower() for c in cols}:
            yield Unreadable(str(path), f"table has no sequence ({'/'.join(SEQUENCE_COLUMNS)}), path "
                                        f"({'/'.join(PATH_COLUMNS[:4])}, ...) or report column")
            return
        yield from self._records(path, df, path_col, report_col, ctx)

    def _barcodes(self, path: Path, df: pd.DataFrame, ctx: ScanContext) -> Iterator:
        id_col = _first(df.columns, RECORD_ID_COLUMNS)
        unique = id_col is not None and df[id_col].is_unique and (df[id_col] != "").all()
        seq_col = _first(df.columns, SEQUENCE_COLUMNS)
        ranks = [c for c in TAXONOMY_COLUMNS if c in df.columns]
        for i, row in enumerate(df.to_dict("records")):
            key = row[id_col] if unique else f"{path.stem}-{i}"
            if is_missing(row[seq_col]):
                yield Unreadable(f"{path}#{key}", "empty sequence")
                continue
            extra = {c: (row[c] or None) for c in ranks}
            value = f"{path.absolute()}#{key}" if unique else row[seq_col]
            yield Entry(ctx.modality or "dna", value, key=str(key), columns=extra, is_path=unique, source=str(path))
            text = taxonomy_text(row, ranks) if ranks else ""
            if text:  # the lineage as the row's text: DNA <-> taxonomy pairs
                yield Entry("text", text, key=str(key), is_path=False, source=str(path))

    def _records(self, path: Path, df: pd.DataFrame, path_col: Optional[str], report_col: Optional[str],
                 ctx: ScanContext) -> Iterator:

        cols = list(df.columns)
        code_col = _first(cols, CODE_COLUMNS)
        patient_col, study_col = _first(cols, PATIENT_COLUMNS), _first(cols, STUDY_COLUMNS)
        key_col = _first(cols, KEY_COLUMNS)
        safe = [c for c in cols if c.lower() in SAFE_COLUMNS]
        sections = [c for c in cols if c.lower() in ("findings", "impression")] if report_col is None else []
        for i, row in enumerate(df.to_dict("records")):
            key = str(row[key_col]) if key_col and not is_missing(row[key_col]) else f"{path.stem}-{i}"
            extra = {c: (row[c] or None) for c in safe}
            if code_col:
                extra["labels" if code_col.lower() not in ("dx",) else "dx"] = _labels(row[code_col])
            if report_col and not is_missing(row[report_col]):
                extra["text"] = str(row[report_col]).strip()
            elif sections:
                text = " ".join(f"{c.upper()}: {row[c].strip()}" for c in sections if not is_missing(row[c]))
                extra["text"] = text or None
            patient = None if patient_col is None or is_missing(row[patient_col]) else str(row[patient_col])
            study = None if study_col is None or is_missing(row[study_col]) else str(row[study_col])
            text = extra.pop("text", None)
            if text:  # the report, paired with the record of the same row
                yield Entry("text", text, key=key, patient=patient, study=study, columns=extra, is_path=False,
                            source=str(path))
            if path_col is None or is_missing(row[path_col]):
                continue
            p = Path(str(row[path_col]))
            p = p if p.is_absolute() else (path.parent / p)
            if not p.exists() and p.with_suffix(p.suffix + ".hea").exists() or (not p.suffix and
                                                                                  p.with_suffix(".hea").exists()):
                p = p.with_suffix(p.suffix + ".hea") if p.suffix else p.with_suffix(".hea")
            if not p.exists():
                yield Unreadable(str(p), f"file named in {path.name} (row {i + 1}, column {path_col!r}) not found")
                continue
            try:
                modality = ctx.modality or choose_modality(p)
            except MedFMError as e:  # a suffix no adapter reads, a DICOM Modality none declares
                yield Unreadable(str(p), getattr(e, "reason", None) or str(e))
                continue
            yield Entry(modality, str(p.absolute()), key=key, patient=patient, study=study, columns=extra,
                        source=str(path))  # the table: pairs with the row's report


@register_source("fasta")
class FastaScanner(Scanner):
    """FASTA files: one row per record, the cell ``file#record_id``."""

    priority = 30

    def claims_file(self, path: Path, ctx: ScanContext) -> bool:
        return matching_suffix(path, FASTA_SUFFIXES) is not None

    def scan_file(self, path: Path, ctx: ScanContext) -> Iterator:

        try:
            records = read_fasta(path, clean=False)
        except Exception as e:
            yield Unreadable(str(path), f"unreadable FASTA: {e}")
            return
        for rid, _seq in records:
            yield Entry(ctx.modality or "dna", f"{path.absolute()}#{rid}", key=rid, source=str(path))


@register_source("image_folder")
class ImageFolderScanner(Scanner):
    """``ROOT/LABEL/*.png``: one row per image, ``label`` = the subfolder (``oct=ROOT``: one B-scan
    folder per volume). Loose image files elsewhere are one row each, without a label."""

    priority = 40

    def claims_folder(self, folder: Path, ctx: ScanContext) -> bool:
        kids = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if not kids or not all(p.is_dir() for p in kids):
            return False
        for k in kids:
            inner = [p for p in k.iterdir() if not p.name.startswith(".")]
            if not inner or not all(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in inner):
                return False
            if _leaves_root(k, ctx):
                return False  # walked entry by entry instead: the link is listed, not followed
        return True

    def scan_folder(self, folder: Path, ctx: ScanContext) -> Iterator:
        for sub in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
            if ctx.modality == "oct":
                yield Entry("oct", str(sub.absolute()), key=sub.name, source=str(sub))
                continue
            for img in sorted(p for p in sub.iterdir() if not p.name.startswith(".")):
                yield Entry(ctx.modality or "xray", str(img.absolute()), key=f"{sub.name}-{img.stem}",
                            columns={"label": sub.name}, source=str(img))

    def claims_file(self, path: Path, ctx: ScanContext) -> bool:
        return path.suffix.lower() in IMAGE_SUFFIXES

    def scan_file(self, path: Path, ctx: ScanContext) -> Iterator:
        yield Entry(ctx.modality or "xray", str(path.absolute()), key=path.stem, source=str(path))


@register_source("nifti")
class NiftiScanner(Scanner):
    """NIfTI volumes (ct unless forced, e.g. ``oct=folder/``)."""

    priority = 30

    def claims_file(self, path: Path, ctx: ScanContext) -> bool:
        return matching_suffix(path, (".nii", ".nii.gz")) is not None

    def scan_file(self, path: Path, ctx: ScanContext) -> Iterator:
        try:
            nib.load(str(path)).shape  # the header parses
        except Exception as e:
            yield Unreadable(str(path), f"unreadable NIfTI header: {type(e).__name__}")
            return
        key = path.name[: -len(matching_suffix(path, (".nii", ".nii.gz")))]
        yield Entry(ctx.modality or "ct", str(path.absolute()), key=key, columns={}, source=str(path))


@register_source("vendor_oct")
class VendorOctScanner(Scanner):
    """Vendor OCT files: ``oct`` and, for formats that hold an SLO/fundus image, ``fundus`` in the same row."""

    priority = 30

    def claims_file(self, path: Path, ctx: ScanContext) -> bool:
        return path.suffix.lower() in OCT_VENDOR

    def scan_file(self, path: Path, ctx: ScanContext) -> Iterator:
        value = str(path.absolute())
        yield Entry(ctx.modality or "oct", value, key=path.stem, source=str(path))
        if ctx.modality is None and path.suffix.lower() in FUNDUS_VENDOR:
            yield Entry("fundus", value, key=path.stem, source=str(path))
