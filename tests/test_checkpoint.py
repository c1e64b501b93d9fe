"""The checkpoint folder (issue 21): one module owns its layout and kinds; ``medfm.load_pretrained``
decides which class loads a folder; the model layer loads bases only and never hands back a
fine-tuned model (``create_model(pretrained=…)``, ``--init-from``)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import yaml
from toy_cohort import write_toy_manifest

import medfm
from medfm import checkpoint as ckpt
from medfm.cli import main
from medfm.data import ManifestDataset, MultiModalCollate, read_manifest
from medfm.errors import CheckpointError
from medfm.finetune import FineTunedModel, TaskHead, TaskSpec, apply_lora
from medfm.finetune.layout import finetune_meta

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
MODEL = {"name": "medfm-tiny", "modalities": {"toy": {}}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A base, a LoRA fine-tuned folder over it (adapters that change the output) and its merged export."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    medfm.create_model(MODEL).save_pretrained(root / "base")
    encoder = medfm.load_pretrained(root / "base")
    apply_lora(encoder, ["toy"], r=2, alpha=4)
    for n, p in encoder.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2)  # peft starts B at zero: make the adapter do something
    head = TaskHead(["toy"], encoder.embed_dim, 2)
    task = TaskSpec(kind="multiclass", label_column="label", classes=["a", "b"])
    ft = FineTunedModel(encoder, head, task, finetune_meta(root / "base", root / "ft", "lora", ["toy"], task, head))
    ft.save_pretrained(root / "ft")
    FineTunedModel.from_pretrained(root / "ft").save_merged(root / "merged")
    df = read_manifest(write_toy_manifest(root / "m.csv", n=6))
    ds = ManifestDataset(df, ft.adapters)
    batch = MultiModalCollate(ft.adapters)([ds[i] for i in range(len(ds))])
    return {"root": root, "base": root / "base", "ft": root / "ft", "merged": root / "merged", "batch": batch}


def test_the_kind_of_each_folder(folders):
    assert [ckpt.checkpoint_kind(folders[k]) for k in ("base", "ft", "merged")] == [ckpt.BASE, ckpt.FINETUNED,
                                                                                    ckpt.MERGED]
    # the layout the module names is the one on disk
    assert {p.name for p in ckpt.weight_files(folders["ft"])} == {ckpt.ADAPTER_CONFIG, ckpt.ADAPTER_WEIGHTS,
                                                                   ckpt.HEAD_WEIGHTS}
    assert [p.name for p in ckpt.weight_files(folders["base"])] == [ckpt.WEIGHTS_NAME]
    assert ckpt.is_medfm_config(folders["base"]) and not ckpt.is_medfm_config(folders["root"])


def test_load_pretrained_dispatches_by_kind(folders):
    from medfm.finetune import load_encoder

    batch = folders["batch"]
    base = medfm.load_pretrained(folders["base"])
    ft = medfm.load_pretrained(folders["ft"])
    merged = medfm.load_pretrained(folders["merged"])
    assert type(base) is medfm.MultiModalModel
    assert isinstance(ft, FineTunedModel) and isinstance(merged, FineTunedModel)
    with torch.no_grad():
        torch.testing.assert_close(merged.predict(batch)[0], ft.predict(batch)[0], rtol=1e-4, atol=1e-5)
        # the merged folder's base layout is the fine-tuned encoder, not the base
        z_merged = medfm.MultiModalModel.from_pretrained(folders["merged"]).eval().encode_batch(batch, ["toy"])
        z_ft = ft.encoder.encode_batch(batch, ["toy"])
        z_base = base.eval().encode_batch(batch, ["toy"])
        z_enc = load_encoder(folders["ft"]).eval().encode_batch(batch, ["toy"])
    torch.testing.assert_close(z_merged["toy"], z_ft["toy"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z_enc["toy"], z_ft["toy"])
    assert (z_ft["toy"] - z_base["toy"]).abs().max() > 1e-3


def test_the_model_layer_refuses_a_fine_tuned_folder_by_name(folders):
    # earlier: MultiModalModel.from_pretrained and create_model(DIR) returned a FineTunedModel, and
    # create_model(pretrained=DIR) failed inside load_state_dict on its 'encoder.' names
    for load in (medfm.MultiModalModel.from_pretrained, medfm.create_model,
                 lambda d: medfm.create_model(MODEL, pretrained=d)):
        with pytest.raises(CheckpointError, match=r"fine-tuned checkpoint \(method lora\).*medfm.load_pretrained") as e:
            load(folders["ft"])
        assert str(folders["ft"]) in str(e.value)
    loaded = medfm.create_model(MODEL, pretrained=folders["merged"])  # a complete base layout: its weights
    merged = medfm.MultiModalModel.from_pretrained(folders["merged"])
    for (k, a), b in zip(loaded.state_dict().items(), merged.state_dict().values()):
        assert torch.equal(a, b), k


def test_init_from_a_fine_tuned_folder_is_a_clear_error(folders, tmp_path, capsys):
    # earlier: the FineTunedModel's 'encoder.*' names matched none of the model's, so --init-from
    # silently initialised 0 tensors and pretraining started from scratch
    cfg = {"model": MODEL, "data": {"manifest": str(folders["root"] / "m.csv"), "batch_size": 4, "split": None},
           "objectives": [{"name": "masked", "weight": 1.0}],
           "train": {"max_steps": 1, "checkpoint_every": 0, "tensorboard": False, "progress": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(["pretrain", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "o"), "--init-from", str(folders["ft"])])
    err = capsys.readouterr().err
    assert rc == 1 and "fine-tuned checkpoint (method lora)" in err and str(folders["ft"]) in err
    assert not (tmp_path / "o" / ckpt.WEIGHTS_NAME).exists()


def test_peft_loads_the_adapter_over_load_pretrained_of_the_base(folders):
    import peft

    ft = medfm.load_pretrained(folders["ft"])
    pm = peft.PeftModel.from_pretrained(medfm.load_pretrained(folders["base"]), str(folders["ft"])).eval()
    with torch.no_grad():
        z_peft = pm.encode_batch(folders["batch"], ["toy"])["toy"]
        z_ours = ft.encoder.encode_batch(folders["batch"], ["toy"])["toy"]
    assert (z_peft - z_ours).abs().max() <= 1e-5


# ------------------------------------------------------------------ one owner of the layout
def _code_strings_and_names(path: Path):
    """Identifiers and string constants of a module's code (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            yield n.value
        elif isinstance(n, ast.Name):
            yield n.id
        elif isinstance(n, ast.Attribute):
            yield n.attr


