"""The tabular modality: fitted statistics and vocabularies, the missing mask, the tower, TIP masked features,
a checkpoint round trip, the label check, and a real {ecg, tabular} run on the shared CinC headers."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import medfm
from medfm.cli import main
from medfm.errors import ConfigError, DataError
from medfm.registry import get_modality
from medfm.modalities.tabular import check_label_not_feature

from conftest import shared_data

torch.set_num_threads(1)


def _rows(n=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rows.append({"id": f"s{i}", "patient_id": f"p{i // 2}", "split": "train", "label": f"c{i % 2}",
                     "age": "" if i % 7 == 0 else str(round(float(rng.normal(60, 12)), 1)),
                     "sex": ["M", "F"][i % 2] if i != 3 else "X-rare",
                     "dx": "I10|E11.9" if i % 3 == 0 else ("I10" if i % 3 == 1 else "N18.3|I10|Z99"),
                     "lab_na": str(135 + i % 9), "lab_k": "" if i % 4 == 0 else str(4 + (i % 5) / 10),
                     "note": "x"})
    return rows


def _fitted(rows, **options):
    a = get_modality("tabular", **{"features": ["age", "sex", "dx", "lab_*"], "codes": ["dx"],
                                   "min_patients": 3, **options})
    cells = [a.source_from_row(r, "tabular") for r in rows]
    a.fit([c for c in cells if c is not None], [r["patient_id"] for r, c in zip(rows, cells) if c is not None])
    return a, cells


def test_fit_statistics_vocabulary_and_missing_mask_by_hand():
    rows = _rows()
    a, cells = _fitted(rows)
    assert a.columns == ["age", "dx", "lab_k", "lab_na", "sex"] and "note" not in a.columns  # not declared
    assert a.kinds == ["num", "codes", "num", "num", "cat"]
    ages = np.array([float(r["age"]) for r in rows if r["age"]])
    mean, std = a.stats["age"]
    assert mean == pytest.approx(ages.mean()) and std == pytest.approx(ages.std())
    # a category of one patient ("X-rare") is not learnt: it reads as sex's unknown token
    assert set(a.vocab["sex"]) == {"F", "M"} and set(a.vocab["dx"]) == {"E11.9", "I10", "N18.3", "Z99"}
    rec = a.read(cells[0])  # age missing, lab_k missing (i % 4 == 0), dx "I10|E11.9"
    f = {c: i for i, c in enumerate(a.columns)}
    assert rec.meta["mask"].tolist() == [0, 1, 0, 1, 1]
    assert rec.data[f["age"]].tolist() == [0.0] * rec.data.shape[1]  # nothing imputed: no token at all
    assert sorted(rec.data[f["dx"], 1:3].tolist()) == sorted([a.vocab["dx"]["I10"], a.vocab["dx"]["E11.9"]])
    assert rec.data[f["lab_na"], 0] == pytest.approx((135 - a.stats["lab_na"][0]) / a.stats["lab_na"][1], rel=1e-5)
    rare = a.read(cells[3])
    assert rare.data[f["sex"], 1] == a.ranges[f["sex"]][0] and rare.meta["n_unknown_values"] == 1
    assert rec.data[f["sex"], 1] == a.vocab["sex"]["M"]
    # a measured 0 and a missing value differ only by the mask
    zero = a.read({**cells[0], "age": str(mean)})
    assert zero.data[f["age"], 0] == 0.0 and zero.meta["mask"][f["age"]] == 1


def test_rows_without_features_labels_and_bad_values():
    rows = _rows()
    a, _ = _fitted(rows)
    assert a.source_from_row({"id": "z", "age": "", "sex": "unknown", "dx": None, "lab_na": "NA"}, "tabular") is None
    with pytest.raises(DataError, match="lab_na"):
        a.read({"lab_na": "high", "age": "50"}, sample_id="s9")
    with pytest.raises(ConfigError, match="label column 'lab_k'"):
        check_label_not_feature(a, ["lab_k"])
    check_label_not_feature(a, ["label"])  # label / id / patient_id / split are never features
    wide = get_modality("tabular", features=["*"], exclude=["note"], min_patients=3)
    wide.fit([wide.source_from_row(r, "t") for r in rows], [r["patient_id"] for r in rows])
    assert not {"label", "id", "patient_id", "split", "note"} & set(wide.columns)
    with pytest.raises(ConfigError, match="features"):
        get_modality("tabular").fit([{"age": "1"}])  # built with defaults (as every adapter), fitted only with features


def test_tower_ignores_missing_features_and_checkpoint_round_trip(tmp_path):
    rows = _rows()
    a, cells = _fitted(rows)
    torch.manual_seed(0)
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"tabular": a.config()}}, adapters={"tabular": a})
    model.eval()
    items = [a.load(c) for c in cells[:8]]
    batch = a.collate(items)
    z = model.encode("tabular", batch["x"], batch["mask"])
    x2 = batch["x"].clone()
    x2[batch["mask"] == 0] = 7.0  # garbage where a feature is missing
    torch.testing.assert_close(model.encode("tabular", x2, batch["mask"]), z)
    x3 = batch["x"].clone()
    x3[batch["mask"] == 1] += 1.0  # a measured value changes the embedding
    assert (model.encode("tabular", x3, batch["mask"]) - z).abs().max() > 1e-4
    model.save_pretrained(tmp_path / "ckpt")
    state = json.loads((tmp_path / "ckpt" / "modalities" / "tabular" / "tabular_features.json").read_text())
    assert state["numeric"]["age"]["mean"] == pytest.approx(a.stats["age"][0])
    assert state["vocabulary_rule"]["min_patients"] == 3 and "X-rare" not in json.dumps(state)
    loaded = medfm.load_pretrained(tmp_path / "ckpt").eval()
    b2 = loaded.adapters["tabular"].collate([loaded.adapters["tabular"].load(c) for c in cells[:8]])
    torch.testing.assert_close(loaded.encode("tabular", b2["x"], b2["mask"]), z)


def test_masked_features_learn_a_dependency_between_columns():
    """lab_b = 2 · lab_a and grp = sign(lab_a): masked reconstruction falls far below chance after training."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(256):
        v = float(rng.normal())
        rows.append({"patient_id": f"p{i}", "lab_a": v, "lab_b": 2 * v, "grp": "hi" if v > 0 else "lo",
                     "noise": float(rng.normal())})
    a = get_modality("tabular", features=["lab_*", "grp", "noise"], min_patients=2)
    a.fit([a.source_from_row(r, "t") for r in rows], [r["patient_id"] for r in rows])
    torch.manual_seed(0)
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"tabular": a.config()}}, adapters={"tabular": a})
    batch = a.collate([a.load(a.source_from_row(r, "t")) for r in rows])
    tower = model.tower("tabular")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for step in range(150):
        out = tower.masked_feature_loss(batch["x"], batch["mask"], mask_ratio=0.25)
        first = first if first is not None else out["loss"].item()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    # evaluate: mask lab_b only and predict it (its standardised target has variance 1: chance MSE ≈ 1)
    torch.manual_seed(5)
    tower.eval()
    with torch.no_grad():
        hide = torch.zeros_like(batch["mask"], dtype=torch.bool)
        hide[:, a.columns.index("lab_b")] = True
        h = tower.trunk(tower.tokens(batch["x"], hide), batch["mask"])
        pred = tower.num_head(h[:, a.columns.index("lab_b")]).squeeze(-1)
        mse = float(((pred - batch["x"][:, a.columns.index("lab_b"), 0]) ** 2).mean())
    assert mse < 0.25, mse


