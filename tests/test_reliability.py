"""Reliability over a generated corpus of corrupt, hostile and odd inputs.

Every case states its expected outcome and the test checks exactly that:

* ``error``: the reader raises a :class:`DataError` whose message names the file (or the
  manifest id of an inline cell) and matches the case's reason;
* ``skip``:  inside a run (ManifestDataset + collate) the sample is logged, counted and skipped;
* ``flag``:  the input is used, with a warning that is counted;
* ``ok``:    a positive control (a raised limit, a data root that holds the file);
* ``exit1`` / ``exit2``: a CLI invocation ends with one line on stderr and that exit code.

The corpus is also run through one manifest, and the last test checks that no CLI output of
this module holds traceback text. ``CASES`` is the table printed in the closing note.
"""
from __future__ import annotations

import gzip
import json
import logging
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np
import pytest
import yaml

from medfm.cli import main
from medfm.data import ManifestDataset, MultiModalCollate, read_manifest
from medfm.errors import DataError, MedFMError
from medfm.limits import limits
from medfm.registry import get_modality

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from pydicom.data import get_testdata_file  # noqa: E402

CT_SMALL = get_testdata_file("CT_small.dcm")
ECG_DCM = get_testdata_file("waveform_ecg.dcm")
CLI_OUTPUTS: List[str] = []  # every CLI stdout+stderr of this module, checked last

ADAPTER_OPTIONS = {
    "xray": {"size": 32, "patch_size": 16},
    "ct": {"size": [8, 32, 32], "patch_size": [4, 16, 16], "target_spacing": None},
    "ecg": {"fs": 100, "duration": 2.0, "min_duration": 1.0, "patch_size": 50, "bandpass": None},
    "dna": {"k": 6},
    "text": {"vocab_size": 64},
    "oct": {"frames": 4, "size": [32, 32], "patch_size": [2, 16, 16]},
}


def adapter(name):
    a = get_modality(name, **ADAPTER_OPTIONS[name])
    if name == "text":
        a.fit(["normal sinus rhythm", "no acute finding"] * 4)
    return a


# ----------------------------------------------------------------- writers
def dcm(tmp: Path, name: str, mutate: Optional[Callable] = None, src: str = CT_SMALL,
        modality: Optional[str] = None) -> Path:
    """A copy of ``src`` (CT_small: a CT slice), ``mutate``d; ``modality`` sets its Modality tag, so
    that the adapter under test reads it (every reader refuses another modality's object)."""
    ds = pydicom.dcmread(src)
    if modality:
        ds.Modality = modality
    if mutate:
        mutate(ds)
    p = tmp / name
    ds.save_as(p, enforce_file_format=False)
    return p


def raw(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


def cut(path: Path, frac: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])
    return path


def nifti(tmp: Path, name: str, data=None, affine=None) -> Path:
    data = np.random.default_rng(0).normal(0, 100, (8, 8, 8)).astype(np.float32) if data is None else data
    img = nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine)
    p = tmp / name
    nib.save(img, str(p))
    return p


def nifti_dims(tmp: Path, name: str, dims) -> Path:
    """A small NIfTI whose header is patched to declare ``dims`` (the data stays 2×2×2)."""
    p = nifti(tmp, name, np.zeros((2, 2, 2), np.int16))
    b = bytearray(p.read_bytes())
    b[40:56] = struct.pack("<8h", len(dims), *dims, *([1] * (7 - len(dims))))
    p.write_bytes(bytes(b))
    return p


def nifti_qform_zero(tmp: Path, name: str, value: float) -> Path:
    p = nifti(tmp, name)
    img = nib.load(str(p))
    hdr = img.header.copy()
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = [value] * 4, [value] * 4, [value] * 4
    hdr["sform_code"], hdr["qform_code"] = 2, 0
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), None, hdr), str(p))
    return p


