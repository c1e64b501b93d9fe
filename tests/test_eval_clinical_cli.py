"""End-to-end: ``medfm evaluate probe --calibrate --subgroups --curve``, ``medfm zeroshot`` with several prompt
sets, ``--calibrate`` and ``--subgroups``, and ``medfm evaluate compare`` on the new metrics, on a tiny random
model (conftest's ``toy`` modality and the real ``text`` adapter)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import medfm
from medfm.cli import main
from medfm.evaluation import calibration as cal
from medfm.evaluation.compare import load_predictions

N_PATIENTS = 40


def _signal(rng, label, noise):
    t = np.linspace(-1, 1, 32)
    base = t if label == "up" else -t
    x = np.stack([base, base ** 2]) + noise * rng.normal(size=(2, 32))
    return ";".join(" ".join(f"{v:.4f}" for v in ch) for ch in x)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("clinical")
    rng = np.random.default_rng(0)
    rows = []
    for p in range(N_PATIENTS):
        for v in range(2):
            label = "up" if rng.random() < 0.5 else "down"
            split = "train" if p < 24 else "val" if p < 30 else "test"
            rows.append({"id": f"s{p}_{v}", "patient_id": f"P{p:02d}", "split": split,
                         "toy": _signal(rng, label, 0.3 + 1.5 * (p % 2)), "label": label,
                         "sex": "F" if p % 2 == 0 else "M", "age": 25 + p})
    df = pd.DataFrame(rows)
    manifest = root / "manifest.csv"
    df.to_csv(manifest, index=False)
    texts = ["rising signal", "falling signal", "going up", "going down", "up", "down"]
    torch.manual_seed(0)
    text = medfm.get_modality("text", vocab_size=80, min_frequency=1, max_length=8,
                              hf_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                         "intermediate_size": 64})
    text.fit(texts)
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"toy": {}}}, adapters={"text": text})
    model.save_pretrained(root / "model")
    sets = root / "sets"
    sets.mkdir()
    (sets / "a.yaml").write_text("name: plain\ntask: multiclass\nclasses:\n  up: [rising signal]\n  down: [falling signal]\n")
    (sets / "b.yaml").write_text("name: words\ntask: multiclass\nclasses:\n  down: [going down]\n  up: [going up]\n")
    return {"root": root, "manifest": manifest, "df": df, "model": root / "model", "sets": sets}


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_probe_calibration_subgroups_and_curve(setup, capsys):
    out = setup["root"] / "probe"
    rc, o, err = _run(capsys, "evaluate", "probe", "--model", setup["model"], "--manifest", setup["manifest"],
                      "--modality", "toy", "--label-column", "label", "--out", out, "--n-boot", 30, "--shots", "",
                      "--knn-k", 3, "--no-progress", "--calibrate", "--threshold", "sensitivity:0.8",
                      "--subgroups", "sex,age:0,56,200", "--min-subgroup-size", 8, "--curve", "--curve-ns", "1,2,5,all",
                      "--curve-seeds", 2)
    assert rc == 0, err
    rec = json.loads((out / "results.json").read_text())
    m, ci = rec["metrics"], rec["ci"]
    # calibration of the linear probe's test probabilities, reproduced from predictions.npz
    pred = load_predictions(out)
    assert m["linear/calibration/ece"] == pytest.approx(cal.expected_calibration_error(pred["y_true"], pred["scores"]))
    assert m["linear/calibration/ece_scaled"] == pytest.approx(
        cal.expected_calibration_error(pred["y_true"], pred["scores_scaled"]))
    t = rec["calibration"]["thresholds"]["up"]
    rates = cal.binary_rates(pred["y_true"] == 1, pred["scores"][:, 1], t)
    assert m["linear/threshold/up/sensitivity"] == pytest.approx(rates["sensitivity"])
    assert "linear/threshold/up/npv" in ci and rec["calibration"]["n_val"] == 12
    # subgroups: sex (test: 5 F and 5 M patients, 2 rows each) and age bands (test ages 55-64: [0, 56) has 2 rows)
    sub = rec["subgroups"]
    assert set(sub["sex"]["groups"]) == {"F", "M"} and sub["sex"]["groups"]["F"]["n"] == 10
    assert sub["age"]["groups"]["[0, 56)"] == {"n": 2, "n_patients": 1, "too_small": True}
    assert sub["age"]["groups"]["[56, 200)"]["n"] == 18
    assert "linear/subgroup/sex/gap/accuracy" in m
    # the curve: model, its random-weight twin; the crossover verdict is in the record and the report
    le = rec["label_efficiency"]
    assert le["ns"] == [1, 2, 5, "all"] and set(le["curves"]) == {"model", "random weights"}
    assert "random weights" in le["crossover"] and "curve/crossover_n/random weights" in m
    report = (out / "report.md").read_text()
    for text in ("## Calibration", "## Label efficiency", "## Subgroups by `sex`", "too small", "reliability.png",
                 "label_efficiency.png"):
        assert text in report
    assert (out / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    assert "label efficiency: random weights" in o


def test_zeroshot_prompt_sets_calibration_and_compare(setup, capsys):
    out = setup["root"] / "zs"
    rc, o, err = _run(capsys, "zeroshot", "--model", setup["model"], "--manifest", setup["manifest"], "--modality",
                      "toy", "--label-column", "label", "--prompts", setup["sets"], "--split", "test", "--out", out,
                      "--n-boot", 30, "--no-progress", "--calibrate", "--subgroups", "sex", "--min-subgroup-size", 5)
    assert rc == 0, err
    rec = json.loads((out / "results.json").read_text())
    m = rec["metrics"]
    ps = rec["prompt_sensitivity"]
    assert ps["sets"] == ["plain", "words"]
    accs = [m["prompts/plain/accuracy"], m["prompts/words/accuracy"]]
    assert m["prompts/spread/accuracy/mean"] == pytest.approx(np.mean(accs))
    assert m["prompts/spread/accuracy/sd"] == pytest.approx(np.std(accs, ddof=1))
    assert rec["prompt_set"] == "ensemble" and rec["calibration"]["n_val"] == 12
    assert "## Prompt sensitivity" in (out / "report.md").read_text()
    # a second run with one set, then the paired comparison covers ECE and the calibrated ECE
    out2 = setup["root"] / "zs_one"
    rc, o, err = _run(capsys, "zeroshot", "--model", setup["model"], "--manifest", setup["manifest"], "--modality",
                      "toy", "--label-column", "label", "--prompts", setup["sets"] / "a.yaml", "--split", "test",
                      "--out", out2, "--n-boot", 0, "--no-progress", "--calibrate")
    assert rc == 0, err
    assert json.loads((out2 / "results.json").read_text())["metrics"]["accuracy"] == pytest.approx(accs[0])
    rc, o, err = _run(capsys, "evaluate", "compare", out2, out, "--n-boot", 50)
    assert rc == 0, err
    comp = json.loads((out / "comparison.json").read_text())
    assert {"ece", "calibrated/ece"} <= set(comp["metrics"])
    a, b = load_predictions(out2), load_predictions(out)
    assert comp["metrics"]["ece"]["diff"] == pytest.approx(
        cal.expected_calibration_error(b["y_true"], b["scores"]) - cal.expected_calibration_error(a["y_true"], a["scores"]))


def test_prompt_sets_must_match(setup, capsys):
    bad = setup["root"] / "bad.yaml"
    bad.write_text("name: other\ntask: multiclass\nclasses:\n  up: [rising]\n  sideways: [flat]\n")
    rc, _, err = _run(capsys, "zeroshot", "--model", setup["model"], "--manifest", setup["manifest"], "--modality",
                      "toy", "--label-column", "label", "--prompts", setup["sets"] / "a.yaml", "--prompts", bad,
                      "--out", setup["root"] / "x", "--no-progress")
    assert rc != 0 and "does not match" in err
