"""No file is read as something it is not: pydicom's and nibabel's own test files through ``medfm inspect``.

Every file pydicom ships as test data (``pydicom.data.get_testdata_files()``, plus the
``pydicom-data`` package when installed) and every file of nibabel's test data folders goes
through :func:`medfm.modalities.inspect.inspect_source`, the function behind ``medfm inspect FILE``
(the preview PNG aside). Each file ends in one of:

* ``read``: read, and right — a DICOM object whose own Modality tag is one this test's reference
  table gives to the adapter that read it;
* ``flagged``: read with a note (a NIfTI read as CT, a DICOM without Modality);
* ``refused``: a :class:`~medfm.errors.MedFMError` whose message names the file;

and never in ``wrong`` (read without a word by an adapter the file's Modality tag does not belong
to: an MR, US, NM, SC/OT, SEG or RTDOSE file read as CT, a NIfTI read as CT unflagged) or
``traceback`` (any other exception). The reference table below is written here, from the DICOM
standard's Modality values, not taken from the adapters it checks.

Run ``python tests/test_reader_corpus.py`` for the table (read / refused / flagged per set).
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

pydicom = pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")

from medfm.errors import MedFMError  # noqa: E402
from medfm.modalities.inspect import inspect_source  # noqa: E402

#: DICOM Modality value → the medfm adapter whose input it is (DICOM PS3.3 C.7.3.1.1.1)
REFERENCE = {"CT": "ct", "CR": "xray", "DX": "xray", "DR": "xray", "RG": "xray", "OPT": "oct", "OCT": "oct",
             "OP": "fundus", "XC": "fundus", "ECG": "ecg", "HD": "ecg"}
#: formats that record no modality at all: reading one without a note is wrong
NO_MODALITY_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img", ".mgz", ".mgh", ".mnc", ".par", ".rec", ".v", ".brik",
                        ".brik.gz", ".head")


def corpus() -> Dict[str, List[Path]]:
    """``{set name: files}``: pydicom's test files (and pydicom-data's), nibabel's test data folders."""
    from pydicom.data import get_testdata_files

    sets = {"pydicom": sorted(Path(p) for p in get_testdata_files())}
    try:
        import pydicom_data  # noqa: F401  (optional: 58 MB of real DICOM)

        from pydicom.data.data_manager import external_data_sources

        extra = [Path(p) for src in external_data_sources().values() for p in Path(src.data_path).rglob("*")
                 if p.is_file()]
        sets["pydicom-data"] = sorted(extra)
    except Exception:  # not installed
        pass
    root = Path(nibabel.__file__).parent
    nib_files = [p for d in sorted(root.rglob("tests/data")) if d.is_dir() for p in sorted(d.iterdir())
                 if p.is_file() and p.suffix not in (".py", ".pyc")]
    sets["nibabel"] = nib_files
    return sets


def file_modality(path: Path) -> Tuple[str, Optional[str]]:
    """``("dicom", Modality)`` for a file pydicom reads, ``("none", None)`` for a format that records no
    modality, ``("other", None)`` otherwise. Read here with pydicom, independently of medfm."""
    name = path.name.lower()
    if path.is_file() and any(name.endswith(s) for s in NO_MODALITY_SUFFIXES):
        return "none", None
    files = sorted(p for p in path.iterdir() if p.is_file())[:1] if path.is_dir() else [path]
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:
            continue
        return "dicom", str(ds.get("Modality", "") or "").strip().upper()
    return "other", None


#: smaller model inputs than the adapters' defaults (as a checkpoint's adapters would have, ``medfm
#: inspect --model``): the same reading and checks, a lighter resampling of each volume
LIGHT = {"ct": {"size": [32, 64, 64], "patch_size": [4, 16, 16]}, "oct": {"frames": 8, "size": [64, 64]},
         "xray": {"size": 64}, "fundus": {"size": 64}}


def light_adapters() -> Dict[str, object]:
    from medfm.registry import MODALITIES, get_modality

    return {name: get_modality(name, **LIGHT.get(name, {})) for name in MODALITIES.names()}


