"""The README walk-through, command by command, on a small slice of ../shared/data.

The commands are read from README.md (the ``$ medfm ...`` lines between the walk-through markers)
and run as they are, from a project folder beside a ``shared/data`` slice: 10 barcodes of each of
the 14 orders of the BOLD table, 6 CinC ECG records and the CT series. Only ``--max-steps`` is
lowered to keep CI short; a fixed salt is placed where `medfm manifest` looks for it, so the
patient-grouped split (and with it every printed number) is the same on every run.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest

from medfm.cli import main

from conftest import shared_data

README = Path(__file__).resolve().parents[1] / "README.md"
STEPS = 40
SALT = f"{28:064x}"


def walkthrough_commands():
    text = README.read_text()
    block = text.split("<!-- walkthrough:start -->")[1].split("<!-- walkthrough:end -->")[0]
    return [shlex.split(line[len("$ medfm "):]) for line in block.splitlines() if line.startswith("$ medfm ")]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    bold = shared_data("dna", "coi_barcodes_100_species.tsv")
    root = tmp_path_factory.mktemp("walk")
    data = root / "shared" / "data"
    (data / "dna").mkdir(parents=True)
    table = pd.read_csv(bold, sep="\t", dtype=str)
    table[table.groupby("order_name").cumcount() < 10].to_csv(data / "dna" / bold.name, sep="\t", index=False)
    ecg = shared_data("ecg", "cinc2021_12lead")
    (data / "ecg" / ecg.name).mkdir(parents=True)
    for hea in sorted(ecg.glob("*.hea"))[:6]:
        for f in (hea, hea.with_suffix(".mat")):
            os.symlink(f, data / "ecg" / ecg.name / f.name)
    (data / "ct").mkdir()
    series = shared_data("ct", "ct_dicom_series_20_slices")
    (data / "ct" / series.name).mkdir()
    for f in sorted(series.iterdir()):  # file links: `medfm manifest` does not follow a folder link out of its root
        os.symlink(f, data / "ct" / series.name / f.name)
    proj = root / "proj"
    (proj / "cohort").mkdir(parents=True)
    (proj / "cohort" / "cohort.csv.salt").write_text(SALT + "\n")
    return proj


@pytest.mark.timeout(300)
def test_readme_walkthrough_end_to_end(project, capsys, monkeypatch, one_thread):
    cmds = walkthrough_commands()
    names = [c[0] if c[0] not in ("evaluate", "index") else " ".join(c[:2]) for c in cmds]
    assert names == ["manifest", "inspect", "inspect", "pretrain", "zeroshot", "evaluate retrieval",
                     "evaluate bioscan", "index build", "search"]
    monkeypatch.chdir(project)
    out = {}
    for cmd in cmds:
        if cmd[0] == "pretrain":
            cmd = [a if not re.fullmatch(r"\d+", a) or cmd[cmd.index(a) - 1] != "--max-steps" else str(STEPS)
                   for a in cmd]
        rc = main(cmd)
        o, err = capsys.readouterr()
        assert rc == 0, (cmd, err)
        out[" ".join(cmd[:2])] = o
    summary = json.loads(Path("cohort/cohort.csv.summary.json").read_text())
    assert summary["rows_per_modality"] == {"ct": 1, "dna": 140, "ecg": 6, "text": 140}
    assert summary["n_unreadable"] == 0
    assert Path("cohort/E07500.png").is_file() and "meta.fs: 500.0" in "".join(out.values())
    # zero-shot from text prompts on held-out barcodes: 14 orders, macro AUROC above chance (0.5)
    zs = json.loads(Path("cohort/zeroshot/results.json").read_text())
    assert len(zs["classes"]) == 14 and zs["n"] >= 14
    assert zs["ci"]["macro_auroc"][0] > 0.5, zs["metrics"]["macro_auroc"]
    # retrieval DNA <-> taxonomy text (same order = relevant): every test barcode is a query with a match.
    # (40 steps rank the orders per class — the AUROC above — but not yet per query: R@1 is near chance here)
    ret = json.loads(Path("cohort/retrieval/results.json").read_text())
    assert ret["metrics"]["dna_to_text_n_queries"] == zs["n"] and ret["metrics"]["dna_to_text_n_no_match"] == 0
    assert 0 < ret["metrics"]["dna_to_text_mAP"] <= 1
    # BIOSCAN: nearest training barcode's order, on held-out barcodes of seen species
    bio = json.loads(Path("cohort/bioscan/results.json").read_text())
    assert bio["metrics"]["seen/order_name/micro"] > 0.5
    # search with a FASTA-table record as query: its own order ranks first
    hits = [line.split("\t") for line in out["search --index"].strip().splitlines()[1:]]
    assert hits and hits[0][3] == "Diptera"
