"""BiomedCLIP-style family: open_clip's own preprocessing + model against medfm's adapter + towers.

The reference is built by open_clip at random init (timm ViT-Ti/16 image tower, a tiny BERT text
tower, BiomedCLIP's MLP text projection and CLS pooling), saved in BiomedCLIP's published layout
and loaded back by open_clip (``local-dir:``) with its own transform and tokenizer; medfm imports
the same folder through the ``biomedclip`` preset. Real file: scikit-image's fundus photograph.
"""
import pytest
import torch

from family_fixtures import PROMPTS, RETINA, biomedclip_folder

open_clip = pytest.importorskip("open_clip")

import medfm  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.set_num_threads(1)
    folder = biomedclip_folder(tmp_path_factory.mktemp("fam"))
    ref, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    ref.eval()
    model = medfm.create_model({"name": "biomedclip", "modalities": {
        "image": {"init": {"path": str(folder), "format": "open_clip_hf", "strict": True}},
        "text": {"init": {"path": str(folder)}}}}).eval()
    return folder, ref, preprocess, tokenizer, model


def test_image_embedding_matches_open_clip_from_the_raw_file(pair):
    from PIL import Image

    _, ref, preprocess, _, model = pair
    x_ref = preprocess(Image.open(RETINA))[None]
    item = model.adapters["image"].load(str(RETINA))
    assert item["x"].shape == x_ref.shape[1:]
    assert (item["x"] - x_ref[0]).abs().max() < 1e-5  # the preprocessing itself
    with torch.no_grad():
        z_ref = ref.encode_image(x_ref)
        z = model.encode("image", item["x"][None], normalize=False)
    diff = float((z - z_ref).abs().max())
    print(f"biomedclip image embedding max abs diff {diff:.2e}")
    assert diff <= 1e-4
    assert float(z_ref.abs().max()) > 1e-2  # not a trivially small embedding


def test_text_embedding_and_zero_shot_logits_match_open_clip(pair):
    from PIL import Image

    _, ref, preprocess, tokenizer, model = pair
    toks = tokenizer(PROMPTS)
    batch = model.adapters["text"].tokenize(PROMPTS)
    assert torch.equal(batch["x"], toks)
    with torch.no_grad():
        t_ref = ref.encode_text(toks)
        t = model.encode("text", batch["x"], batch["mask"], normalize=False)
        assert float((t - t_ref).abs().max()) <= 1e-4
        img_ref = ref.encode_image(preprocess(Image.open(RETINA))[None], normalize=True)
        logits_ref = ref.logit_scale.exp() * img_ref @ ref.encode_text(toks, normalize=True).T
        img = model.encode("image", model.adapters["image"].load(str(RETINA))["x"][None])
        logits = model.logit_scale.exp() * img @ model.encode("text", batch["x"], batch["mask"]).T
    diff = float((logits - logits_ref).abs().max())
    print(f"biomedclip zero-shot logits max abs diff {diff:.2e}")
    assert diff <= 1e-4
    assert logits_ref.std() > 0  # the prompts score differently


def test_import_report_and_departures(pair, tmp_path):
    folder = pair[0]
    model = pair[4]
    rep = model.init_reports["image"]
    assert not rep["missing"] and not rep["mismatched"]
    assert "departure" not in " ".join(rep["notes"])
    # another resize is a departure named in the report, and refused under strict
    cfg = {"name": "biomedclip", "modalities": {"image": {"size": 256, "init": {"path": str(folder)}},
                                                "text": {"init": {"path": str(folder)}}}}
    loose = medfm.create_model(cfg)
    assert any("size=256" in n for n in loose.init_reports["image"]["notes"])
    from medfm.card import render_model_card
    from medfm.models.init import write_init_report

    loose.save_pretrained(tmp_path / "loose")
    write_init_report(tmp_path / "loose", loose)
    card = render_model_card(tmp_path / "loose")
    assert "departure from the biomedclip input spec: size=256" in card
    cfg["modalities"]["image"]["init"]["strict"] = True
    with pytest.raises(medfm.errors.CheckpointError, match="size=256"):
        medfm.create_model(cfg)


def test_save_load_and_preprocessing_spec_round_trip(pair, tmp_path):
    model = pair[4]
    model.save_pretrained(tmp_path / "m")
    cfg_text = (tmp_path / "m" / "config.json").read_text()
    assert str(pair[0]) not in cfg_text  # no path of this machine in the checkpoint
    back = medfm.load_pretrained(tmp_path / "m").eval()
    x = model.adapters["image"].load(str(RETINA))["x"][None]
    b = back.adapters["text"].tokenize(PROMPTS)
    with torch.no_grad():
        assert torch.allclose(back.encode("image", x), model.encode("image", x), atol=1e-6)
        assert torch.allclose(back.encode("text", b["x"], b["mask"]), model.encode("text", b["x"], b["mask"]), atol=1e-6)
    spec = back.adapters["image"].inference_spec()
    assert spec["family"] == "biomedclip" and spec["spec"]["interpolation"] == "bicubic" and spec["sources"]


def test_contrastive_step_trains_both_towers_and_freezing_holds(pair, tmp_path):
    from medfm.registry import OBJECTIVES

    model = medfm.load_pretrained(_saved(pair[4], tmp_path))
    img = model.adapters["image"]
    x = torch.stack([img.load(str(RETINA))["x"], img.load(str(RETINA))["x"].flip(-1)])
    t = model.adapters["text"].tokenize(PROMPTS[:2])
    batch = {"id": ["a", "b"], "patient_id": ["p", "q"],
             "present": {"image": torch.tensor([True, True]), "text": torch.tensor([True, True])},
             "inputs": {"image": {"x": x}, "text": t}, "n_skipped": 0}
    for p in model.towers["image"].parameters():  # a frozen image tower, as a locked-image recipe does
        p.requires_grad_(False)
    frozen = {n: v.clone() for n, v in model.towers["image"].state_dict().items()}
    text_before = {n: v.clone() for n, v in model.towers["text"].state_dict().items()}
    model.set_grad_checkpointing(True)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    out = model(batch, OBJECTIVES.get("clip")())
    out["loss"].backward()
    opt.step()
    assert torch.isfinite(out["loss"])
    assert all(torch.equal(v, frozen[n]) for n, v in model.towers["image"].state_dict().items())
    assert any(not torch.equal(v, text_before[n]) for n, v in model.towers["text"].state_dict().items())


def _saved(model, tmp_path):
    model.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_the_published_bin_file_is_read_with_weights_only(pair, tmp_path):
    """BiomedCLIP's hub folder holds open_clip_pytorch_model.bin: read with torch.load(weights_only=True)."""
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    shutil.copytree(pair[0], folder)
    torch.save(load_file(str(folder / "open_clip_model.safetensors")), str(folder / "open_clip_pytorch_model.bin"))
    (folder / "open_clip_model.safetensors").unlink()
    model = medfm.create_model({"name": "biomedclip", "modalities": {"image": {"init": str(folder)},
                                                                     "text": {"init": str(folder)}}}).eval()
    assert model.init_sources["image"]["file"] == "open_clip_pytorch_model.bin"
    x = model.adapters["image"].load(str(RETINA))["x"][None]
    with torch.no_grad():
        assert torch.equal(model.encode("image", x), pair[4].encode("image", x))
