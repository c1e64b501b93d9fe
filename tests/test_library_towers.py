"""Library towers (timm, hf_encoder, monai) inside the engine: LoRA through peft, freezing, masked
pretraining refused by name, save/load, the family presets listed by ``medfm info``."""
import pytest
import torch

import medfm
from medfm.errors import ConfigError

TIMM_RESNET = {"embed_dim": 16, "modalities": {"image": {"channels": 1, "size": 64, "crop": 64, "mean": [0.5],
                                                         "std": [0.5]}},
               "towers": {"image": {"type": "timm", "model_name": "resnet18",
                                    "model_kwargs": {"in_chans": 1, "zero_init_last": False},
                                    "pool": "avg"}}}


def test_timm_tower_lora_trains_saves_and_loads_in_peft(tmp_path):
    import peft

    from medfm.finetune import FineTunedModel, TaskHead, TaskSpec, apply_lora
    from medfm.finetune.layout import finetune_meta

    torch.set_num_threads(1)
    torch.manual_seed(0)
    medfm.create_model(TIMM_RESNET).save_pretrained(tmp_path / "base")
    enc = medfm.load_pretrained(tmp_path / "base")
    x = torch.randn(4, 1, 64, 64)
    with torch.no_grad():
        z_before = enc.eval().encode("image", x)
    frozen = {n: p.clone() for n, p in enc.named_parameters()}
    apply_lora(enc, ["image"], r=4, alpha=8)  # target_modules auto: the ResNet family's block convolutions
    lora = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n in lora)
    assert any("layer1.0.conv1" in n for n in lora) and not any("fc" in n for n in lora)
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=0.5)
    target = torch.randn(4, 16)
    enc.train()
    for _ in range(3):
        loss = ((enc.encode("image", x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    for n, p in enc.named_parameters():  # base weights stay bit-identical (peft keeps them as base_layer)
        if "lora_" not in n:
            key = n.replace(".base_layer", "")
            assert torch.equal(p, frozen[key]), n
    with torch.no_grad():
        z_after = enc.encode("image", x)
    assert (z_after - z_before).abs().max() > 1e-4
    head = TaskHead(["image"], enc.embed_dim, 2)
    task = TaskSpec(kind="multiclass", label_column="label", classes=["a", "b"])
    FineTunedModel(enc, head, task, finetune_meta(tmp_path / "base", tmp_path / "ft", "lora", ["image"], task, head)
                   ).save_pretrained(tmp_path / "ft")
    pm = peft.PeftModel.from_pretrained(medfm.load_pretrained(tmp_path / "base"), str(tmp_path / "ft")).eval()
    with torch.no_grad():
        assert (pm.encode("image", x) - z_after).abs().max() <= 1e-5


def test_masked_pretraining_is_refused_by_name_for_library_towers():
    model = medfm.create_model(TIMM_RESNET)
    with pytest.raises(ConfigError, match="masked pretraining is not supported by the 'timm' tower"):
        model.masked_loss("image", torch.randn(1, 1, 64, 64))


def test_monai_segresnet_tower_pools_its_encoder_and_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = {"embed_dim": 8, "modalities": {"ct": {"adapter": "volume", "size": [32, 32, 16]}},
           "towers": {"ct": {"type": "monai", "net": "segresnet",
                             "net_kwargs": {"in_channels": 1, "init_filters": 8, "blocks_down": [1, 1, 1]}}}}
    model = medfm.create_model(cfg).eval()
    tower = model.tower("ct")
    assert tower.width == 32  # init_filters * 2 ** (stages - 1)
    x = torch.randn(2, 1, 32, 32, 16)
    with torch.no_grad():
        feats, _ = tower.model.encode(x)
        assert torch.allclose(tower(x), feats.flatten(2).mean(-1))
        model.save_pretrained(tmp_path / "m")
        back = medfm.load_pretrained(tmp_path / "m").eval()
        assert torch.equal(back.encode("ct", x), model.encode("ct", x))


def test_family_presets_are_listed_with_their_sources():
    from medfm.modalities.family_specs import FAMILIES
    from medfm.models.presets import preset_description
    from medfm.registry import MODELS

    for name, fam in FAMILIES.items():
        assert name in MODELS.names()
        assert preset_description(name).startswith("family preset:")
        assert fam["cite"], name
    assert {m for f in FAMILIES.values() for m in f["modalities"]} >= {"image", "text", "xray", "ct", "ecg"}


def test_a_timm_family_import_from_a_timm_file(tmp_path):
    """``pretrained_file``: timm's own pretrained loader reads a local file (3-channel weights adapted to 1)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = timm.create_model("resnet18", num_classes=5)
    save_file(src.state_dict(), str(tmp_path / "resnet18.safetensors"))
    cfg = {**TIMM_RESNET, "towers": {"image": {**TIMM_RESNET["towers"]["image"],
                                               "pretrained_file": str(tmp_path / "resnet18.safetensors")}}}
    model = medfm.create_model(cfg)
    w = model.tower("image").model.conv1.weight
    assert torch.allclose(w[:, 0], src.conv1.weight.sum(1), atol=1e-5)  # timm's adapt_input_conv
    assert "pretrained_file" not in str(model.config["towers"]["image"]["pretrained_file"] or "")


@pytest.mark.parametrize("kind", ["timm", "monai"])
def test_onnx_export_of_library_towers_matches_pytorch(tmp_path, kind):
    onnxruntime = pytest.importorskip("onnxruntime")
    from medfm.export import export_model

    torch.manual_seed(0)
    if kind == "timm":
        cfg = TIMM_RESNET
    else:
        cfg = {"embed_dim": 8, "modalities": {"ct": {"adapter": "volume", "size": [32, 32, 16]}},
               "towers": {"ct": {"type": "monai", "net": "resnet10"}}}
    model = medfm.create_model(cfg).eval()
    model.save_pretrained(tmp_path / "m")
    export_model(tmp_path / "m", "onnx", tmp_path / "out")
    mod = model.modalities[0]
    shape = model.adapters[mod].example_input_shape()
    x = torch.randn(3, *shape)
    sess = onnxruntime.InferenceSession(str(tmp_path / "out" / f"{mod}.onnx"))
    got = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = model.encode(mod, x).numpy()
    assert abs(got - want).max() <= 1e-4
    import json
    spec = json.loads((tmp_path / "out" / "preprocessing.json").read_text())
    assert "preprocessing" in json.dumps(spec)


def test_a_family_lora_preset_can_be_named():
    from medfm.finetune import find_target_modules

    model = medfm.create_model(TIMM_RESNET)
    names = find_target_modules(model, ["image"], "resnet")
    assert names and all(".layer" in n and ".conv" in n for n in names)
    assert names == find_target_modules(model, ["image"], None)  # auto picks the same family
    with pytest.raises(ConfigError, match="matches no layer"):
        find_target_modules(model, ["image"], "clip")
