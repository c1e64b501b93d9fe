"""``--baseline tabular``: the design matrix by hand, the probe beside the model, trees, and the label check."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import medfm
from medfm.cli import main
from medfm.registry import get_modality
from medfm.evaluation.tabular_baseline import gradient_boosted_scores, tabular_design

torch.set_num_threads(1)


def _cohort(n=120, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        v = float(rng.normal())
        rows.append({"id": f"s{i}", "patient_id": f"p{i}", "split": "test" if i % 4 == 0 else "train",
                     "lab_a": "" if i % 10 == 3 else f"{v:.4f}", "sex": ["F", "M"][i % 2],
                     "dx": "I10|E11.9" if v > 0.5 else "I10", "label": "hi" if v > 0 else "lo",
                     "grp": "hi" if v > 0 else "lo"})
    return pd.DataFrame(rows)


def _adapter(df, **options):
    a = get_modality("tabular", **{"features": ["lab_a", "sex", "dx"], "codes": ["dx"], "min_patients": 2, **options})
    train = df[df["split"] == "train"].to_dict("records")
    a.fit([a.source_from_row(r, "t") for r in train], [r["patient_id"] for r in train])
    return a


def test_design_matrix_by_hand():
    df = _cohort()
    a = _adapter(df)
    recs = [a.read(a.source_from_row(r, "t")) for r in df.to_dict("records")[:4]]
    X, names = tabular_design(recs)
    # columns: dx (unknown, E11.9, I10) + missing, lab_a + missing, sex (unknown, F, M) + missing
    assert names == ["dx=0", "dx=1", "dx=2", "dx:missing", "lab_a", "lab_a:missing",
                     "sex=0", "sex=1", "sex=2", "sex:missing"]
    mean, std = a.stats["lab_a"]
    for r, row in enumerate(df.to_dict("records")[:3]):
        codes = row["dx"].split("|")
        assert X[r, 0:3].tolist() == [0.0, float("E11.9" in codes), 1.0]
        assert X[r, 4] == pytest.approx((float(row["lab_a"]) - mean) / std, rel=1e-5) and X[r, 5] == 0
        assert X[r, 6:9].tolist() == ([0.0, 1.0, 0.0] if row["sex"] == "F" else [0.0, 0.0, 1.0])
    missing = a.read(a.source_from_row(df.to_dict("records")[3], "t"))  # lab_a missing (i % 10 == 3)
    Xm, _ = tabular_design([missing])
    Xn, _ = tabular_design([missing], nan_missing=True)
    assert Xm[0, 4] == 0.0 and Xm[0, 5] == 1.0 and np.isnan(Xn[0, 4])


def test_trees_on_the_same_features():
    df = _cohort(200)
    a = _adapter(df)
    X, _ = tabular_design([a.read(a.source_from_row(r, "t")) for r in df.to_dict("records")], nan_missing=True)
    y = (df["label"] == "hi").to_numpy().astype(int)
    tr = (df["split"] == "train").to_numpy()
    p = gradient_boosted_scores(X[tr], y[tr], X[~tr])
    ok = ~np.isnan(X[~tr, 4])  # rows whose deciding value was measured
    assert ((p[:, 1] > 0.5).astype(int) == y[~tr])[ok].mean() > 0.9


def test_probe_with_tabular_baseline_and_label_feature_refused(tmp_path, capsys):
    df = _cohort()
    a = _adapter(df)
    torch.manual_seed(0)
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"tabular": a.config()}}, adapters={"tabular": a})
    model.save_pretrained(tmp_path / "m")
    df.to_csv(tmp_path / "cohort.csv", index=False)
    out = tmp_path / "eval"
    rc = main(["evaluate", "probe", "--model", str(tmp_path / "m"), "--manifest", str(tmp_path / "cohort.csv"),
               "--out", str(out), "--modality", "tabular", "--label-column", "label", "--baseline", "tabular",
               "--n-boot", "0", "--shots", "5", "--few-shot-seeds", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    text = json.dumps(res)
    assert "baseline/tabular/" in text
    metrics = res.get("metrics", res)
    acc = {k: v for k, v in metrics.items() if k.startswith("baseline/tabular/") and "linear" in k and "acc" in k}
    assert acc and max(float(v["value"] if isinstance(v, dict) else v) for v in acc.values()) > 0.8, acc
    # the label is one of the model's tabular features: refused before anything is embedded
    b = _adapter(df, features=["lab_a", "sex", "dx", "grp"])
    medfm.create_model({"name": "medfm-tiny", "modalities": {"tabular": b.config()}},
                       adapters={"tabular": b}).save_pretrained(tmp_path / "leaky")
    rc = main(["evaluate", "probe", "--model", str(tmp_path / "leaky"), "--manifest", str(tmp_path / "cohort.csv"),
               "--out", str(tmp_path / "eval2"), "--modality", "tabular", "--label-column", "grp",
               "--n-boot", "0", "--no-progress"])
    assert rc == 2 and "'grp' is a feature" in capsys.readouterr().err


def test_finetune_on_table_features_and_label_feature_refused(tmp_path, capsys):
    import yaml

    df = _cohort()
    a = _adapter(df)
    torch.manual_seed(0)
    medfm.create_model({"name": "medfm-tiny", "modalities": {"tabular": a.config()}},
                       adapters={"tabular": a}).save_pretrained(tmp_path / "m")
    df.to_csv(tmp_path / "c.csv", index=False)  # no 'tabular' column: the modality reads the feature columns
    cfg = {"base": str(tmp_path / "m"), "modalities": ["tabular"], "task": {"kind": "multiclass", "label_column": "label"},
           "method": "full", "data": {"manifest": str(tmp_path / "c.csv"), "batch_size": 32, "split_column": "split"},
           "optim": {"lr": 3e-3, "epochs": 6, "patience": 20, "monitor": "auroc"}}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["finetune", str(tmp_path / "ft.yaml"), "--out", str(tmp_path / "out")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["test_macro_auroc"] > 0.8  # the label is sign(lab_a): learnable from the features
    (tmp_path / "leak.yaml").write_text(yaml.safe_dump({**cfg, "task": {"kind": "multiclass", "label_column": "lab_a"}}))
    assert main(["finetune", str(tmp_path / "leak.yaml"), "--out", str(tmp_path / "out2")]) == 2
    assert "'lab_a' is a feature" in capsys.readouterr().err