def test_the_model_layer_knows_nothing_of_fine_tuning():
    words = {w for p in (ROOT / "medfm" / "models").glob("*.py") for w in _code_strings_and_names(p)}
    assert not {w for w in words if w in ("FineTunedModel", "CHECKPOINT_KINDS", "finetune", "load_finetuned")
                or "lora_" in w}


#: product modules that spell a file name of another layout that happens to share medfm's
#: (a Hugging Face model folder's config.json / model.safetensors / tokenizer files)
OTHER_LAYOUTS = {"config.json": {"models/hf_tower.py", "models/hf_encoder_tower.py", "models/init.py",
                                 "modalities/weight_formats.py", "modalities/family_formats.py"},
                 "model.safetensors": {"modalities/weight_formats.py", "modalities/family_formats.py"},
                 # a Hugging Face tokenizer folder of a family preset (modalities/spec_text.py)
                 "tokenizer.json": {"modalities/spec_text.py"},
                 "tokenizer_config.json": {"modalities/spec_text.py"}}


def test_only_the_checkpoint_module_spells_the_layout():
    names = {ckpt.CONFIG_NAME, ckpt.WEIGHTS_NAME, ckpt.ADAPTER_CONFIG, ckpt.ADAPTER_WEIGHTS, ckpt.FULL_WEIGHTS,
             ckpt.HEAD_WEIGHTS, ckpt.RUN_CONFIG, *ckpt.tokenizer_files("")}
    found = set()
    for folder, prefix in ((ROOT / "medfm", ""), (ROOT / "modalities", "modalities/"), (ROOT / "evaluation",
                                                                                      "evaluation/")):
        for path in folder.rglob("*.py"):
            rel = prefix + path.relative_to(folder).as_posix()
            if rel == "checkpoint.py":
                continue
            for s in _code_strings_and_names(path):
                for name in names:
                    if s == name and rel not in OTHER_LAYOUTS.get(name, ()):  # f"{p}tokenizer.json": a part
                        found.add(f"{rel}: {s!r}")
    assert sorted(found) == []