def png(tmp: Path, name: str, w: int, h: int, rows: int, bit_depth=8) -> Path:
    """A grayscale PNG whose IHDR says ``w``×``h`` and whose IDAT holds ``rows`` rows."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    body = b"".join(b"\x00" + bytes([(r * 7) % 256]) * w for r in range(rows))
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))
    return raw(tmp, name, data)


def pil_image(tmp: Path, name: str, fmt: str, frac: float = 1.0, shape=(64, 48)) -> Path:
    from PIL import Image

    arr = (np.random.default_rng(1).random(shape) * 255).astype(np.uint8)
    p = tmp / name
    Image.fromarray(arr).save(p, fmt)
    return cut(p, frac) if frac < 1 else p


def wfdb_rec(tmp: Path, name: str, sig=None, fs=100, names=None, units="mV", drop_dat=False) -> Path:
    import wfdb

    t = np.arange(300) / fs
    sig = np.stack([np.sin(2 * np.pi * (i + 1) * t) for i in range(12)], 1) if sig is None else sig
    names = names or ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"][: sig.shape[1]]
    wfdb.wrsamp(name, fs=fs, units=[units] * sig.shape[1], sig_name=names, p_signal=sig, fmt=["16"] * sig.shape[1],
                write_dir=str(tmp))
    if drop_dat:
        (tmp / f"{name}.dat").unlink()
    return tmp / f"{name}.hea"


def patch_header(hea: Path, field: int, value: str) -> Path:
    lines = hea.read_text().splitlines()
    first = lines[0].split()
    while len(first) <= field:
        first.append("0")
    first[field] = value
    hea.write_text("\n".join([" ".join(first)] + lines[1:]) + "\n")
    return hea


def npy(tmp: Path, name: str, arr) -> Path:
    p = tmp / name
    np.save(p, arr, allow_pickle=True)
    return p


def npy_declaring(tmp: Path, name: str, shape) -> Path:
    """A .npy whose header declares ``shape`` but holds 16 bytes."""
    p = tmp / name
    with open(p, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
        fh.write(b"\0" * 16)
    return p


def series(tmp: Path, name: str, positions, orient=None) -> Path:
    folder = tmp / name
    folder.mkdir()
    for i, z in enumerate(positions):
        def mut(ds, z=z, i=i):
            ds.ImagePositionPatient = [0.0, 0.0, float(z)]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0] if orient is None or i == 0 else orient
            ds.SOPInstanceUID = f"1.2.3.{i}"
        dcm(folder, f"s{i}.dcm", mut)
    return folder


def set_attr(**kw):
    def mut(ds):
        for k, v in kw.items():
            setattr(ds, k, v)
    return mut


def del_attr(name):
    def mut(ds):
        delattr(ds, name)
    return mut


# ------------------------------------------------------------------ cases
@dataclass
class Case:
    id: str
    kind: str  # the file or cell kind
    modality: str
    expect: str  # error | skip | flag | ok
    match: str  # regex the message must match
    make: Callable[[Path], Any]  # builds the input; returns a path or an inline value
    limits: Optional[dict] = None
    value: bool = False  # an inline cell (DNA, text) rather than a path


TEXT_BAD = "sequence has no A/C/G/T"
CASES: List[Case] = [
    # DICOM images
    Case("dicom-rows-mismatch", "DICOM", "xray", "error", r"pixel data holds 32768 bytes.*Rows",
         lambda t: dcm(t, "rows.dcm", set_attr(Rows=100), modality="DX")),
    Case("dicom-columns-mismatch", "DICOM", "xray", "error", r"pixel data holds .*Columns",
         lambda t: dcm(t, "cols.dcm", set_attr(Columns=200), modality="DX")),
    Case("dicom-bits-mismatch", "DICOM", "xray", "error", r"pixel data holds",
         lambda t: dcm(t, "bits.dcm", set_attr(BitsAllocated=8, BitsStored=8, HighBit=7), modality="DX")),
    Case("dicom-frames-mismatch", "DICOM", "ct", "error", r"pixel data holds",
         lambda t: dcm(t, "frames.dcm", set_attr(NumberOfFrames=3))),
    Case("dicom-truncated", "DICOM", "xray", "error", r"truncated|pixel data holds|unreadable",
         lambda t: cut(dcm(t, "cut.dcm", modality="DX"), 0.6)),
    Case("dicom-header-only", "DICOM", "xray", "error", r"unreadable|truncated|not a DICOM|no pixel",
         lambda t: cut(dcm(t, "cut2.dcm", modality="DX"), 0.05)),
    Case("dicom-not-dicom", "DICOM", "xray", "error", r"not a DICOM|unreadable",
         lambda t: raw(t, "text.dcm", b"this is a report, not an image\n" * 20)),
    Case("dicom-empty-file", "DICOM", "xray", "error", r"not a DICOM|unreadable|truncated",
         lambda t: raw(t, "empty.dcm", b"")),
    Case("dicom-no-pixel-data", "DICOM", "xray", "error", r"no pixel data", lambda t: dcm(t, "nopix.dcm", del_attr("PixelData"), modality="DX")),
    Case("dicom-zero-rows", "DICOM", "xray", "error", r"empty image|pixel data holds",
         lambda t: dcm(t, "zero.dcm", set_attr(Rows=0), modality="DX")),
    Case("dicom-huge-declared", "DICOM", "xray", "error", r"max_elements",
         lambda t: dcm(t, "huge.dcm", set_attr(Rows=65535, Columns=65535, NumberOfFrames=200), modality="DX")),
    Case("dicom-series-duplicate-slice", "DICOM series", "ct", "error", r"same position",
         lambda t: series(t, "dup", [0, 1, 1, 2])),
    Case("dicom-series-missing-slice", "DICOM series", "ct", "error", r"inconsistent slice spacing",
         lambda t: series(t, "gap", [0, 1, 2, 4, 5])),
    Case("dicom-series-mixed-orientation", "DICOM series", "ct", "error", r"different orientations",
         lambda t: series(t, "orient", [0, 1, 2], orient=[0, 1, 0, 1, 0, 0])),
    Case("dicom-series-empty-folder", "DICOM series", "ct", "error", r"no readable DICOM",
         lambda t: (t / "emptydir").mkdir() or (t / "emptydir" / "README").write_text("x") and t / "emptydir"),
    Case("dicom-image-as-waveform", "DICOM waveform", "ecg", "error", r"no WaveformSequence",
         lambda t: dcm(t, "img_as_ecg.dcm", modality="ECG")),
    Case("dicom-oct-rows-mismatch", "DICOM", "oct", "error", r"pixel data holds",
         lambda t: dcm(t, "oct_rows.dcm", set_attr(Rows=64), modality="OPT")),
    # a DICOM object is read only by the adapter of its Modality; one without Modality is flagged
    Case("dicom-mr-as-ct", "DICOM", "ct", "error",
         r"DICOM Modality 'MR' is not read by the ct adapter; medfm reads .*CT \(ct\)",
         lambda t: dcm(t, "mr.dcm", modality="MR")),
    Case("dicom-seg-as-ct", "DICOM", "ct", "error", r"DICOM Modality 'SEG' \(a segmentation, not an image\)",
         lambda t: dcm(t, "seg.dcm", modality="SEG")),
    Case("dicom-ct-as-xray", "DICOM", "xray", "error", r"DICOM Modality 'CT' is not read by the xray adapter",
         lambda t: dcm(t, "ct_as_xray.dcm")),
    Case("dicom-ct-series-as-oct", "DICOM", "oct", "error", r"DICOM Modality 'CT' is not read by the oct adapter",
         lambda t: dcm(t, "ct_as_oct.dcm")),
    Case("dicom-ct-as-waveform", "DICOM waveform", "ecg", "error", r"DICOM Modality 'CT' is not read by the ecg adapter",
         lambda t: dcm(t, "ct_as_ecg.dcm")),
    Case("dicom-no-modality", "DICOM", "ct", "flag", r"DICOM has no Modality value: read as ct unchecked",
         lambda t: dcm(t, "nomod.dcm", del_attr("Modality"))),
    # NIfTI
    Case("nifti-header-32767-cubed", "NIfTI", "ct", "error", r"32767×32767×32767 .*max_elements",
         lambda t: nifti_dims(t, "huge.nii", (32767, 32767, 32767))),
    Case("nifti-zero-affine", "NIfTI", "ct", "error", r"affine|singular|unreadable",
         lambda t: nifti_qform_zero(t, "zeroaff.nii", 0.0)),
    Case("nifti-nan-affine", "NIfTI", "ct", "error", r"affine|NaN|unreadable",
         lambda t: nifti_qform_zero(t, "nanaff.nii", float("nan"))),
    Case("nifti-spacing-0.001mm", "NIfTI", "ct", "error", r"spacing .* outside the physical range",
         lambda t: nifti(t, "tiny.nii", affine=np.diag([0.001, 0.001, 0.001, 1.0]))),
    Case("nifti-spacing-1000mm", "NIfTI", "ct", "error", r"spacing .* outside the physical range",
         lambda t: nifti(t, "vast.nii", affine=np.diag([1000.0, 1.0, 1.0, 1.0]))),
    Case("nifti-truncated-data", "NIfTI", "ct", "error", r"unreadable NIfTI",
         lambda t: cut(nifti(t, "cut.nii"), 0.5)),
    Case("nifti-gz-truncated", "NIfTI", "ct", "error", r"unreadable NIfTI",
         lambda t: cut(nifti(t, "cut.nii.gz"), 0.5)),
    Case("nifti-garbage", "NIfTI", "ct", "error", r"unreadable NIfTI",
         lambda t: raw(t, "junk.nii", b"\x00\x01garbage" * 50)),
    Case("nifti-2d", "NIfTI", "ct", "error", r"must be 3D",
         lambda t: nifti(t, "flat.nii", np.ones((8, 8), np.float32))),
    Case("nifti-nan-voxels", "NIfTI", "ct", "error", r"NaN or infinite",
         lambda t: nifti(t, "nan.nii", np.full((8, 8, 8), np.nan, np.float32))),
    Case("nifti-zero-dimension", "NIfTI", "ct", "error", r"empty|must be 3D|unreadable",
         lambda t: nifti(t, "zd.nii", np.ones((8, 0, 8), np.float32))),
    Case("nifti-read-as-ct", "NIfTI", "ct", "flag", r"NIfTI records no modality: read as CT",
         lambda t: nifti(t, "some.nii")),
    Case("nifti-over-raised-limit-ok", "NIfTI", "ct", "ok", "",
         lambda t: nifti(t, "ok.nii"), limits={"max_elements": 600}),
    Case("nifti-over-lowered-limit", "NIfTI", "ct", "error", r"8×8×8 = 512 elements, over the limit max_elements=100",
         lambda t: nifti(t, "lim.nii"), limits={"max_elements": 100}),
    # PNG / JPEG / TIFF
    Case("png-header-13000sq-4-rows", "PNG", "xray", "error", r"truncated PNG",
         lambda t: png(t, "short.png", 13000, 13000, 4)),
    Case("png-rows-missing", "PNG", "xray", "error", r"truncated PNG", lambda t: png(t, "short2.png", 64, 64, 40)),
    Case("png-cut-in-half", "PNG", "xray", "error", r"truncated|unreadable image",
         lambda t: pil_image(t, "half.png", "PNG", 0.5)),
    Case("png-declares-100000sq", "PNG", "xray", "error", r"100000×100000.*max_elements",
         lambda t: png(t, "bomb.png", 100000, 100000, 1)),
    Case("png-garbage", "PNG", "xray", "error", r"unreadable image", lambda t: raw(t, "junk.png", b"\x89PNG junk" * 10)),
    Case("png-empty", "PNG", "xray", "error", r"unreadable image", lambda t: raw(t, "empty.png", b"")),
    Case("png-bad-crc", "PNG", "xray", "error", r"unreadable image|broken|crc",
         lambda t: raw(t, "crc.png", png(t, "crc0.png", 16, 16, 16).read_bytes().replace(b"IHDR", b"IHDr", 1))),
    Case("png-16bit-truncated", "PNG", "xray", "error", r"truncated PNG",
         lambda t: png(t, "s16.png", 64, 64, 10, bit_depth=16)),
    Case("png-over-file-size-limit", "PNG", "xray", "error", r"max_file_mb=0.001",
         lambda t: pil_image(t, "big.png", "PNG", shape=(128, 128)), limits={"max_file_mb": 0.001}),
    Case("png-over-elements-limit", "PNG", "xray", "error", r"max_elements=1,000",
         lambda t: pil_image(t, "lim.png", "PNG"), limits={"max_elements": 1000}),
    Case("png-raised-limit-ok", "PNG", "xray", "ok", "",
         lambda t: pil_image(t, "fine.png", "PNG"), limits={"max_elements": 3072}),
    Case("jpg-truncated", "JPEG", "xray", "error", r"truncated|unreadable image",
         lambda t: pil_image(t, "cut.jpg", "JPEG", 0.4)),
    Case("jpg-garbage", "JPEG", "xray", "error", r"unreadable image", lambda t: raw(t, "junk.jpg", b"\xff\xd8\xff" + b"x" * 64)),
    Case("jpg-empty", "JPEG", "xray", "error", r"unreadable image", lambda t: raw(t, "empty.jpg", b"")),
    Case("tiff-truncated", "TIFF", "xray", "error", r"truncated|unreadable image",
         lambda t: pil_image(t, "cut.tif", "TIFF", 0.5)),
    Case("tiff-garbage", "TIFF", "xray", "error", r"unreadable image", lambda t: raw(t, "junk.tiff", b"II*\x00" + b"\xff" * 40)),
    # WFDB
    Case("wfdb-missing-dat", "WFDB", "ecg", "error", r"listed in the header is missing",
         lambda t: wfdb_rec(t, "nodat", drop_dat=True)),
    Case("wfdb-fs-zero", "WFDB", "ecg", "error", r"sampling rate is 0", lambda t: patch_header(wfdb_rec(t, "fs0"), 2, "0")),
    Case("wfdb-fs-text", "WFDB", "ecg", "error", r"bad sampling rate", lambda t: patch_header(wfdb_rec(t, "fsx"), 2, "abc")),
    Case("wfdb-empty-header", "WFDB", "ecg", "error", r"empty WFDB header", lambda t: raw(t, "e.hea", b"# only a comment\n")),
    Case("wfdb-declares-10^12-samples", "WFDB", "ecg", "error", r"max_elements",
         lambda t: patch_header(wfdb_rec(t, "long"), 3, str(10 ** 12))),
    Case("wfdb-truncated-dat", "WFDB", "ecg", "error", r"cannot read ecg input|shorter|record",
         lambda t: _truncated_wfdb(t)),
    Case("wfdb-flat-all-leads", "WFDB", "ecg", "error", r"flat signal", lambda t: wfdb_rec(t, "flat", sig=np.zeros((300, 12)))),
    Case("wfdb-one-flat-lead", "WFDB", "ecg", "flag", r"flat lead\(s\) V3",
         lambda t: wfdb_rec(t, "v3flat", sig=_with_flat_lead(8))),
    Case("wfdb-too-short", "WFDB", "ecg", "error", r"shorter than min_duration",
         lambda t: wfdb_rec(t, "short", sig=np.random.default_rng(0).normal(size=(50, 12)))),
    Case("wfdb-no-standard-lead", "WFDB", "ecg", "error", r"no standard ECG lead",
         lambda t: wfdb_rec(t, "resp", sig=np.random.default_rng(0).normal(size=(300, 2)), names=["RESP", "PLETH"])),
    Case("wfdb-bad-units", "WFDB", "ecg", "error", r"unsupported signal units",
         lambda t: wfdb_rec(t, "units", units="mmHg")),
    # npy / npz
    Case("npy-object-pickle", "npy", "ct", "error", r"unreadable array file",
         lambda t: npy(t, "pickle.npy", np.array([{"evil": 1}], dtype=object))),
    Case("npy-truncated", "npy", "ct", "error", r"unreadable array file",
         lambda t: cut(npy(t, "cut.npy", np.ones((16, 16, 16), np.float32)), 0.5)),
    Case("npy-declares-10^15-elements", "npy", "ct", "error", r"max_elements",
         lambda t: npy_declaring(t, "huge.npy", (100000, 100000, 100000))),
    Case("npy-2d-for-ct", "npy", "ct", "error", r"must be 3D", lambda t: npy(t, "two.npy", np.ones((8, 8), np.float32))),
    Case("npy-nan", "npy", "ct", "error", r"NaN", lambda t: npy(t, "nan.npy", np.full((4, 8, 8), np.nan, np.float32))),
    Case("npy-strings", "npy", "ct", "error", r"not numeric", lambda t: npy(t, "str.npy", np.array([["a", "b"]] * 3))),
    Case("npz-empty", "npz", "ct", "error", r"holds no array", lambda t: _empty_npz(t)),
    Case("npy-ecg-no-rate", "npy", "ecg", "error", r"sampling rate unknown",
         lambda t: npy(t, "ecg.npy", np.random.default_rng(0).normal(size=(12, 500)))),
    Case("npy-ecg-declares-huge", "npy", "ecg", "error", r"max_elements",
         lambda t: npy_declaring(t, "ecg_huge.npy", (12, 10 ** 11))),
    Case("npy-oct-1d", "npy", "oct", "error", r"must be 3D", lambda t: npy(t, "oct1d.npy", np.ones(10, np.float32))),
    # CSV (ECG as a table)
    Case("csv-ecg-non-numeric", "CSV", "ecg", "error", r"cannot read ecg input|could not convert|not a number",
         lambda t: raw(t, "ecg.csv", b"I,II\n0.1,abc\n0.2,0.3\n")),
    Case("csv-ecg-empty", "CSV", "ecg", "error", r"cannot read ecg input|No columns|empty",
         lambda t: raw(t, "empty.csv", b"")),
    Case("csv-ecg-lead-count-mismatch", "CSV", "ecg", "error", r"sampling rate unknown|channels but",
         lambda t: raw(t, "mismatch.csv", b"I,II,III\n" + b"0.1,0.2,0.3\n" * 10)),
    # FASTA / inline DNA and text cells
    Case("dna-invalid-letter", "DNA cell", "dna", "error", r"invalid nucleotide 'X'", lambda t: "ACGTACGTXACGT", value=True),
    Case("dna-no-acgt", "DNA cell", "dna", "error", TEXT_BAD, lambda t: "NNNNNNNNNNNN", value=True),
    Case("dna-shorter-than-k", "DNA cell", "dna", "error", r"shorter than k=6", lambda t: "ACGT", value=True),
    Case("dna-blank", "DNA cell", "dna", "error", r"no A/C/G/T|empty", lambda t: "  -- ..  ", value=True),
    Case("dna-digits", "DNA cell", "dna", "error", r"invalid nucleotide '1'", lambda t: "ACGT12ACGT", value=True),
    Case("text-blank", "text cell", "text", "error", r"empty text", lambda t: "   \n\t ", value=True),
    Case("fasta-no-records", "FASTA", "dna-file", "error", r"no FASTA records|cannot read FASTA", lambda t: raw(t, "empty.fasta", b"just text\n")),
    Case("fasta-bad-letter", "FASTA", "dna-file", "error", r"bad.fasta:r2: sequence: invalid nucleotide",
         lambda t: raw(t, "bad.fasta", b">r1\nACGTACGT\n>r2\nACGTJJ\n")),
    Case("fasta-gz-truncated", "FASTA", "dna-file", "error", r"cannot read|truncated|Compressed file ended",
         lambda t: raw(t, "cut.fasta.gz", _half(gzip.compress(b">r1\n" + _random_dna(4000).encode())))),
]


def _random_dna(n: int) -> str:
    return "".join(np.random.default_rng(0).choice(list("ACGT"), n))


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _with_flat_lead(i: int) -> np.ndarray:
    t = np.arange(300) / 100
    sig = np.stack([np.sin(2 * np.pi * (k + 1) * t) for k in range(12)], 1)
    sig[:, i] = 0.25  # V3: a constant line (electrode off)
    return sig


def _truncated_wfdb(t: Path) -> Path:
    hea = wfdb_rec(t, "trunc")
    cut(t / "trunc.dat", 0.3)
    return hea


def _empty_npz(t: Path) -> Path:
    p = t / "empty.npz"
    np.savez(p)
    return p


def _read(case: Case, source: Any):
    """What a run does with one input: the adapter's load (eval mode)."""
    if case.modality == "dna-file":
        from medfm.modalities.dna import read_fasta

        return read_fasta(source)
    return adapter(case.modality).load(source, sample_id="sample-7" if case.value else None)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corrupt_input(case: Case, tmp_path):
    source = case.make(tmp_path)
    with limits(**(case.limits or {})):
        if case.expect == "ok":
            out = _read(case, source)
            assert "x" in out
            return
        if case.expect == "flag":
            out = _read(case, source)
            assert out.get("flags"), case.id
            assert any(__import__("re").search(case.match, f) for f in out["flags"]), out["flags"]
            return
        with pytest.raises(DataError, match=case.match) as e:
            _read(case, source)
    msg = str(e.value)
    assert "\n" not in msg  # one line
    named = "sample-7" if case.value else Path(str(source)).name
    assert named in msg, f"{case.id}: the message does not name {named}: {msg}"


