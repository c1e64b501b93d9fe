"""``--init MOD=PATH`` through the commands: LoRA fine-tuning from a RETFound-layout file, zero-shot from an
open_clip-layout file, pretraining and embedding from imported weights; provenance in every output."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

import medfm
from medfm.cli import main
from medfm.demo.cohort import make_xray, write_png

W = 32
CLASSES = ("normal", "early", "advanced")


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("initcli")
    rng = np.random.default_rng(0)
    rows = []
    (d / "xray").mkdir()
    for i in range(36):
        c, pid = i % 3, f"P{i // 2:02d}"
        write_png(d / "xray" / f"s{i}.png", make_xray(c, rng))
        split = "train" if i < 24 else ("val" if i < 30 else "test")
        rows.append({"id": f"s{i}", "patient_id": pid, "split": split, "xray": f"xray/s{i}.png",
                     "label": CLASSES[c]})
    pd.DataFrame(rows).to_csv(d / "cohort.csv", index=False)
    torch.manual_seed(0)  # a RETFound-layout checkpoint (MAE ViT, {"model": ...}) at a small size
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=16, embed_dim=W, depth=2,
                                                           num_heads=2, num_classes=0)
    torch.save({"model": vit.state_dict()}, d / "RETFound_small.pth")
    model_yaml = d / "retfound_model.yaml"
    model_yaml.write_text(yaml.safe_dump({"name": "medfm-tiny", "embed_dim": 16,
                                          "trunk": {"width": W, "depth": 2, "heads": 2},
                                          "modalities": {"xray": {"size": 32}}}))
    return {"dir": d, "manifest": d / "cohort.csv", "retfound": d / "RETFound_small.pth", "model_yaml": model_yaml,
            "vit": vit}


def test_finetune_lora_from_a_retfound_file(setup, capsys):
    d = setup["dir"]
    cfg = d / "ft.yaml"
    cfg.write_text(yaml.safe_dump({"base": str(setup["model_yaml"]), "modalities": ["xray"],
                                   "task": {"kind": "multiclass", "label_column": "label"}, "method": "lora",
                                   "lora": {"r": 4, "alpha": 8}, "data": {"manifest": str(setup["manifest"]),
                                                                         "batch_size": 12},
                                   "optim": {"epochs": 1}, "eval": {"n_boot": 0}, "progress": False}))
    out = d / "ft"
    assert main(["finetune", str(cfg), "--out", str(out), "--init",
                 f"xray={setup['retfound']},format=retfound,strict"]) == 0
    capsys.readouterr()
    src = {"name": "RETFound_small.pth", "sha256": sha(setup["retfound"])}
    report = json.loads((out / "init_report.json").read_text())["xray"]
    assert report["source"]["format"] == "retfound" and report["source"]["sha256"] == src["sha256"]
    assert "embedder.pos_embed" in report["matched"] and not report["mismatched"]
    base = json.loads((out / "base" / "config.json").read_text())
    assert base["init_sources"]["xray"]["sha256"] == src["sha256"]
    assert json.loads((out / "config.json").read_text())["init_sources"]["xray"]["name"] == src["name"]
    assert json.loads((out / "metrics.json").read_text())["init_sources"]["xray"]["sha256"] == src["sha256"]
    # the base the LoRA adapters sit on holds the RETFound tensors
    weights = load_file(str(out / "base" / "model.safetensors"))
    torch.testing.assert_close(weights["towers.xray.trunk.blocks.1.mlp.fc2.weight"],
                               setup["vit"].state_dict()["blocks.1.mlp.fc2.weight"])
    tuned = medfm.load_pretrained(out)
    assert tuned.task["classes"] == sorted(CLASSES)
    card = (out / "README.md").read_text()
    assert "RETFound_small.pth" in card and src["sha256"] in card


@pytest.fixture(scope="module")
def open_clip_file(setup):
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    ref = open_clip.model.CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=1, width=W, head_width=16, patch_size=16,
                                                                     image_size=32),
                               text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=W, heads=2, layers=1))
    path = setup["dir"] / "open_clip_model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model_yaml = setup["dir"] / "clip_model.yaml"
    model_yaml.write_text(yaml.safe_dump({"name": "medfm-tiny", "modalities": {"xray": {"size": 32}, "text": {}}}))
    return ref, path, model_yaml


def test_zeroshot_from_an_open_clip_file_records_the_source(setup, open_clip_file, capsys):
    ref, path, model_yaml = open_clip_file
    prompts = setup["dir"] / "prompts.yaml"
    prompts.write_text("task: multiclass\ntemplates: ['a chest x-ray with {label}']\nclasses:\n"
                       "  normal: {label: clear lungs}\n  early: {label: a faint opacity}\n"
                       "  advanced: {label: dense consolidation}\n")
    out = setup["dir"] / "zs"
    rc = main(["zeroshot", "--model", str(model_yaml), "--manifest", str(setup["manifest"]), "--modality", "xray",
               "--label-column", "label", "--prompts", str(prompts), "--out", str(out), "--n-boot", "0",
               "--no-progress", "--init", f"xray={path},heads=1", "--init", f"text={path},heads=2"])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads((out / "results.json").read_text())
    sources = rec["model"]["init_sources"]
    assert sources["xray"]["sha256"] == sources["text"]["sha256"] == sha(path)
    assert sources["text"]["format"] == "open_clip"
    assert json.loads((out / "init_report.json").read_text())["text"]["source"]["format"] == "open_clip"
    assert rec["logit_scale"] == pytest.approx(float(ref.logit_scale.detach().exp()), rel=1e-5)


def test_embed_with_init_on_a_checkpoint_changes_the_fingerprint(setup, capsys, tmp_path):
    torch.manual_seed(0)
    model = medfm.create_model(setup["model_yaml"])
    model.save_pretrained(tmp_path / "ckpt")
    args = ["embed", "--model", str(tmp_path / "ckpt"), "--manifest", str(setup["manifest"]), "--modality", "xray",
            "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a.safetensors")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.safetensors"), "--init", f"xray={setup['retfound']}"]) == 0
    capsys.readouterr()
    from medfm.evaluation.embed import load_embeddings

    a, b = load_embeddings(tmp_path / "a.safetensors"), load_embeddings(tmp_path / "b.safetensors")
    assert a.meta["model_fingerprint"] != b.meta["model_fingerprint"]
    assert (tmp_path / "b.init_report.json").is_file() and not (tmp_path / "a.init_report.json").exists()
    assert not np.allclose(a.emb, b.emb)


def test_pretrain_from_imported_weights_writes_report_and_sources(setup, capsys):
    d = setup["dir"]
    cfg = d / "pre.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(setup["model_yaml"]),
                                   "data": {"manifest": str(setup["manifest"]), "batch_size": 8},
                                   "objectives": [{"name": "masked", "modalities": ["xray"]}],
                                   "train": {"max_steps": 2, "tensorboard": False, "progress": False,
                                             "checkpoint_every": 0}}))
    out = d / "pre"
    assert main(["pretrain", str(cfg), "--out", str(out), "--init", f"xray={setup['retfound']},strict"]) == 0
    capsys.readouterr()
    # no decoder keys and no format given: sniffed as a plain timm ViT state dict
    assert json.loads((out / "init_report.json").read_text())["xray"]["source"]["format"] == "timm"
    conf = json.loads((out / "config.json").read_text())
    assert conf["init_sources"]["xray"]["sha256"] == sha(setup["retfound"])
    assert conf["training"]["manifest"]["n_rows"] == 24 and conf["training"]["steps"] == 2
    card = (out / "README.md").read_text()
    assert "manifest sha256" in card and "RETFound_small.pth" in card
    # the same through the config key, with a path relative to the run config's folder
    model = yaml.safe_load(setup["model_yaml"].read_text())
    model["modalities"]["xray"]["init"] = {"path": setup["retfound"].name, "format": "retfound", "strict": True}
    cfg2 = d / "pre2.yaml"
    cfg2.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "model": model}))
    assert main(["pretrain", str(cfg2), "--out", str(d / "pre2")]) == 0
    capsys.readouterr()
    conf = json.loads((d / "pre2" / "config.json").read_text())
    assert conf["init_sources"]["xray"]["format"] == "retfound"


def test_init_usage_errors(setup, capsys):
    rc = main(["zeroshot", "--model", str(setup["model_yaml"]), "--manifest", str(setup["manifest"]),
               "--modality", "xray", "--label-column", "label", "--prototypes", "--out", str(setup["dir"] / "e"),
               "--init", "ct=" + str(setup["retfound"])])
    assert rc == 2 and "no 'ct' modality" in capsys.readouterr().err
    rc = main(["embed", "--model", str(setup["model_yaml"]), "--manifest", str(setup["manifest"]), "--modality",
               "xray", "--out", str(setup["dir"] / "e.safetensors"), "--init", "xray"])
    assert rc == 2 and "MODALITY=PATH" in capsys.readouterr().err


def test_finetune_a_checkpoint_with_one_tower_replaced(setup, capsys, tmp_path):
    torch.manual_seed(0)
    medfm.create_model(setup["model_yaml"]).save_pretrained(tmp_path / "ckpt")
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(yaml.safe_dump({"base": str(tmp_path / "ckpt"), "task": {"kind": "multiclass",
                                                                             "label_column": "label"},
                                   "method": "linear", "data": {"manifest": str(setup["manifest"]), "batch_size": 12},
                                   "optim": {"epochs": 1}, "eval": {"n_boot": 0}, "progress": False}))
    out = tmp_path / "ft"
    assert main(["finetune", str(cfg), "--out", str(out), "--init", f"xray={setup['retfound']},format=retfound"]) == 0
    capsys.readouterr()
    meta = json.loads((out / "config.json").read_text())
    assert meta["finetune"]["base_relative"] == "base" and meta["init_sources"]["xray"]["format"] == "retfound"
    weights = load_file(str(out / "base" / "model.safetensors"))
    torch.testing.assert_close(weights["towers.xray.trunk.blocks.0.attn.qkv.weight"],
                               setup["vit"].state_dict()["blocks.0.attn.qkv.weight"])
    untouched = load_file(str(tmp_path / "ckpt" / "model.safetensors"))["towers.xray.trunk.blocks.0.attn.qkv.weight"]
    assert not torch.equal(untouched, weights["towers.xray.trunk.blocks.0.attn.qkv.weight"])


def test_info_lists_the_weight_formats(capsys):
    assert main(["info", "--json"]) == 0
    names = {f["name"] for f in json.loads(capsys.readouterr().out)["weight_formats"]}
    assert names == {"timm", "mae", "retfound", "octcube", "monai", "open_clip", "hf", "barcodebert", "medfm",
                     # the published families' layouts (modalities/family_formats*.py)
                     "open_clip_hf", "hf_two_tower", "hf_encoder_dir", "xrv", "monai_net"}
