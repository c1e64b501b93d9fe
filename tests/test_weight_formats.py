"""Fidelity of imported towers: each reference model is built in its own library with random weights,
written in that release's own file layout, imported through ``model.modalities.<m>.init`` and compared
on the same input (fp32, max abs difference ≤ 1e-4 after the same pooling)."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

import medfm
from medfm.errors import CheckpointError, ConfigError
from medfm.models.init import parse_init_arg, write_init_report

TOL = 1e-4
W, DEPTH, HEADS = 64, 2, 2


def perturb(model):
    """Non-trivial values everywhere (libraries zero-init biases, class tokens, layer-scale...)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


#: test → max abs difference (written to $MEDFM_FIDELITY_JSON when set, for the closing note's table)
FIDELITY = {}


def maxdiff(a, b) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def check(name: str, got, want) -> float:
    diff = maxdiff(got, want)
    FIDELITY[name] = diff
    assert diff <= TOL, (name, diff)
    return diff


@pytest.fixture(scope="module", autouse=True)
def _dump_fidelity():
    yield
    import os

    if os.environ.get("MEDFM_FIDELITY_JSON"):
        with open(os.environ["MEDFM_FIDELITY_JSON"], "w") as fh:
            json.dump(FIDELITY, fh, indent=1)


def build(modalities, towers=None, **extra):
    torch.manual_seed(1)
    cfg = {"name": "medfm-tiny", "trunk": {"width": W, "depth": DEPTH, "heads": HEADS}, "modalities": modalities,
           **extra}
    if towers:
        cfg["towers"] = towers
    return medfm.create_model(cfg).eval()


def timm_vit(**kw):
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=16, embed_dim=W, depth=DEPTH, num_heads=HEADS, num_classes=5)
    args.update(kw)
    return perturb(timm.models.vision_transformer.VisionTransformer(**args))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_timm_vit_file_reproduces_features(tmp_path, suffix):
    ref = timm_vit(global_pool="token")
    path = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    else:
        torch.save(ref.state_dict(), path)
    model = build({"fundus": {"size": 32, "init": {"path": str(path), "format": "auto", "strict": True}}},
                  towers={"fundus": {"pool": "cls"}})
    rep = model.init_reports["fundus"]
    assert rep["source"]["format"] == "timm" and rep["source"]["name"] == path.name
    assert {"head.weight", "head.bias"} <= set(rep["unexpected"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)  # class token after the final norm
        tower = model.tower("fundus")
        got = tower.pool(tower.forward_features(x))
    check(f"timm {suffix} (class token)", got, want)


def _mae_layout(ref, with_decoder=True):
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("head.")}
    if with_decoder:  # MAE's decoder keys (models_mae.MaskedAutoencoderViT)
        sd.update({"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.randn(32, W),
                   "decoder_embed.bias": torch.zeros(32), "decoder_pos_embed": torch.zeros(1, 5, 32),
                   "decoder_blocks.0.norm1.weight": torch.ones(32), "decoder_norm.weight": torch.ones(32),
                   "decoder_pred.weight": torch.randn(768, 32), "decoder_pred.bias": torch.zeros(768)})
    return sd


@pytest.mark.parametrize("fmt", ["mae", "retfound"])
def test_mae_and_retfound_layout_reproduce_mean_pooled_features(tmp_path, fmt):
    """MAE/RETFound ``{"model": ...}`` .pth; reference: timm ViT with average pooling over patch tokens."""
    ref = timm_vit(global_pool="avg", fc_norm=False, num_classes=0)
    path = tmp_path / f"{fmt}.pth"
    torch.save({"model": _mae_layout(ref, with_decoder=fmt == "mae"), "epoch": 799}, path)
    model = build({"fundus": {"size": 32, "init": {"path": str(path), "format": fmt if fmt == "retfound" else "auto",
                                                    "strict": True}}})
    rep = model.init_reports["fundus"]
    assert rep["source"]["format"] == fmt
    if fmt == "mae":
        assert "decoder_embed.weight" in rep["unexpected"] and "mask_token" in rep["unexpected"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)
        tower = model.tower("fundus")
        got = tower.pool(tower.forward_features(x))
    check(f"{fmt} .pth (mean of patch tokens)", got, want)