def test_the_corpus_has_at_least_60_cases_across_formats():
    kinds = {c.kind for c in CASES}
    assert len(CASES) >= 60
    assert {"DICOM", "NIfTI", "PNG", "JPEG", "TIFF", "WFDB", "npy", "CSV", "DNA cell", "FASTA"} <= kinds


# ------------------------------------------------- the corpus inside a run
def test_corpus_in_one_manifest_is_logged_counted_and_skipped(tmp_path, caplog):
    """Every file case in one manifest: errors become counted skips, flags counted warnings."""
    import pandas as pd

    rows, expected_errors, expected_flags, blank = [], 0, 0, 0
    for i, case in enumerate(c for c in CASES if c.limits is None and c.modality != "dna-file"):
        folder = tmp_path / f"c{i:02d}"
        folder.mkdir()
        src = case.make(folder)
        cell = src if case.value else str(Path(src).relative_to(tmp_path))
        rows.append({"id": f"case{i:02d}", "patient_id": f"p{i}", case.modality: cell})
        if case.value and not str(src).strip():
            blank += 1  # a blank cell is an absent modality in a manifest, not an error
            continue
        expected_errors += case.expect == "error"
        expected_flags += case.expect == "flag"
    manifest = tmp_path / "corpus.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    df = read_manifest(manifest)
    adapters = {m: adapter(m) for m in ("xray", "ct", "ecg", "dna", "text", "oct")}
    ds = ManifestDataset(df, adapters, log_first=10 ** 9)  # every skip logged (summaries: test_hostile_inputs)
    with caplog.at_level(logging.WARNING, logger="medfm.data"):
        batch = MultiModalCollate(adapters)([ds[i] for i in range(len(ds))])
    erred = sorted({sid for sid, _, _ in batch["errors"]})
    assert len(batch["errors"]) == expected_errors, (erred, [r["id"] for r in rows])
    # one modality per row: an error skips the row (as does a row whose only cell is blank)
    assert batch["n_skipped"] == expected_errors + blank
    assert len(batch["flags"]) == expected_flags == 3  # a flat lead, a DICOM without Modality, a NIfTI CT
    assert sum(r.getMessage().startswith("skipping ") for r in caplog.records) == expected_errors
    assert sum(r.getMessage().startswith("flagged ") for r in caplog.records) == expected_flags
    assert "Traceback" not in caplog.text
    assert all("\n" not in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- manifests
def _manifest(tmp: Path, text: str, name="m.csv") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


MANIFEST_CASES = [
    ("manifest-empty-id", "m.csv", "id,patient_id,dna\na,p1,ACGTACGT\n,p2,ACGTACGT\n", r"row 2: empty id"),
    ("manifest-two-empty-ids", "m.csv", "id,patient_id,dna\n,p1,ACGTACGT\n,p2,ACGTACGT\n", r"row 1: empty id"),
    ("manifest-list-id", "m.jsonl", '{"id": [1, 2], "patient_id": "p", "dna": "ACGTAC"}\n', r"row 1: id must be a string or an integer, got list"),
    ("manifest-dict-id", "m.jsonl", '{"id": "a", "patient_id": "p"}\n{"id": {"x": 1}, "patient_id": "q"}\n',
     r"row 2: id must be a string or an integer, got dict"),
    ("manifest-bool-id", "m.jsonl", '{"id": true, "patient_id": "p"}\n', r"row 1: id must be"),
    ("manifest-duplicate-id", "m.csv", "id,patient_id\na,p\na,q\n", r"duplicate sample id"),
    ("manifest-missing-columns", "m.csv", "name,dna\na,ACGT\n", r"required column\(s\) missing"),
    ("manifest-unknown-format", "m.xlsx", "whatever", r"unknown manifest format"),
    ("manifest-garbage-parquet", "m.parquet", "not parquet", r"cannot read manifest"),
    ("manifest-garbage-jsonl", "m.jsonl", "{not json\n", r"cannot read manifest"),
]


@pytest.mark.parametrize("name,fname,text,match", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_bad_manifest_is_an_error_naming_the_row(tmp_path, name, fname, text, match):
    p = _manifest(tmp_path, text, fname)
    with pytest.raises(DataError, match=match) as e:
        read_manifest(p)
    assert fname in str(e.value)


def test_manifest_paths_are_confined_to_the_data_root(tmp_path, monkeypatch):
    """``../`` and absolute escapes are counted skips that never open the file; data.root widens it."""
    outside = pil_image(tmp_path, "outside.png", "PNG")
    (tmp_path / "cohort" / "sub").mkdir(parents=True)
    inside = pil_image(tmp_path / "cohort", "inside.png", "PNG")
    manifest = _manifest(tmp_path / "cohort", "id,patient_id,xray\n"
                         f"a,p1,{inside.name}\nb,p2,../outside.png\nc,p3,/etc/passwd\nd,p4,sub/../../outside.png\n")
    df = read_manifest(manifest)
    a = {"xray": adapter("xray")}
    opened = []
    import medfm.modalities.imaging as imaging

    real = imaging.read_image_file
    monkeypatch.setattr(imaging, "read_image_file", lambda p, **k: opened.append(str(p)) or real(p, **k))
    ds = ManifestDataset(df, a)
    batch = MultiModalCollate(a)([ds[i] for i in range(len(ds))])
    assert batch["id"] == ["a"] and batch["n_skipped"] == 3
    for sid, mod, reason in batch["errors"]:
        assert "outside the data root" in reason and reason.startswith(sid), reason
    assert opened == [str(tmp_path / "cohort" / "inside.png")]  # /etc/passwd and ../ never opened
    # a wider data.root lets ../ in (absolute /etc/passwd stays outside it)
    ds = ManifestDataset(df, a, root=tmp_path)
    batch = MultiModalCollate(a)([ds[i] for i in range(len(ds))])
    assert batch["id"] == ["a", "b", "d"] and batch["n_skipped"] == 1
    # a manifest of absolute paths only is not confined by default
    absolute = _manifest(tmp_path / "cohort", f"id,patient_id,xray\na,p1,{outside}\n", "abs.csv")
    ds = ManifestDataset(read_manifest(absolute), a)
    assert ds.root is None and ds[0]["inputs"]


# --------------------------------------------------------------------- CLI
def _cli(capsys, argv) -> tuple:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    CLI_OUTPUTS.append(out.out + out.err)
    return code, out.err


def _run_yaml(tmp: Path, **over) -> Path:
    cfg = {"model": {"name": "medfm-tiny", "modalities": {"dna": {"k": 4, "max_length": 64}}},
           "data": {"manifest": str(tmp / "dna.csv"), "batch_size": 4, "split": None},
           "objectives": [{"name": "masked", "weight": 1.0}],
           "train": {"max_steps": 1, "checkpoint_every": 0, "tensorboard": False, "progress": False}}
    for key, val in over.items():
        sec, k = key.split("__")
        cfg.setdefault(sec, {})[k] = val
    (tmp / "dna.csv").write_text("id,patient_id,dna\n" + "".join(f"s{i},p{i},{'ACGT' * 10}\n" for i in range(8)))
    p = tmp / f"run{len(over)}_{abs(hash(json.dumps(over, default=str))) % 10 ** 6}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _forged_model_dir(tmp: Path, payload: bytes, name="model.safetensors") -> Path:
    d = tmp / "forged"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"format": "medfm", "format_version": 1, "model": {
        "embed_dim": 16, "trunk": {"width": 16, "depth": 1, "heads": 2}, "modalities": {}, "towers": {}}}))
    (d / name).write_bytes(payload)
    return d


