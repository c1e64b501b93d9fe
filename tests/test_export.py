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
    card = (out / "README.md").read_text()  # the card goes into --out, rendered from the source folder
    assert card.startswith("---\nlibrary_name: medfm") and "## Evaluation results" in card
    assert "macro_auroc | 0.7500 | [0.6000, 0.9000]" in card


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


def _snapshot(folder):
    """Every name under ``folder`` (folders too) and each file's (mtime, sha256)."""
    import hashlib

    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    files = {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
             for p in folder.rglob("*") if p.is_file()}
    return names, files


def test_export_writes_only_into_out_and_works_from_a_read_only_model(ckpt, tmp_path):
    """Nothing in the source folder is created or changed (checked by hash and mtime, which also holds
    as root, where permission bits do not stop a write); the chmod makes a non-root run fail on a write."""
    import os
    import shutil
    import stat

    d, _ = ckpt
    src = tmp_path / "ro_model"
    shutil.copytree(d / "model", src)
    (src / "README.md").unlink(missing_ok=True)
    before = _snapshot(src)
    modes = {p: p.stat().st_mode for p in [src, *src.rglob("*")]}
    for p in modes:
        p.chmod(stat.S_IMODE(modes[p]) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        if os.geteuid() != 0:  # not root: the permission bits hold, so the source really is read-only
            with pytest.raises(PermissionError):
                (src / "probe").write_text("x")
        out = tmp_path / "exported"
        assert main(["export", str(src), "--format", "torchscript", "--modality", "xray", "--out", str(out)]) == 0
        after = _snapshot(src)
    finally:
        for p, m in modes.items():
            p.chmod(stat.S_IMODE(m))
    assert after == before  # no card (or anything else) written beside the source
    assert (out / "README.md").read_text().startswith("---\nlibrary_name: medfm")
    assert {"xray.pt", "preprocessing.json", "README.md"} <= {p.name for p in out.iterdir()}