def test_octcube_layout_reproduces_a_reference_3d_vit(tmp_path):
    """OCTCube's layout (3D tubelets, separable spatial/temporal positions, class token) against a forward pass
    written from its definition with timm blocks."""
    ref = timm_vit(num_classes=0)
    torch.manual_seed(5)
    T, P, G = 2, 3, 2  # 2 temporal tokens of 3 frames, 2x2 spatial grid
    conv = torch.nn.Conv3d(1, W, (P, 16, 16), stride=(P, 16, 16))
    sp, tp = torch.randn(1, G * G, W) * 0.1, torch.randn(1, T, W) * 0.1
    cls_pos = torch.randn(1, 1, W) * 0.1
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith(("patch_embed", "pos_embed"))}
    sd.update({"patch_embed.proj.weight": conv.weight.detach(), "patch_embed.proj.bias": conv.bias.detach(),
               "pos_embed_spatial": sp, "pos_embed_temporal": tp, "pos_embed_class": cls_pos})
    path = tmp_path / "octcube.pth"
    torch.save({"model": sd}, path)
    model = build({"oct": {"frames": T * P, "size": [32, 32], "patch_size": [P, 16, 16],
                           "init": {"path": str(path), "strict": True}}}, towers={"oct": {"pool": "cls"}})
    assert model.init_reports["oct"]["source"]["format"] == "octcube"
    x = torch.randn(2, 1, T * P, 32, 32)
    with torch.no_grad():
        tok = conv(x).flatten(2).transpose(1, 2)  # (B, T*G*G, W), t outer
        pos = (tp[:, :, None] + sp[:, None]).reshape(1, -1, W)
        tok = torch.cat([(ref.cls_token + cls_pos).expand(2, -1, -1), tok + pos], 1)
        want = ref.norm(ref.blocks(tok))[:, 0]
        tower = model.tower("oct")
        got = tower.pool(tower.forward_features(x))
    check("octcube .pth (class token, 3D)", got, want)


@pytest.mark.parametrize("classification", [False, True])
def test_monai_vit_reproduces_features(tmp_path, classification):
    from monai.networks.nets import ViT

    torch.manual_seed(0)
    ref = perturb(ViT(in_channels=3, img_size=(16, 32, 32), patch_size=(8, 16, 16), hidden_size=W, mlp_dim=4 * W,
                      num_layers=DEPTH, num_heads=HEADS, classification=classification, num_classes=2))
    path = tmp_path / "monai_vit.pt"
    torch.save(ref.state_dict(), path)
    model = build({"ct": {"size": [16, 32, 32], "patch_size": [8, 16, 16],
                          "init": {"path": str(path), "strict": True}}})
    rep = model.init_reports["ct"]
    assert rep["source"]["format"] == "monai"
    assert any("zeros" in a["how"] for a in rep["adapted"])  # MONAI's qkv has no bias
    x = torch.randn(2, 3, 16, 32, 32)
    with torch.no_grad():
        tower = model.tower("ct")
        tokens = tower.forward_features(x)
        if classification:  # features before MONAI's classification head: the class token after the norm
            feats = ref.patch_embedding(x)
            feats = torch.cat([ref.cls_token.expand(2, -1, -1), feats], 1)
            for blk in ref.blocks:
                feats = blk(feats)
            want, got = ref.norm(feats)[:, 1:].mean(1), tower.pool(tokens)
        else:
            want, got = ref(x)[0].mean(1), tower.pool(tokens)
    check(f"monai ViT .pt ({'with' if classification else 'no'} class token, mean)", got, want)


