"""``medfm export MODEL_DIR --format onnx|torchscript --out DIR``: one file per tower for deployment."""
from __future__ import annotations

from medfm.cli.common import lazy_run


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export each tower to ONNX or TorchScript, with preprocessing.json and a model card",
        description="One file per tower (<modality>.onnx / .pt) with a dynamic batch size: inputs x (and mask "
                    "for token inputs) as the modality adapter makes them, output the L2-normalised embedding. "
                    "preprocessing.json states the adapter options (spacing, windows, sampling rate, leads, "
                    "sizes, normalisation) and lists the tokenizer files copied beside it.")
    p.add_argument("model_dir", help="checkpoint directory")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--modality", action="append", default=None, help="only this tower (repeatable)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--onnxruntime-fusions", action="store_true",
                   help="rewrite the ONNX towers with onnxruntime's transformer fusions (faster on CPU; the files "
                        "then run on onnxruntime only; kept only where the output is unchanged within 1e-4)")
    p.set_defaults(func=lazy_run("medfm.cli.runners.export:run"))
