"""One column rule: train with renamed columns, then every evaluator reads the manifest without flags;
multi-label evaluation from 0/1 columns; `evaluate compare`."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from medfm.cli import main
from medfm.data.columns import parse_column_specs, recorded_columns
from medfm.errors import UsageError
from medfm.metrics import delong_test

N_PATIENTS = 24


def _signal(rng, up):
    t = np.linspace(-1, 1, 32)
    base = t if up else -t
    x = np.stack([base, base ** 2]) + 0.05 * rng.normal(size=(2, 32))
    return ";".join(" ".join(f"{v:.4f}" for v in ch) for ch in x)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("columns")
    rng = np.random.default_rng(0)
    rows = []
    for p in range(N_PATIENTS):
        up = p % 2 == 0
        sig = _signal(rng, up)
        rows.append({"id": f"s{p}", "patient_id": f"P{p:02d}", "split": "test" if p >= 16 else "train",
                     "wave": sig, "report": "rising signal" if up else "falling signal",
                     "label": "up" if up else "down", "is_up": int(up), "is_down": int(not up),
                     "order_name": "Up" if up else "Down", "species_name": f"sp{p % 4}"})
    manifest = root / "renamed.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    cfg = {"model": {"name": "medfm-tiny", "modalities": {
               "toy": {}, "text": {"vocab_size": 60, "min_frequency": 1, "max_length": 8,
                                   "hf_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                                 "intermediate_size": 64}}}},
           "data": {"manifest": str(manifest), "batch_size": 8, "split": "train"},
           "objectives": [{"name": "clip", "weight": 1.0}],
           "optim": {"lr": 3e-3, "warmup_steps": 1},
           "train": {"max_steps": 4, "checkpoint_every": 0, "tensorboard": False, "progress": False}}
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["pretrain", str(root / "run.yaml"), "--out", str(root / "model"),
                 "--column", "toy=wave", "--column", "text=report"]) == 0
    prompts = root / "prompts.yaml"
    prompts.write_text("task: multiclass\ntemplates: ['{label} signal']\n"
                       "classes:\n  up: {label: rising}\n  down: {label: falling}\n")
    ml = root / "ml_prompts.yaml"
    ml.write_text("task: multilabel\ntemplates: ['{label} signal']\nnegative_templates: ['no {label} signal']\n"
                  "classes:\n  is_up: {label: rising}\n  is_down: {label: falling}\n")
    return {"root": root, "manifest": manifest, "model": root / "model", "prompts": prompts, "ml": ml,
            "df": pd.DataFrame(rows)}


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_parse_column_specs():
    assert parse_column_specs(["text=report", "ecg = path"]) == {"text": "report", "ecg": "path"}
    assert parse_column_specs(["report"], default_modality="text") == {"text": "report"}
    with pytest.raises(UsageError):
        parse_column_specs(["report"])
    with pytest.raises(UsageError):
        parse_column_specs(["text=a", "text=b"])


def test_checkpoint_records_the_mapping(trained):
    assert recorded_columns(trained["model"]) == {"toy": "wave", "text": "report"}
    cfg = json.loads((trained["model"] / "config.json").read_text())
    assert cfg["data_columns"] == {"toy": "wave", "text": "report"}


def test_every_evaluator_without_column_flags(trained, capsys, tmp_path):
    m, man = trained["model"], trained["manifest"]
    rc, o, err = _run(capsys, "embed", "--model", m, "--manifest", man, "--modality", "toy", "--out",
                      tmp_path / "e.safetensors", "--no-progress")
    assert rc == 0, err
    assert f"wrote {N_PATIENTS} toy embeddings" in o
    rc, o, err = _run(capsys, "zeroshot", "--model", m, "--manifest", man, "--modality", "toy", "--label-column",
                      "label", "--prompts", trained["prompts"], "--out", tmp_path / "zs", "--n-boot", 10,
                      "--no-progress")
    assert rc == 0, err
    rc, o, err = _run(capsys, "zeroshot", "--model", m, "--manifest", man, "--modality", "toy", "--label-column",
                      "label", "--prototypes", "--split", "test", "--out", tmp_path / "proto", "--n-boot", 10,
                      "--no-progress")
    assert rc == 0, err
    rc, o, err = _run(capsys, "index", "build", "--model", m, "--manifest", man, "--modality", "toy", "--out",
                      tmp_path / "idx", "--no-progress")
    assert rc == 0, err
    rc, o, err = _run(capsys, "evaluate", "retrieval", "--model", m, "--manifest", man, "--query-modality", "toy",
                      "--gallery-modality", "text", "--out", tmp_path / "ret", "--n-boot", 10, "--no-progress")
    assert rc == 0, err
    rec = json.loads((tmp_path / "ret" / "results.json").read_text())
    assert rec["n"] == N_PATIENTS and rec["n_gallery"] == N_PATIENTS  # the text came from 'report'
    rc, o, err = _run(capsys, "evaluate", "probe", "--model", m, "--manifest", man, "--modality", "toy",
                      "--label-column", "label", "--out", tmp_path / "probe", "--n-boot", 10, "--shots", "1",
                      "--few-shot-seeds", 1, "--no-progress")
    assert rc == 0, err
    rc, o, err = _run(capsys, "evaluate", "bioscan", "--model", m, "--manifest", man, "--query-modality", "toy",
                      "--query-split", "test", "--key-split", "train", "--ranks", "order_name,species_name",
                      "--out", tmp_path / "bio", "--no-progress")
    assert rc == 0, err
    # a flag overrides the recorded mapping: naming a column that does not exist fails, naming it
    rc, o, err = _run(capsys, "embed", "--model", m, "--manifest", man, "--modality", "toy", "--column", "nope",
                      "--out", tmp_path / "x.safetensors", "--no-progress")
    assert rc == 1 and "nope" in err


def test_multilabel_from_binary_columns_matches_pipe_column(trained, capsys, tmp_path):
    m, man = trained["model"], trained["manifest"]
    df = trained["df"].copy()
    df["findings"] = ["is_up" if u else "is_down" for u in df["is_up"]]
    piped = tmp_path / "piped.csv"
    df.to_csv(piped, index=False)
    base = ["--model", m, "--modality", "toy", "--prompts", trained["ml"], "--n-boot", 10, "--no-progress"]
    rc, o, err = _run(capsys, "zeroshot", *base, "--manifest", man, "--label-columns", "is_up,is_down",
                      "--out", tmp_path / "a")
    assert rc == 0, err
    rc, o, err = _run(capsys, "zeroshot", *base, "--manifest", piped, "--label-column", "findings",
                      "--out", tmp_path / "b")
    assert rc == 0, err
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["task"] == "zeroshot-multilabel" and a["label_columns"] == ["is_up", "is_down"]
    assert a["metrics"]["macro_auroc"] == pytest.approx(b["metrics"]["macro_auroc"])
    rc, o, err = _run(capsys, "evaluate", "probe", "--model", m, "--manifest", man, "--modality", "toy",
                      "--label-columns", "is_up,is_down", "--out", tmp_path / "mlp", "--n-boot", 10, "--no-progress")
    assert rc == 0, err
    rec = json.loads((tmp_path / "mlp" / "results.json").read_text())
    assert rec["task"] == "probe-multilabel" and rec["classes"] == ["is_up", "is_down"]
    assert rec["metrics"]["linear/macro_auroc"] > 0.8  # up vs down ramps are far apart
    bad = tmp_path / "bad.csv"
    df.assign(is_up=["maybe"] * len(df)).to_csv(bad, index=False)
    rc, o, err = _run(capsys, "zeroshot", *base, "--manifest", bad, "--label-columns", "is_up,is_down",
                      "--out", tmp_path / "c")
    assert rc == 1 and "is_up" in err and "not 0/1" in err


def test_compare_delong_and_bootstrap(trained, capsys, tmp_path):
    m, man = trained["model"], trained["manifest"]
    common = ["--model", m, "--manifest", man, "--modality", "toy", "--label-column", "label", "--n-boot", 10,
              "--no-progress"]
    assert _run(capsys, "zeroshot", *common, "--prompts", trained["prompts"], "--out", tmp_path / "text")[0] == 0
    assert _run(capsys, "zeroshot", *common, "--prototypes", "--split", "test", "--out", tmp_path / "proto")[0] == 0
    rc, o, err = _run(capsys, "evaluate", "compare", tmp_path / "text", tmp_path / "proto", "--n-boot", 200,
                      "--out", tmp_path / "cmp")
    assert rc == 0, err
    res = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert res["n"] == 8  # the common samples: the test split
    # DeLong agrees with the library function on the aligned samples
    a = np.load(tmp_path / "text" / "predictions.npz")
    b = np.load(tmp_path / "proto" / "predictions.npz")
    ia = {i: k for k, i in enumerate(a["ids"].tolist())}
    ib = {i: k for k, i in enumerate(b["ids"].tolist())}
    ids = [i for i in a["ids"].tolist() if i in ib]
    y = (a["y_true"][[ia[i] for i in ids]] == 0).astype(int)
    up_b = b["classes"].tolist().index("up")  # the two results order their classes differently
    ref = delong_test(y, a["scores"][[ia[i] for i in ids], 0], b["scores"][[ib[i] for i in ids], up_b])
    got = res["delong"]["auroc/up"]
    assert got["p_value"] == pytest.approx(ref["p_value"]) and got["diff"] == pytest.approx(-ref["diff"])
    assert "| accuracy |" in (tmp_path / "cmp" / "comparison.md").read_text()
    # a result against itself: zero difference, p = 1
    rc, o, err = _run(capsys, "evaluate", "compare", tmp_path / "text", tmp_path / "text", "--n-boot", 50,
                      "--out", tmp_path / "same")
    same = json.loads((tmp_path / "same" / "comparison.json").read_text())
    assert all(v["diff"] == 0 and v["p_value"] == 1.0 for v in same["metrics"].values())
    # different tasks are refused
    assert _run(capsys, "evaluate", "retrieval", "--model", m, "--manifest", man, "--query-modality", "toy",
                "--gallery-modality", "text", "--out", tmp_path / "ret", "--n-boot", 0, "--no-progress")[0] == 0
    rc, o, err = _run(capsys, "evaluate", "compare", tmp_path / "text", tmp_path / "ret")
    assert rc == 1 and "different tasks" in err
