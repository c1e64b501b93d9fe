"""Every format `medfm info` advertises is readable from a manifest cell; others get one clear error."""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import medfm
from medfm.cli import main
from medfm.data import ManifestDataset, read_manifest
from medfm.errors import DataError
from medfm.registry import MODALITIES

from conftest import shared_data

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


def test_dna_file_references_fasta_tsv_and_record_ids(tmp_path):
    tsv = shared_data("dna", "coi_barcodes_100_species.tsv")
    table = pd.read_csv(tsv, sep="\t", dtype=str).head(5)
    (tmp_path / "seqs").mkdir()
    table.to_csv(tmp_path / "seqs" / "five.tsv", sep="\t", index=False)
    fasta = "".join(f">{r.processid} {r.species_name}\n{r.nucleotides}\n" for r in table.itertuples())
    (tmp_path / "seqs" / "five.fasta").write_text(fasta)
    (tmp_path / "seqs" / "one.fa").write_text(f">only\n{table.nucleotides[2]}\n")
    ids = list(table.processid)
    manifest = pd.DataFrame({"id": ["a", "b", "c", "d"], "patient_id": ["p1", "p2", "p3", "p4"],
                             "dna": [f"seqs/five.fasta#{ids[1]}", f"seqs/five.tsv#{ids[3]}", "seqs/one.fa",
                                     table.nucleotides[4]]})
    manifest.to_csv(tmp_path / "m.csv", index=False)
    df = read_manifest(tmp_path / "m.csv")
    dna = medfm.get_modality("dna")
    ds = ManifestDataset(df, {"dna": dna})
    want = [table.nucleotides[i] for i in (1, 3, 2, 4)]
    for i, seq in enumerate(want):  # relative references resolve against the manifest's folder
        got = ds.load_modality(i, "dna")
        ref = dna.preprocess(dna.read(seq))
        assert got["x"].tolist() == ref["x"].tolist()
    with pytest.raises(DataError, match="5 records in the file; select one with five.fasta#"):
        dna.read(str(tmp_path / "seqs" / "five.fasta"))
    with pytest.raises(DataError, match="no record 'nope'"):
        dna.read(str(tmp_path / "seqs" / "five.tsv#nope"))


def test_text_txt_reference(tmp_path):
    (tmp_path / "r1.txt").write_text("FINDINGS: Heart size normal.\nIMPRESSION: No acute disease.\n")
    text = medfm.get_modality("text")
    rec = text.read(str(tmp_path / "r1.txt"))
    assert rec.data == text.read("FINDINGS: Heart size normal.\nIMPRESSION: No acute disease.\n").data
    assert "heart size normal" in rec.data.lower()
    with pytest.raises(DataError, match="text file not found"):
        text.read(str(tmp_path / "missing.txt"))


def test_oct_nifti_3d_and_2d(tmp_path):
    img = nib.load(str(NIB_DATA / "anatomical.nii"))  # a real 3D NIfTI shipped by nibabel
    arr = np.asarray(img.dataobj, dtype=np.float32)
    oct_ = medfm.get_modality("oct", frames=8, size=[32, 32], patch_size=[2, 8, 8])
    rec = oct_.read(str(NIB_DATA / "anatomical.nii"))
    assert rec.meta["format"] == "nifti" and rec.data.shape == (arr.shape[2], arr.shape[1], arr.shape[0])
    np.testing.assert_array_equal(rec.data[3], arr[:, :, 3].T)  # B-scan 3 = the z=3 slice, (depth, width)
    assert oct_.preprocess(rec)["x"].shape == (1, 8, 32, 32)
    bscan = tmp_path / "bscan.nii.gz"
    nib.save(nib.Nifti1Image(arr[:, :, 5], np.eye(4)), str(bscan))
    rec2 = oct_.read(str(bscan))
    assert rec2.data.shape == (1, arr.shape[1], arr.shape[0])
    np.testing.assert_array_equal(rec2.data[0], arr[:, :, 5].T)


@pytest.mark.parametrize("modality", ["ct", "oct", "xray", "fundus", "ecg"])
def test_unsupported_format_message(tmp_path, modality):
    f = tmp_path / "clip.mp4"
    f.write_bytes(b"\0" * 256)
    with pytest.raises(DataError) as e:
        medfm.get_modality(modality).read(str(f))
    msg = str(e.value)
    assert f"unsupported format '.mp4' for modality '{modality}'; supported: " in msg and str(f) in msg
    for sfx in MODALITIES.get(modality).suffixes:
        if sfx:
            assert sfx in msg


def test_dicom_without_suffix_is_sniffed(tmp_path):
    from pydicom.data import get_testdata_file

    f = tmp_path / "1.2.840.10008.5"  # UID-named file: its 'suffix' is '.5'
    shutil.copy(get_testdata_file("CT_small.dcm"), f)
    assert medfm.get_modality("ct").read(str(f)).data.shape == (1, 128, 128)


def test_info_lists_only_readable_suffixes(capsys):
    """Each advertised suffix has a reader: dna/text suffixes are file references, the rest reach a branch."""
    assert main(["info", "--json"]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    details = {m["name"]: m["suffixes"] for m in info["modality_details"]}
    assert ".txt" in details["text"] and ".fasta" in details["dna"] and ".tsv" in details["dna"]
    assert ".nii.gz" in details["oct"] and ".nii" in details["oct"]
    from medfm.modality import file_reference

    for sfx in details["dna"]:
        assert file_reference(f"x{sfx}#id", details["dna"]) is not None