def _bert_folder(tmp_path, vocab_words, name="bert", safe=True):
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    d = tmp_path / name
    d.mkdir()
    (d / "vocab.txt").write_text("\n".join(vocab_words) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(d / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(d))
    torch.manual_seed(0)
    ref = BertForMaskedLM(BertConfig(vocab_size=len(vocab_words), hidden_size=W, num_hidden_layers=2,
                                     num_attention_heads=HEADS, intermediate_size=2 * W,
                                     max_position_embeddings=64))
    perturb(ref)
    ref.save_pretrained(str(d))
    if not safe:  # the older layout: a torch pickle of the state dict (read with weights_only=True)
        (d / "model.safetensors").unlink()
        torch.save(ref.state_dict(), d / "pytorch_model.bin")
    return d, ref, tok


@pytest.mark.parametrize("layout", ["safetensors", "bin", "encoder-only"])
def test_hf_bert_folder_reproduces_cls_features(tmp_path, layout):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "no acute cardiopulmonary process the lungs are clear " \
        "small left pleural effusion mild cardiomegaly".split()
    safe = layout != "bin"
    d, ref, tok = _bert_folder(tmp_path, words, safe=safe)
    if layout == "encoder-only":  # a BertModel folder (no MLM head), as most biomedical BERTs are published
        ref.bert.save_pretrained(str(d))
    model = build({"text": {"init": {"path": str(d), "strict": True}}})
    rep = model.init_reports["text"]
    assert rep["source"]["format"] == "hf"
    assert rep["source"]["file"] == ("model.safetensors" if safe else "pytorch_model.bin")
    if layout == "encoder-only":
        assert any(k.startswith("cls.predictions") for k in rep["missing"])
        assert "bert.embeddings.word_embeddings.weight" in rep["matched"]
    batch = model.adapters["text"].tokenize(["the lungs are clear", "small left pleural effusion mild cardiomegaly"])
    with torch.no_grad():
        want = ref.bert(input_ids=batch["x"], attention_mask=batch["mask"]).last_hidden_state[:, 0]
        tower = model.tower("text")
        got = tower.pool(tower.forward_features(batch["x"], batch["mask"]), batch["mask"])
    check(f"hf BERT folder, {layout} (CLS)", got, want)


def test_barcodebert_folder_reproduces_mean_features_and_checks_vocab(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    adapter = medfm.get_modality("dna", k=4, max_length=64)
    vocab = adapter.vocab_size
    torch.manual_seed(0)
    ref = perturb(BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=W, num_hidden_layers=2,
                                             num_attention_heads=HEADS, intermediate_size=2 * W,
                                             max_position_embeddings=64)))
    d = tmp_path / "barcodebert"
    ref.save_pretrained(str(d))
    model = build({"dna": {"k": 4, "max_length": 64, "pool": "mean",
                           "init": {"path": str(d), "format": "barcodebert", "strict": True}}})
    assert model.config["towers"]["dna"]["type"] == "hf"
    item = model.adapters["dna"].preprocess(model.adapters["dna"].read("ACGTACGTTTGACCAGTACGATCGATCGGGCTA"))
    batch = model.adapters["dna"].collate([item, item])
    with torch.no_grad():
        h = ref.bert(input_ids=batch["x"], attention_mask=batch["mask"]).last_hidden_state
        m = batch["mask"][..., None].float()
        want = (h * m).sum(1) / m.sum(1)
        tower = model.tower("dna")
        got = tower.pool(tower.forward_features(batch["x"], batch["mask"]), batch["mask"])
    check("barcodebert folder (mean of real tokens)", got, want)
    with pytest.raises(CheckpointError, match="vocabulary"):  # a k=5 tokenizer does not fit this checkpoint
        build({"dna": {"k": 5, "max_length": 64, "init": {"path": str(d), "format": "barcodebert"}}})


def _open_clip_model(quick_gelu=False, layers=2):
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    m = open_clip.model.CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=layers, width=W, head_width=32,
                                                                   patch_size=16, image_size=32),
                             text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=W, heads=HEADS,
                                                  layers=layers), quick_gelu=quick_gelu)
    return perturb(m)


