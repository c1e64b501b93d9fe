"""Export a checkpoint's towers for deployment: ONNX or TorchScript, one file per tower.

Each file maps the tensors a modality adapter produces to the model's embedding::

    <modality>.onnx | <modality>.pt     inputs  x (B, ...) [+ mask (B, L) int64 for token inputs]
                                        output  embedding (B, embed_dim) float32, L2-normalised

with a dynamic batch dimension (and a dynamic sequence length for token inputs), plus
``preprocessing.json`` — what the adapter does to a file before the tower: its inference
``options`` (spacing, HU windows, sampling rate, leads, sizes, normalisation) apart from the
``training_augmentation`` options that act only in training; ``preprocessing``, the eval-mode
steps as data where the adapter states them (reader, colour conversion, interpolation and
antialiasing, crop/pad rule, value scaling, dtype: X-ray/fundus images and ECG records); the
tokenizer files copied next to it; input shapes and dtypes — and the model's ``logit_scale``,
so a deployment can reproduce the pipeline without medfm (``tests/test_clients.py`` does, with
numpy, Pillow, torch's ``interpolate``, scipy and wfdb). The source checkpoint is named by
folder and file hashes (``model``), never by a path of the writing machine.
"""
from __future__ import annotations

import inspect
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .card import render_model_card
from .errors import UsageError
from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, adapter_dir, weight_files
from .finetune.model import FineTunedModel
from .io import atomic_write_text, hash_file, write_json
from .export_ort import fuse_for_onnxruntime
from .pretrained import load_pretrained

log = logging.getLogger("medfm.export")

FORMATS = ("onnx", "torchscript")


class TowerEncoder(nn.Module):
    """One modality of a model as a plain module: ``(x[, mask]) → (B, embed_dim)`` L2-normalised."""

    def __init__(self, model: nn.Module, modality: str):
        super().__init__()
        self.tower = model.tower(modality)
        self.projection = model.projections[modality]

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if getattr(self.tower, "pools_in_forward", False):  # a library tower pools (and heads) its own way
            pooled = self.tower(x, mask)
        else:
            pooled = self.tower.pool(self.tower.forward_features(x, mask), mask)
        return F.normalize(self.projection(pooled), dim=-1)


def example_inputs(model: nn.Module, modality: str, batch: int = 2) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Inputs of the configured size for ``modality`` and their description (shape with -1 for dynamic axes)."""
    tower = model.tower(modality)
    emb = getattr(tower, "embedder", None)
    if emb is not None and hasattr(emb, "patch_size"):
        shape = (batch, emb.in_chans, *emb.input_size)
        return {"x": torch.randn(*shape)}, {"x": {"shape": [-1, *shape[1:]], "dtype": "float32"}}
    adapter = model.adapters.get(modality)
    stated = getattr(adapter, "example_input_shape", None)  # an adapter that states its tensor (family specs)
    if stated is not None:
        shape = (batch, *stated())
        return {"x": torch.randn(*shape)}, {"x": {"shape": [-1, *shape[1:]], "dtype": "float32"}}
    length = int(getattr(emb, "max_len", 0) or 0) or int((adapter.options.get("max_length") if adapter else 0) or 32)
    length = min(length, 16)
    vocab = int(getattr(tower, "vocab_size", 0) or getattr(emb, "vocab_size", 100))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(5, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2:] = 0  # a padded row, so the mask's path is traced
    return ({"x": x, "mask": mask},
            {"x": {"shape": [-1, -1], "dtype": "int64", "meaning": "token ids, right-padded"},
             "mask": {"shape": [-1, -1], "dtype": "int64", "meaning": "1 = real token, 0 = padding"}})


def _tokenizer_files(model: nn.Module, modality: str, out: Path) -> List[str]:
    adapter = model.adapters.get(modality)
    if adapter is None:
        return []
    sub = adapter_dir(out, modality)
    sub.mkdir(parents=True, exist_ok=True)
    try:
        adapter.save_pretrained(sub)
    except Exception as e:  # an adapter with nothing to save (e.g. an unfitted tokenizer)
        log.warning("%s: adapter files not written: %s", modality, e)
    return sorted(str(p.relative_to(out)) for p in sub.rglob("*") if p.is_file())


def preprocessing_record(model: nn.Module, modality: str, inputs: Dict[str, Any], files: List[str]) -> Dict[str, Any]:
    """What the adapter does before the tower, as data (``preprocessing.json`` entry)."""
    adapter = model.adapters.get(modality)
    cls = type(adapter)
    doc = inspect.getdoc(inspect.getmodule(cls)) or ""
    options = adapter.config() if adapter is not None else {}
    training = set(getattr(adapter, "training_options", ()))
    rec: Dict[str, Any] = {
        "adapter": getattr(adapter, "name", modality), "input_kind": getattr(adapter, "input_kind", None),
        "reads": list(getattr(adapter, "suffixes", ())),
        # inference options only; what acts only in training (random flips, jitter, crops) stands apart
        "options": {k: v for k, v in options.items() if k not in training},
        "training_augmentation": {k: v for k, v in options.items() if k in training},
        "inputs": inputs,
        "output": {"name": "embedding", "shape": [-1, int(model.embed_dim)], "dtype": "float32", "l2_normalised": True},
        "files": files,
        "pipeline": doc,
    }
    spec = adapter.inference_spec() if adapter is not None and hasattr(adapter, "inference_spec") else None
    if spec is not None:  # the eval-mode steps with every constant: enough to reimplement without medfm
        rec["preprocessing"] = spec
    if hasattr(adapter, "special_ids"):
        try:
            rec["special_ids"] = adapter.special_ids
            rec["vocab_size"] = int(adapter.vocab_size)
        except Exception:  # noqa: BLE001 - an unfitted tokenizer has none yet
            pass
    return rec


def export_tower(model: nn.Module, modality: str, fmt: str, path: Path, opset: int = 17,
                 fuse: bool = False) -> Dict[str, Any]:
    """Write one tower to ``path``; returns ``{"inputs", "file"}`` (+ ``"onnxruntime_fusions"`` with ``fuse``:
    the ONNX file rewritten with onnxruntime's transformer fusions, :mod:`medfm.export_ort`)."""
    enc = TowerEncoder(model, modality).eval()
    inputs, described = example_inputs(model, modality)
    names = list(inputs)
    args = tuple(inputs[n] for n in names)
    with torch.no_grad(), warnings.catch_warnings():
        # known-benign TracerWarnings inside transformers' BERT attention (hf towers): the mask-padding
        # length (kv_length - mask length) is 0 for an encoder whose mask has the input's length, and
        # is_causal is False whenever a mask is passed, as the exported graph always does
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"transformers\.")
        if fmt == "onnx":
            dyn = {n: ({0: "batch"} if n == "x" and inputs[n].dtype.is_floating_point else {0: "batch", 1: "length"})
                   for n in names}
            dyn["embedding"] = {0: "batch"}
            torch.onnx.export(enc, args, str(path), input_names=names, output_names=["embedding"],
                              dynamic_axes=dyn, opset_version=opset, dynamo=False, do_constant_folding=True)
        elif fmt == "torchscript":
            traced = torch.jit.trace(enc, args, check_trace=False)
            traced.save(str(path))
        else:
            raise UsageError(f"export format must be one of {FORMATS}, got {fmt!r}")
    info = {"inputs": described, "file": path.name}
    if fuse and fmt == "onnx":
        info["onnxruntime_fusions"] = fuse_for_onnxruntime(path, {n: inputs[n].numpy() for n in names})
    return info