def _header_age_sex(hea: Path):
    text = hea.read_text()
    age = re.search(r"^# Age:\s*(\S+)", text, re.M).group(1)
    sex = re.search(r"^# Sex:\s*(\S+)", text, re.M).group(1)
    return age, sex


def test_real_cinc_headers_age_sex_and_an_ecg_tabular_run(tmp_path):
    """medfm manifest reads # Age / # Sex / # Dx of the real headers; the tabular adapter's fitted statistics
    match a hand parse; {ecg, tabular} pretrain in one run, some rows lacking one modality."""
    src = shared_data("ecg", "cinc2021_12lead")
    heas = sorted(src.glob("*.hea"))
    root = tmp_path / "data"
    root.mkdir()
    for h in heas:
        for f in (h, h.with_suffix(".mat")):
            os.symlink(f, root / f.name)
    out = tmp_path / "cohort" / "cohort.csv"
    assert main(["manifest", str(root), "--out", str(out), "--salt", "a salt of sixteen chars or more",
                 "--split", "train=0.8,test=0.2", "--seed", "1"]) == 0
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    hand = {h.stem: _header_age_sex(h) for h in heas}
    assert {Path(e).stem: (a, s) for e, a, s in zip(df["ecg"], df["age"], df["sex"])} == hand
    # drop a few ECGs and a few ages, so that both modalities and one feature go missing
    df.loc[df.index[:5], "ecg"] = ""
    df.loc[df.index[5:10], "age"] = ""
    df.to_csv(out, index=False)
    train = df[df["split"] == "train"]
    ages = np.array([float(v) for v in train["age"] if v])
    cfg = {"model": {"name": "medfm-tiny", "modalities": {
               "ecg": {"fs": 100, "duration": 10.0, "patch_size": 50},
               "tabular": {"features": ["age", "sex", "dx"], "codes": ["dx"], "min_patients": 2}}},
           "data": {"manifest": str(out), "batch_size": 16, "split": "train", "confine_paths": False},
           "objectives": [{"name": "clip"}, {"name": "masked", "weight": 0.5},
                          {"name": "masked_features", "weight": 0.5, "mask_ratio": 0.3}],
           "optim": {"lr": 1e-3, "warmup_steps": 1},
           "train": {"max_steps": 3, "checkpoint_every": 0, "log_every": 1, "tensorboard": False, "progress": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["pretrain", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out")]) == 0
    metrics = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(np.isfinite(m["loss"]) for m in metrics)
    model = medfm.load_pretrained(tmp_path / "out")
    tab = model.adapters["tabular"]
    assert tab.stats["age"][0] == pytest.approx(ages.mean()) and tab.stats["age"][1] == pytest.approx(ages.std())
    assert set(tab.vocab["sex"]) == {"Female", "Male"}


def test_features_from_a_joined_table(tmp_path):
    table = tmp_path / "labs.csv"
    pd.DataFrame({"patient_id": ["p1", "p2", "p3"], "crp": ["3.5", "", "10"], "smoker": ["yes", "no", "yes"]}
                 ).to_csv(table, index=False)
    a = get_modality("tabular", features=["crp", "smoker"], table=str(table), min_patients=1)
    rows = [{"id": "a", "patient_id": "p1"}, {"id": "b", "patient_id": "p2"}, {"id": "c", "patient_id": "p3"},
            {"id": "d", "patient_id": "p9"}]
    cells = [a.source_from_row(r, "tabular") for r in rows]
    assert cells[0] == {"crp": "3.5", "smoker": "yes"} and cells[3] is None  # p9 is not in the table
    a.fit(cells[:3], ["p1", "p2", "p3"])
    assert a.stats["crp"][0] == pytest.approx(6.75) and a.read(cells[1]).meta["mask"].tolist() == [0, 1]
    pd.DataFrame({"patient_id": ["p1", "p1"], "crp": ["1", "2"]}).to_csv(tmp_path / "dup.csv", index=False)
    b = get_modality("tabular", features=["crp"], table=str(tmp_path / "dup.csv"))
    with pytest.raises(DataError, match="dup.csv.*repeated|repeated.*dup.csv"):
        b.source_from_row(rows[0], "tabular")