def classify(path: Path, adapters: Optional[Dict[str, object]] = None) -> Tuple[str, str]:
    """``(outcome, detail)`` of one file through ``medfm inspect``'s code path."""
    kind, tag = file_modality(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = inspect_source(str(path), None, adapters)
    except MedFMError as e:
        msg = str(e)
        if str(path) not in msg and path.name not in msg:
            return "unnamed", f"{type(e).__name__}: {msg}"
        return "refused", msg
    except Exception as e:  # noqa: BLE001 - what this test exists to find
        return "traceback", f"{type(e).__name__}: {e}"
    info = result["info"]
    if info.get("notes"):
        return "flagged", "; ".join(info["notes"])
    read_as = info["modality"]
    if kind == "dicom" and REFERENCE.get(tag or "") != read_as:
        return "wrong", f"Modality {tag or '(none)'!r} read as {read_as} without a word"
    if kind == "none":
        return "wrong", f"{path.suffix} (no modality recorded) read as {read_as} without a word"
    return "read", read_as


def run_corpus() -> Tuple[Dict[str, Counter], List[Tuple[str, Path, str, str]]]:
    logging.disable(logging.WARNING)
    try:
        table: Dict[str, Counter] = {}
        rows = []
        adapters = light_adapters()
        for name, files in corpus().items():
            table[name] = Counter()
            for path in files:
                outcome, detail = classify(path, adapters)
                table[name][outcome] += 1
                rows.append((name, path, outcome, detail))
        return table, rows
    finally:
        logging.disable(logging.NOTSET)


def format_table(table: Dict[str, Counter]) -> str:
    cols = ("read", "flagged", "refused", "wrong", "unnamed", "traceback")
    lines = ["| set | files | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, c in table.items():
        lines.append(f"| {name} | {sum(c.values())} | " + " | ".join(str(c.get(k, 0)) for k in cols) + " |")
    return "\n".join(lines)


def test_every_test_file_is_read_right_flagged_or_refused():
    start = time.process_time()
    table, rows = run_corpus()
    print("\n" + format_table(table))
    bad = [f"{outcome}: {set_}/{path.name}: {detail}" for set_, path, outcome, detail in rows
           if outcome in ("wrong", "unnamed", "traceback")]
    assert not bad, f"{len(bad)} of {len(rows)} files read wrongly or failed without a named reason:\n" + "\n".join(bad)
    total = Counter()
    for c in table.values():
        total.update(c)
    # the corpus is real: both sets are there, and each outcome happens
    assert table["pydicom"] and table["nibabel"]
    assert total["read"] > 0 and total["refused"] > 0 and total["flagged"] > 0
    assert time.process_time() - start < 60


def test_an_mr_file_is_refused_with_the_reason(tmp_path):
    from pydicom.data import get_testdata_file

    from medfm.modalities.inspect import inspect_file
    from medfm.registry import get_modality

    mr = get_testdata_file("MR_small.dcm")
    for modality in (None, "ct"):  # chosen from the tag, or named by the user
        with pytest.raises(MedFMError) as err:
            inspect_source(mr, modality)
        assert "MR_small.dcm" in str(err.value)
        assert "DICOM Modality 'MR'" in str(err.value) and "medfm reads CT (ct)" in str(err.value)
    with pytest.raises(MedFMError, match=r"DICOM Modality 'MR' is not read by the ct adapter; medfm reads .*CT \(ct\)"):
        inspect_file(mr, get_modality("ct"))
    # extensionless: the real reason, not "no modality reads this file"
    bare = tmp_path / "IM0001"
    bare.write_bytes(Path(mr).read_bytes())
    with pytest.raises(MedFMError, match=r"IM0001.*DICOM Modality 'MR' has no medfm modality"):
        inspect_source(bare)


def test_non_image_objects_say_what_they_are():
    from pydicom.data import get_testdata_file

    for name, what in (("rtdose.dcm", "a radiotherapy dose grid"), ("liver_1frame.dcm", "a segmentation"),
                       ("reportsi.dcm", "a structured report"), ("rtplan.dcm", "a radiotherapy plan")):
        for modality in (None, "ct"):
            with pytest.raises(MedFMError, match=rf"{name}.*DICOM Modality '\w+' \({what}, not an image\)"):
                inspect_source(get_testdata_file(name), modality)


def test_nifti_read_as_ct_is_noted_once_and_counted_in_a_run(tmp_path, caplog):
    import shutil

    import numpy as np
    import pandas as pd
    from nibabel.testing import data_path
    from pydicom.data import get_testdata_file

    from medfm.data import ManifestDataset, MultiModalCollate
    from medfm.registry import get_modality

    anat = Path(data_path) / "anatomical.nii"
    info = inspect_source(str(anat))["info"]
    assert info["modality"] == "ct" and len(info["notes"]) == 1 and "NIfTI" in info["notes"][0]
    # a run counts it: one flag per NIfTI sample and epoch, none for a DICOM CT; printed once
    other = shutil.copy(anat, tmp_path / "other.nii")
    df = pd.DataFrame({"id": ["a", "b", "c"], "patient_id": ["p", "q", "r"],
                       "ct": [str(anat), get_testdata_file("CT_small.dcm"), str(other)]})
    ct = get_modality("ct", size=[8, 16, 16], target_spacing=None, patch_size=[4, 8, 8])
    ds = ManifestDataset(df, {"ct": ct}, confine=False)
    with caplog.at_level(logging.WARNING, logger="medfm.data"):
        batches = [MultiModalCollate({"ct": ct})([ds[i] for i in range(3)]) for _epoch in range(2)]
    assert [(sid, mod) for b in batches for sid, mod, _ in b["flags"]] == [("a", "ct"), ("c", "ct")] * 2
    assert np.isfinite(batches[0]["inputs"]["ct"]["x"].numpy()).all()
    assert sum("NIfTI records no modality" in r.getMessage() for r in caplog.records) == 1


def test_codec_error_names_the_file_and_the_packages(tmp_path):
    from pydicom.data import get_testdata_file
    from pydicom.pixels import get_decoder

    src = get_testdata_file("JPEGLSNearLossless_16.dcm") or get_testdata_file("emri_small_jpeg_ls_lossless.dcm")
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    if get_decoder(ds.file_meta.TransferSyntaxUID).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    path = tmp_path / "ct_jpegls.dcm"
    full = pydicom.dcmread(src)
    full.Modality = "CT"
    full.save_as(path)
    with pytest.raises(MedFMError) as err:
        inspect_source(str(path), "ct")
    msg = str(err.value)
    assert "ct_jpegls.dcm" in msg and "JPEG-LS" in msg
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in msg and "python-gdcm" in msg


if __name__ == "__main__":  # the table for the closing note
    t0 = time.time()
    tab, all_rows = run_corpus()
    print(format_table(tab))
    for set_, p, outcome, detail in all_rows:
        if outcome not in ("read",):
            print(f"{outcome:9s} {set_}/{p.name}: {detail[:160]}")
    print(f"{len(all_rows)} files in {time.time() - t0:.1f} s")
