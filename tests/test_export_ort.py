"""``medfm export --onnxruntime-fusions``: the towers rewritten with onnxruntime's transformer fusions give
PyTorch's embeddings (≤ 1e-4) with fused kernels in the graph; the session helper sets its options."""
from __future__ import annotations

import json

import numpy as np
import onnx
import torch

import medfm
from medfm.cli import main
from medfm.export_ort import ort_session

TOL = 1e-4


def test_fused_onnx_matches_pytorch_and_holds_fused_kernels(tmp_path, capsys):
    torch.manual_seed(0)
    model = medfm.create_model({"name": "medfm-tiny", "trunk": {"width": 32, "depth": 2, "heads": 2},
                                "modalities": {"xray": {"size": 32}, "ecg": {}}}).eval()
    model.save_pretrained(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--format", "onnx", "--out", str(tmp_path / "o"),
                 "--onnxruntime-fusions"]) == 0
    capsys.readouterr()
    pre = json.loads((tmp_path / "o" / "preprocessing.json").read_text())
    for mod, x in (("xray", torch.randn(3, 1, 32, 32)),
                   ("ecg", torch.randn(2, 12, model.tower("ecg").embedder.input_size[0]))):
        path = tmp_path / "o" / f"{mod}.onnx"
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert "SkipLayerNormalization" in ops  # residual + LayerNorm fused: not in a plain export
        assert pre["towers"][mod]["runtime"]["requires"] == "onnxruntime"
        assert pre["towers"][mod]["runtime"]["fused"]["SkipLayerNormalization"] >= 2
        sess = ort_session(path, threads=1)
        (got,) = sess.run(None, {"x": x.numpy()})
        with torch.no_grad():
            want = model.encode(mod, x).numpy()
        assert np.abs(got - want).max() <= TOL
        assert sess.get_session_options().intra_op_num_threads == 1
    assert not list((tmp_path / "o").glob("*.fused.onnx"))  # the temporary file is gone
