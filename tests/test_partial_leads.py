"""Partial ECG inputs: lead-subset specs, the masked embedding equals the model's embedding of the record with
the other leads zeroed (what the adapter does for an absent lead), and the CLI's one row per subset."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import medfm
from medfm.cli import main
from medfm.errors import UsageError
from medfm.evaluation.embed import embed_manifest
from medfm.evaluation.partial import mask_batch, masked_leads
from medfm.modalities.ecg import LEADS
from medfm.modalities.ecg_lead_sets import lead_names, parse_lead_spec

ECG = {"fs": 100, "duration": 2.0, "min_duration": 2.0, "patch_size": 50, "bandpass": None}


def test_lead_specs():
    assert lead_names(parse_lead_spec("I")) == ["I"]
    assert lead_names(parse_lead_spec("lead II, i")) == ["I", "II"]
    assert lead_names(parse_lead_spec("limb")) == list(LEADS[:6])
    assert lead_names(parse_lead_spec("precordial,I")) == ["I", *LEADS[6:]]
    with pytest.raises(UsageError, match="V7"):
        parse_lead_spec("V7")


def test_mask_batch_zeroes_other_leads():
    x = torch.ones(2, 12, 5)
    keep = parse_lead_spec("I,V1")
    b = mask_batch({"x": x, "lead_mask": torch.ones(2, 12, dtype=torch.bool)}, keep)
    assert b["x"][:, keep].eq(1).all() and b["x"][:, ~keep].eq(0).all()
    assert b["lead_mask"].sum().item() == 4 and x.eq(1).all()  # the input batch is left as it was


@pytest.fixture(scope="module")
def ecg_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("leads")
    rng = np.random.default_rng(0)
    t = np.arange(250) / 100
    rows = []
    for p in range(24):
        label = "fast" if p % 2 else "slow"
        f = 2.0 if label == "fast" else 0.7
        sig = np.stack([np.sin(2 * np.pi * f * t + k) * (1 + 0.1 * k) for k in range(12)]) + 0.1 * rng.normal(size=(12, 250))
        np.save(root / f"r{p}.npy", sig)
        (root / f"r{p}.json").write_text(json.dumps({"fs": 100, "units": "mV", "leads": list(LEADS)}))
        rows.append({"id": f"r{p}", "patient_id": f"P{p}", "ecg": f"r{p}.npy", "label": label,
                     "split": "train" if p < 14 else "val" if p < 16 else "test"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    torch.manual_seed(0)
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"ecg": ECG}})
    model.save_pretrained(root / "model")
    return root


def test_masked_embedding_equals_encoding_with_leads_zeroed(ecg_setup):
    model = medfm.load_pretrained(ecg_setup / "model").eval()
    df = medfm.data.read_manifest(ecg_setup / "manifest.csv").head(4)
    full = embed_manifest(model, df, "ecg", progress=False)
    with masked_leads(model, "ecg", "I,II") as kept:
        part = embed_manifest(model, df, "ecg", progress=False)
    assert kept == ["I", "II"] and model.adapters["ecg"].collate.__self__ is model.adapters["ecg"]  # restored
    ad = model.adapters["ecg"]
    x = ad.collate([ad.load(ecg_setup / f"r{i}.npy") for i in range(4)])["x"]
    x[:, 2:] = 0
    with torch.no_grad():
        ref = model.encode("ecg", x).numpy()
    np.testing.assert_allclose(part.emb, ref, rtol=1e-4, atol=1e-5)
    assert np.abs(part.emb - full.emb).max() > 1e-3


def test_cli_lead_tables(ecg_setup, capsys):
    out = ecg_setup / "zs"
    rc = main(["zeroshot", "--model", str(ecg_setup / "model"), "--manifest", str(ecg_setup / "manifest.csv"),
               "--modality", "ecg", "--label-column", "label", "--prototypes", "--split", "test", "--out", str(out),
               "--n-boot", "20", "--no-progress", "--leads", "I", "--leads", "limb"])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads((out / "results.json").read_text())
    assert list(rec["lead_sets"]) == ["I", "limb"] and rec["lead_sets"]["limb"]["leads"] == list(LEADS[:6])
    assert "leads/I/macro_auroc" in rec["metrics"]
    assert "## Partial inputs: ECG lead subsets" in (out / "report.md").read_text()
    out2 = ecg_setup / "probe"
    rc = main(["evaluate", "probe", "--model", str(ecg_setup / "model"), "--manifest", str(ecg_setup / "manifest.csv"),
               "--modality", "ecg", "--label-column", "label", "--out", str(out2), "--n-boot", "0", "--shots", "",
               "--knn-k", "3", "--no-progress", "--leads", "precordial"])
    assert rc == 0, capsys.readouterr().err
    rec2 = json.loads((out2 / "results.json").read_text())
    assert 0 <= rec2["metrics"]["leads/precordial/accuracy"] <= 1