def _pickle_bomb() -> bytes:
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("PWNED-BY-PICKLE",))
    return pickle.dumps({"model": Evil()})


CLI_CASES = [
    ("cli-batch-size-0", 2, r"--batch-size must be a positive integer, got 0",
     lambda t: ["embed", "--model", t, "--manifest", t / "m.csv", "--modality", "dna", "--out", t / "e.safetensors",
                "--batch-size", "0"]),
    ("cli-batch-size-negative", 2, r"--batch-size must be a positive integer, got -1",
     lambda t: ["zeroshot", "--model", t, "--manifest", t / "m.csv", "--modality", "dna", "--out", t / "z",
                "--prompts", t / "p.yaml", "--label-column", "y", "--batch-size", "-1"]),
    ("cli-batch-size-text", 2, r"invalid int value", lambda t: ["embed", "--model", t, "--manifest", t, "--modality",
                                                                "dna", "--out", t / "e", "--batch-size", "many"]),
    ("cli-max-steps-0", 2, r"--max-steps must be a positive integer", lambda t: ["pretrain", _run_yaml(t), "--out",
                                                                             t / "o", "--max-steps", "0"]),
    ("cli-out-under-a-file", 2, r"--out .*is a file, not a folder",
     lambda t: ["pretrain", _run_yaml(t), "--out", _touch(t / "afile") / "sub"]),
    ("cli-out-is-unwritable", 2, r"--out /proc/medfm-out: cannot be created", lambda t: ["pretrain", _run_yaml(t), "--out",
                                                                             "/proc/medfm-out"]),
    ("config-batch-size-0", 2, r"data.batch_size: must be >= 1, got 0",
     lambda t: ["pretrain", _run_yaml(t, data__batch_size=0), "--out", t / "o"]),
    ("config-lr-abc", 2, r"optim.lr: expected a number, got 'abc'",
     lambda t: ["pretrain", _run_yaml(t, optim__lr="abc"), "--out", t / "o"]),
    ("config-set-lr-abc", 2, r"optim.lr: expected a number, got 'abc'",
     lambda t: ["pretrain", _run_yaml(t), "--out", t / "o", "--set", "optim.lr=abc"]),
    ("config-unknown-key", 2, r"train.max_stepz: unknown key",
     lambda t: ["pretrain", _run_yaml(t, train__max_stepz=3), "--out", t / "o"]),
    ("config-unknown-section", 2, r"optimiser: unknown config section",
     lambda t: ["pretrain", _run_yaml(t, optimiser__lr=1), "--out", t / "o"]),
    ("config-negative-warmup", 2, r"optim.warmup_steps: must be >= 0",
     lambda t: ["pretrain", _run_yaml(t, optim__warmup_steps=-5), "--out", t / "o"]),
    ("config-betas-wrong", 2, r"optim.betas\[1\]: must be in \[0, 1\)",
     lambda t: ["pretrain", _run_yaml(t, optim__betas=[0.9, 1.5]), "--out", t / "o"]),
    ("config-precision-wrong", 2, r"train.precision: expected one of",
     lambda t: ["pretrain", _run_yaml(t, train__precision="fp8"), "--out", t / "o"]),
    ("config-not-yaml", 2, r"not valid YAML", lambda t: ["pretrain", _write(t / "bad.yaml", "a: [1, 2\n"), "--out", t / "o"]),
    ("config-a-list", 2, r"top level must be a mapping", lambda t: ["pretrain", _write(t / "l.yaml", "- 1\n- 2\n"),
                                                                  "--out", t / "o"]),
    ("config-set-without-equals", 2, r"--set expects KEY=VALUE", lambda t: ["pretrain", _run_yaml(t), "--out", t / "o",
                                                                          "--set", "optim.lr"]),
    ("finetune-config-lr-abc", 2, r"optim.lr: expected a number, got 'abc'",
     lambda t: ["finetune", _write(t / "ft.yaml", yaml.safe_dump({"base": str(t), "data": {"manifest": "m.csv"},
                                                                  "optim": {"lr": "abc"}})), "--out", t / "o"]),
    ("finetune-config-batch-size-0", 2, r"data.batch_size: must be >= 1, got 0",
     lambda t: ["finetune", _write(t / "ft.yaml", yaml.safe_dump({"base": str(t), "data": {"manifest": "m.csv",
                                                                                          "batch_size": 0}})),
                "--out", t / "o"]),
    ("weights-pickle-as-safetensors", 1, r"model.safetensors: unreadable weights",
     lambda t: ["embed", "--model", _forged_model_dir(t, _pickle_bomb()), "--manifest", t / "m.csv", "--modality",
                "dna", "--out", t / "e.safetensors"]),
    ("weights-truncated-safetensors", 1, r"model.safetensors: unreadable weights",
     lambda t: ["pretrain", _run_yaml(t), "--out", t / "o", "--init-from", _forged_model_dir(t, b"\x08\x00\x00\x00")]),
    ("weights-garbage-config", 1, r"config.json: unreadable config",
     lambda t: ["embed", "--model", _write(_forged_model_dir(t, b"") / "config.json", "{nope").parent,
                "--manifest", t / "m.csv",
                "--modality", "dna", "--out", t / "e.safetensors"]),
    ("weights-pickle-init-from", 1, r"model.safetensors: unreadable weights",
     lambda t: ["pretrain", _run_yaml(t), "--out", t / "o", "--set", "model.modalities.dna.model_dir=null",
                "--init-from", _forged_model_dir(t, _pickle_bomb(), name="model.safetensors")]),
]


