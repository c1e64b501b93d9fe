"""``medfm export``: ONNX (checked with onnxruntime) and TorchScript towers, preprocessing.json, model card."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import medfm
from medfm.cli import main

TOL = 1e-4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = medfm.create_model({"name": "medfm-tiny", "trunk": {"width": 32, "depth": 1, "heads": 2},
                                "modalities": {"xray": {"size": 32}, "ecg": {}, "text": {"max_length": 16}}})
    model.adapters["text"].fit(["no acute cardiopulmonary process", "small left pleural effusion"] * 4)
    model.save_pretrained(d / "model")
    (d / "zs").mkdir()  # an evaluation beside the checkpoint, for the model card
    (d / "zs" / "results.json").write_text(json.dumps({
        "task": "zeroshot-multiclass", "model": {"dir": str(d / "model"), "fingerprint": "x"}, "modality": "xray",
        "n": 10, "manifest": {"sha256": "abc"}, "metrics": {"macro_auroc": 0.75}, "ci": {"macro_auroc": [0.6, 0.9]}}))
    return d, model


def test_onnx_export_matches_pytorch_with_a_dynamic_batch(ckpt, capsys):
    import onnxruntime as ort

    d, model = ckpt
    out = d / "onnx"
    assert main(["export", str(d / "model"), "--format", "onnx", "--out", str(out)]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert files == {"xray": "xray.onnx", "ecg": "ecg.onnx", "text": "text.onnx"}
    pre = json.loads((out / "preprocessing.json").read_text())
    assert pre["towers"]["ecg"]["options"]["fs"] == model.adapters["ecg"].options["fs"]
    assert pre["towers"]["xray"]["inputs"]["x"]["shape"] == [-1, 1, 32, 32]
    assert any(f.startswith("modalities/text/") for f in pre["towers"]["text"]["files"])
    model.eval()
    texts = ["small effusion", "no acute cardiopulmonary process here"]
    tok = model.adapters["text"].tokenize(texts)
    cases = {"xray": [{"x": torch.randn(b, 1, 32, 32)} for b in (1, 3)],
             "ecg": [{"x": torch.randn(b, 12, model.tower("ecg").embedder.input_size[0])} for b in (1, 3)],
             "text": [{"x": tok["x"], "mask": tok["mask"]}]}
    for mod, batches in cases.items():
        sess = ort.InferenceSession(str(out / f"{mod}.onnx"), providers=["CPUExecutionProvider"])
        for inp in batches:
            (got,) = sess.run(None, {k: v.numpy() for k, v in inp.items()})
            with torch.no_grad():
                want = model.encode(mod, inp["x"], inp.get("mask")).numpy()
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= TOL, (mod, np.abs(got - want).max())
    card = (d / "model" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: medfm") and "## Evaluation results" in card
    assert "macro_auroc | 0.7500 | [0.6000, 0.9000]" in card
    assert (out / "README.md").is_file()


def test_torchscript_export_runs_without_medfm_classes(ckpt):
    d, model = ckpt
    out = d / "ts"
    assert main(["export", str(d / "model"), "--format", "torchscript", "--out", str(out), "--modality", "xray"]) == 0
    ts = torch.jit.load(str(out / "xray.pt"))
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert (ts(x) - model.eval().encode("xray", x)).abs().max() <= TOL


def test_export_usage_errors(ckpt, capsys):
    d, _ = ckpt
    assert main(["export", str(d / "model"), "--format", "onnx", "--out", str(d / "x"), "--modality", "ct"]) == 2
    assert "no 'ct' tower" in capsys.readouterr().err


def test_onnx_causal_text_tower_with_other_lengths_and_batches(tmp_path):
    """The open_clip-style text tower (causal mask, end-of-text pooling) keeps a dynamic length in ONNX."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = medfm.create_model({"name": "medfm-tiny", "trunk": {"width": 32, "depth": 1, "heads": 2},
                                "modalities": {"text": {"tokenizer": "open_clip", "max_length": 77}}}).eval()
    model.save_pretrained(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--format", "onnx", "--out", str(tmp_path / "o")]) == 0
    pre = json.loads((tmp_path / "o" / "preprocessing.json").read_text())["towers"]["text"]
    assert pre["options"]["tokenizer"] == "open_clip" and "bpe_simple_vocab_16e6.txt.gz" in " ".join(pre["files"])
    sess = ort.InferenceSession(str(tmp_path / "o" / "text.onnx"), providers=["CPUExecutionProvider"])
    for texts in (["glaucoma"], ["a fundus photograph with moderate diabetic retinopathy", "normal", "drusen"]):
        tok = model.adapters["text"].tokenize(texts)
        (got,) = sess.run(None, {"x": tok["x"].numpy(), "mask": tok["mask"].numpy()})
        with torch.no_grad():
            want = model.encode("text", tok["x"], tok["mask"]).numpy()
        assert np.abs(got - want).max() <= TOL