def model_identity(model_dir: os.PathLike) -> Dict[str, Any]:
    """The exported checkpoint by folder name and the sha256 of its files (no path of this machine)."""
    d = Path(model_dir).resolve()
    files = [d / CONFIG_NAME] + weight_files(d)
    return {"name": d.name, "sha256": {f.name: hash_file(f).hexdigest() for f in files if f.is_file()}}


def export_model(model_dir: os.PathLike, fmt: str, out: os.PathLike, modalities: Optional[Sequence[str]] = None,
                 opset: int = 17, fuse: bool = False) -> Dict[str, Any]:
    """Export every tower (or ``modalities``) of a checkpoint directory; returns the written manifest.

    Writes ``OUT/<modality>.onnx`` (or ``.pt``), ``OUT/modalities/<m>/`` (tokenizer / adapter files),
    ``OUT/preprocessing.json`` and the model card ``OUT/README.md``; nothing outside ``OUT``
    (``model_dir`` may be read-only). ``fuse``: ONNX files for onnxruntime only, with its transformer
    fusions (faster on CPU; :func:`medfm.export_ort.fuse_for_onnxruntime`), recorded per tower.
    """
    if fmt not in FORMATS:
        raise UsageError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model = load_pretrained(model_dir).eval()  # a FineTunedModel for a fine-tuned directory
    if isinstance(model, FineTunedModel):
        log.info("the task head is not exported: the files give embeddings")
    mods = list(modalities or model.modalities)
    for m in mods:
        model.tower(m)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    # the source checkpoint by folder name and weights hash, never by a path of this machine
    manifest: Dict[str, Any] = {"format": fmt, "model": model_identity(model_dir),
                                "embed_dim": int(model.embed_dim),
                                "logit_scale": float(model.logit_scale.detach().exp().clamp(max=100)),
                                "init_sources": getattr(model, "init_sources", {}), "towers": {}}
    for m in mods:
        info = export_tower(model, m, fmt, out / f"{m}{suffix}", opset=opset, fuse=fuse)
        files = _tokenizer_files(model, m, out)
        manifest["towers"][m] = {**preprocessing_record(model, m, info["inputs"], files), "file": info["file"]}
        if info.get("onnxruntime_fusions"):
            manifest["towers"][m]["runtime"] = {"requires": "onnxruntime", "fused": info["onnxruntime_fusions"]}
        log.info("exported %s → %s", m, out / info["file"])
    write_json(out / "preprocessing.json", manifest)
    if (Path(model_dir) / WEIGHTS_NAME).is_file() or (Path(model_dir) / CONFIG_NAME).is_file():
        # the card is rendered from the source folder and written into OUT only: the source may be read-only
        atomic_write_text(out / "README.md", render_model_card(model_dir))
    return manifest