@pytest.fixture(scope="module")
def open_clip_checkpoint(tmp_path_factory):
    ref = _open_clip_model()
    d = tmp_path_factory.mktemp("oc")
    path = d / "epoch_3.pt"  # open_clip's training checkpoint layout (DDP prefixes)
    torch.save({"epoch": 3, "name": "tiny", "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}},
               path)
    return ref, path


def test_open_clip_pair_reproduces_features_and_zeroshot_logits(open_clip_checkpoint):
    import open_clip

    ref, path = open_clip_checkpoint
    model = build({"fundus": {"size": 32, "init": {"path": str(path), "heads": 2, "strict": True}},
                   "text": {"init": {"path": str(path), "heads": 2, "strict": True}}})
    assert model.embed_dim == 32 and model.init_reports["text"]["source"]["format"] == "open_clip"
    assert model.adapters["fundus"].options["mean"][0] == pytest.approx(0.48145466)  # open_clip's normalisation
    images = torch.randn(3, 3, 32, 32)
    prompts = ["a fundus photograph with diabetic retinopathy", "a normal fundus", "glaucoma"]
    batch = model.adapters["text"].tokenize(prompts)
    with torch.no_grad():
        img_ref, txt_ref, scale_ref = ref(images, open_clip.tokenize(prompts))
        logits_ref = scale_ref * img_ref @ txt_ref.T
        img = model.encode("fundus", images)
        txt = model.encode("text", batch["x"], batch["mask"])
        logits = model.logit_scale.exp() * img @ txt.T
    check("open_clip image embedding", img, img_ref)
    check("open_clip text embedding", txt, txt_ref)
    check("open_clip zero-shot logits (scale×cos)", logits, logits_ref)
    assert torch.equal(logits.argmax(1), logits_ref.argmax(1))


def test_open_clip_quick_gelu_weights_need_act_quick_gelu(tmp_path):
    """OpenAI-trained CLIP weights use QuickGELU, which the file does not record: ``act=quick_gelu`` reproduces them,
    the default (exact GELU) does not."""
    import open_clip

    ref = _open_clip_model(quick_gelu=True, layers=1)
    path = tmp_path / "open_clip_pytorch_model.bin"  # the hub's older layout: a torch pickle of the state dict
    torch.save(ref.state_dict(), path)
    prompts = ["a normal fundus", "glaucoma"]
    with torch.no_grad():
        want = ref.encode_text(open_clip.tokenize(prompts), normalize=True)
    for act, ok in (("quick_gelu", True), (None, False)):
        spec = {"path": str(path), "heads": 2, **({"act": act} if act else {})}
        model = build({"text": {"init": spec}})
        batch = model.adapters["text"].tokenize(prompts)
        with torch.no_grad():
            got = model.encode("text", batch["x"], batch["mask"])
        if ok:
            check("open_clip text, QuickGELU (act=quick_gelu)", got, want)
        else:
            assert maxdiff(got, want) > 10 * TOL


def test_open_clip_into_a_grey_xray_tower_adapts_and_reports(open_clip_checkpoint):
    ref, path = open_clip_checkpoint
    model = build({"xray": {"size": 64, "init": {"path": str(path), "heads": 2}}})
    adapted = {a["key"]: a["how"] for a in model.init_reports["xray"]["adapted"]}
    assert "in_chans" in adapted["embedder.proj.weight"]  # RGB → grey
    assert "grid (2, 2)→(4, 4)" in adapted["embedder.pos_embed"]  # 32 px → 64 px: positions resampled
    grey = torch.randn(1, 1, 32, 32)
    with torch.no_grad():  # grey through the adapted conv == grey replicated to RGB through open_clip's conv1
        got = model.tower("xray").embedder.proj(grey)
        want = ref.visual.conv1(grey.repeat(1, 3, 1, 1))
    assert maxdiff(got, want) <= TOL


def test_medfm_single_tower_import(tmp_path):
    src = build({"ecg": {}, "text": {}})
    src.adapters["text"].fit(["a b c d"] * 3)
    src.save_pretrained(tmp_path / "src")
    model = build({"ecg": {"init": {"path": str(tmp_path / "src"), "strict": True}}})
    assert model.init_reports["ecg"]["source"]["format"] == "medfm"
    x = torch.randn(2, 12, 5000)
    with torch.no_grad():
        assert maxdiff(model.encode("ecg", x), src.encode("ecg", x)) == 0.0


def test_strict_names_the_first_missing_keys_and_reports_are_saved(tmp_path):
    ref = timm_vit()
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("blocks.1.")}
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"strict import into the 'fundus' tower.*trunk\.blocks\.1\."):
        build({"fundus": {"size": 32, "init": {"path": str(tmp_path / "partial.pth"), "strict": True}}})
    model = build({"fundus": {"size": 32, "init": str(tmp_path / "partial.pth")}})
    path = write_init_report(tmp_path / "run", model)
    rep = json.loads(path.read_text())["fundus"]
    assert any(k.startswith("trunk.blocks.1.") for k in rep["missing"])
    assert rep["source"]["sha256"] == __import__("hashlib").sha256((tmp_path / "partial.pth").read_bytes()).hexdigest()
    model.save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["init_sources"]["fundus"]["name"] == "partial.pth"
    assert "init" not in cfg["model"]["modalities"]["fundus"]
    assert medfm.load_pretrained(tmp_path / "ckpt").init_sources["fundus"]["sha256"] == rep["source"]["sha256"]


def test_pickled_code_is_refused_with_the_reason(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": {"w": Evil()}}, f)
    with pytest.raises(CheckpointError, match=r"evil\.pth.*(weights_only|Unsupported|global)"):
        build({"fundus": {"size": 32, "init": {"path": str(tmp_path / "evil.pth"), "format": "timm"}}})


def test_init_spec_errors_and_cli_form(tmp_path):
    assert parse_init_arg("oct=/x/y.pth,format=retfound,strict") == (
        "oct", {"path": "/x/y.pth", "format": "retfound", "strict": True})
    with pytest.raises(CheckpointError, match="not there"):
        build({"fundus": {"size": 32, "init": str(tmp_path / "none.pth")}})
    torch.save(timm_vit().state_dict(), tmp_path / "v.pth")
    with pytest.raises(ConfigError, match="unknown"):
        build({"fundus": {"size": 32, "init": {"path": str(tmp_path / "v.pth"), "format": "nope"}}})
