"""LoRA on medfm towers: target presets, parameter counts, frozen base, merge, save/load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import medfm
from medfm.errors import CheckpointError, ConfigError
from medfm.finetune import (TaskHead, apply_lora, count_parameters, find_target_modules, lora_state_dict,
                            load_lora_state_dict, merge_lora)
from medfm.finetune.lora import shared_with
from medfm.modality import ModalityAdapter, Record
from medfm.registry import MODALITIES, register_modality


class ToyTokens(ModalityAdapter):
    """Test-only token modality with a small Hugging Face BERT tower (``hf``)."""

    name = "toytok"
    input_kind = "value"
    defaults = {"vocab": 24, "length": 12}

    def read(self, source, *, sample_id=None, row=None):
        return Record(np.array([int(v) for v in str(source).split()], dtype=np.int64), {})

    def preprocess(self, record, *, train=False, rng=None):
        return {"x": torch.from_numpy(record.data), "mask": torch.ones(len(record.data), dtype=torch.long)}

    def tower_config(self):
        return {"type": "hf", "model_dir": None, "pool": "cls", "vocab_size": self.options["vocab"],
                "hf_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                              "intermediate_size": 48, "hidden_dropout_prob": 0.0,
                              "attention_probs_dropout_prob": 0.0},
                "masked": {"kind": "mlm", "mask_ratio": 0.15}, "mask_id": 1, "pad_id": 0}


if "toytok" not in MODALITIES._items:
    register_modality("toytok")(ToyTokens)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(shared=True, **mods):
    cfg = {"name": "medfm-tiny", "modalities": mods or {"toy": {}}}
    cfg["trunk"] = {"shared": shared}
    return medfm.create_model(cfg)


def test_vit_preset_targets_attention_and_mlp_of_each_block():
    model = tiny()
    names = find_target_modules(model, ["toy"])
    depth = model.config["trunk"]["depth"]
    expected = {f"towers.toy.trunk.blocks.{i}.{s}" for i in range(depth)
                for s in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    assert set(names) == expected
    assert set(find_target_modules(model, ["toy"], "vit-attn")) == {n for n in expected if ".attn." in n}
    assert find_target_modules(model, ["toy"], ["fc2"]) == sorted(n for n in expected if n.endswith("fc2"))


def test_bad_targets_are_config_errors():
    model = tiny()
    with pytest.raises(ConfigError, match="unknown preset"):
        find_target_modules(model, ["toy"], "nope")
    with pytest.raises(ConfigError, match="matches no layer"):
        find_target_modules(model, ["toy"], ["query"])
    with pytest.raises(ConfigError):
        find_target_modules(model, ["ct"])  # not a tower of this model


def test_shared_trunk_is_reported_and_targeted_once():
    model = tiny(toy={}, toyb={"channels": 3})
    assert shared_with(model, ["toyb"]) == ["toy"]
    names = find_target_modules(model, ["toyb"])
    assert len(names) == 4 * model.config["trunk"]["depth"]  # the shared blocks, each named once
    assert shared_with(tiny(shared=False, toy={}, toyb={"channels": 3}), ["toyb"]) == []


@pytest.mark.parametrize("dora", [False, True])
def test_trainable_count_is_lora_formula_plus_head(dora):
    model = tiny()
    r, w, depth = 4, model.config["trunk"]["width"], model.config["trunk"]["depth"]
    apply_lora(model, ["toy"], r=r, alpha=8, dora=dora)
    model.task_head = TaskHead(["toy"], model.embed_dim, 3)
    head = sum(p.numel() for p in model.task_head.parameters())
    # per timm block (mlp_ratio 4): qkv w→3w, proj w→w, fc1 w→4w, fc2 4w→w: r·(in+out) each
    lora = depth * r * ((w + 3 * w) + (w + w) + (w + 4 * w) + (4 * w + w))
    magnitude = depth * (3 * w + w + 4 * w + w) if dora else 0  # DoRA: one magnitude per output feature
    trainable, total = count_parameters(model)
    assert trainable == lora + magnitude + head


def test_bert_preset_on_hf_tower_and_count():
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"toytok": {}}})
    names = find_target_modules(model, ["toytok"])
    assert len(names) == 2 * 6 and not any("predictions" in n or "cls." in n for n in names)
    assert sum(n.endswith(("query", "key", "value")) for n in names) == 6
    r, h, inter = 2, 32, 48
    apply_lora(model, ["toytok"], r=r)
    per_layer = 4 * r * (h + h) + r * (h + inter) + r * (inter + h)
    assert count_parameters(model)[0] == 2 * per_layer
    x = torch.randint(5, 24, (3, 12))
    assert model.encode("toytok", x).shape == (3, model.embed_dim)


def _train_a_little(model, steps=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = TaskHead(["toy"], model.embed_dim, 2)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        x = torch.randn(8, 2, 32, generator=g)
        y = torch.randint(0, 2, (8,), generator=g)
        z = model.encode("toy", x)
        loss = torch.nn.functional.cross_entropy(head({"toy": z}, {"toy": torch.ones(8, dtype=torch.bool)}), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


def test_base_weights_stay_bit_identical_and_lora_changes_output():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 2, 32)
    model.eval()
    z0 = model.encode("toy", x)
    apply_lora(model, ["toy"], r=4, alpha=8)
    model.eval()
    assert torch.allclose(model.encode("toy", x), z0, atol=1e-6)  # B = 0 at init: the identity
    model.train()
    _train_a_little(model)
    after = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    model.eval()
    assert not torch.allclose(model.encode("toy", x), z0, atol=1e-4)


@pytest.mark.parametrize("dora", [False, True])
def test_merged_equals_unmerged(dora):
    model = tiny()
    apply_lora(model, ["toy"], r=4, alpha=8, dora=dora)
    _train_a_little(model)
    model.eval()
    x = torch.randn(5, 2, 32)
    with torch.no_grad():
        unmerged = model.encode("toy", x, normalize=False)
        merge_lora(model)
        merged = model.encode("toy", x, normalize=False)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert set(model.state_dict()) == set(tiny().state_dict())  # the base architecture again
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_adapter_state_roundtrip_gives_identical_outputs(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(1)
    base = tiny()
    base.save_pretrained(tmp_path / "base")
    model = medfm.load_pretrained(tmp_path / "base")
    cfg = apply_lora(model, ["toy"], r=4, alpha=8)
    _train_a_little(model)
    save_file(lora_state_dict(model), str(tmp_path / "adapter_model.safetensors"))
    cfg.save_pretrained(str(tmp_path))
    assert (tmp_path / "adapter_config.json").is_file()

    from peft import LoraConfig

    fresh = medfm.load_pretrained(tmp_path / "base")
    apply_lora(fresh, ["toy"], config=LoraConfig.from_pretrained(str(tmp_path)))
    load_lora_state_dict(fresh, load_file(str(tmp_path / "adapter_model.safetensors")))
    model.eval(), fresh.eval()
    x = torch.randn(3, 2, 32)
    assert torch.equal(model.encode("toy", x), fresh.encode("toy", x))


HF_SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 48}


@pytest.mark.parametrize("name,options", [("dna", {}), ("dna", {"tower": "hf", "hf_config": HF_SMALL}),
                                          ("text", {"hf_config": HF_SMALL})])
def test_presets_on_the_real_dna_and_text_towers(name, options):
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {name: options}})
    r = 2
    apply_lora(model, [name], r=r)
    if model.tower(name).__class__.__name__ == "ViTTower":  # token-based DNA tower: the vit preset
        w, depth = model.config["trunk"]["width"], model.config["trunk"]["depth"]
        expected = depth * r * 16 * w  # qkv 4w + proj 2w + fc1 5w + fc2 5w (see above)
    else:  # BERT-family hf tower: q, k, v, attention.output.dense (h→h), intermediate (h→I), output (I→h)
        h, inter = HF_SMALL["hidden_size"], HF_SMALL["intermediate_size"]
        expected = HF_SMALL["num_hidden_layers"] * (4 * r * 2 * h + 2 * r * (h + inter))
    assert count_parameters(model)[0] == expected
    if name == "dna":  # a real barcode through the adapter and the adapted tower
        adapter = model.adapters["dna"]
        item = adapter.load("ACGTACGTTTGACCAGGT" * 20, sample_id="s1")
        batch = adapter.collate([item, item])
        z = model.encode("dna", batch["x"], batch.get("mask"))
        assert z.shape == (2, model.embed_dim) and torch.isfinite(z).all()


def test_an_encoder_with_unmerged_lora_refuses_the_base_layout(tmp_path):
    # the base layout has no place for peft's layers: saving it would silently drop the adaptation
    model = tiny()
    apply_lora(model, ["toy"], r=4, alpha=8)
    with pytest.raises(CheckpointError, match="unmerged LoRA layers"):
        model.save_pretrained(tmp_path / "enc")
    assert not (tmp_path / "enc").exists()