def _touch(p: Path) -> Path:
    p.write_text("x")
    return p


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def _write_dir(d: Path, name: str, text: str) -> Path:
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    return d


@pytest.mark.parametrize("name,code,match,argv", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_error_is_one_line_with_its_exit_code(tmp_path, capsys, name, code, match, argv):
    got, err = _cli(capsys, argv(tmp_path))
    assert got == code, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("usage:", " "))]
    assert len(lines) == 1, err
    assert __import__("re").search(match, lines[0]), lines[0]
    assert "PWNED-BY-PICKLE" not in err
    assert not (tmp_path / "o" / "metrics.jsonl").exists()  # validation happens before any data is read


def test_no_traceback_in_any_cli_output():
    assert len(CLI_OUTPUTS) >= len(CLI_CASES)
    for text in CLI_OUTPUTS:
        assert "Traceback" not in text and 'File "' not in text, text


def test_pickled_torch_weights_are_refused_without_running_code(tmp_path, capsys):
    """Every torch.load of a weight file uses weights_only=True: a pickle that runs code is refused."""
    from medfm.errors import CheckpointError
    from medfm.models.state_dicts import load_state_dict_file

    for name in ("evil.pth", "evil.bin", "evil.pt"):
        p = raw(tmp_path, name, _pickle_bomb())
        with pytest.raises(CheckpointError, match=name) as e:
            load_state_dict_file(p)
        assert "\n" not in str(e.value)
    assert "PWNED-BY-PICKLE" not in capsys.readouterr().out
