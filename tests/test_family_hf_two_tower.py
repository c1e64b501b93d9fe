"""CLIP and SigLIP in transformers' layout: transformers' own image processor, tokenizer and model
against medfm's adapters and ``hf_encoder`` towers, from the raw file to embeddings and zero-shot logits.

The references are ``CLIPModel`` / ``SiglipModel`` at random init (tiny configs of the published
architecture), saved with ``save_pretrained`` beside their image processor and a tokenizer.
"""
import pytest
import torch

from family_fixtures import PROMPTS, RETINA, hf_two_tower_folder

import medfm  # noqa: E402


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.fixture(scope="module", params=["clip", "siglip"])
def pair(request, tmp_path_factory):
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    torch.set_num_threads(1)
    kind = request.param
    folder = hf_two_tower_folder(tmp_path_factory.mktemp(kind), kind)
    ref = AutoModel.from_pretrained(str(folder)).eval()
    proc = AutoImageProcessor.from_pretrained(str(folder))
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = medfm.create_model({"name": f"{kind}-hf", "modalities": {
        "image": {"init": {"path": str(folder), "format": "hf_two_tower", "strict": True}},
        "text": {"init": {"path": str(folder), "format": "hf_two_tower"}}}}).eval()
    return kind, folder, ref, proc, tok, model


def _ref_text_inputs(kind, tok, model):
    n = model.adapters["text"].options["max_length"]
    enc = tok(PROMPTS, padding="max_length", max_length=n, truncation=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"]} if kind == "siglip" else dict(enc)  # SigLIP runs without a mask


def test_embeddings_and_zero_shot_logits_match_transformers(pair):
    from PIL import Image

    kind, _, ref, proc, tok, model = pair
    pixels = proc(images=Image.open(RETINA), return_tensors="pt")["pixel_values"]
    item = model.adapters["image"].load(str(RETINA))
    assert (item["x"] - pixels[0]).abs().max() < 1e-4
    text_in = _ref_text_inputs(kind, tok, model)
    batch = model.adapters["text"].tokenize(PROMPTS)
    assert torch.equal(batch["x"], text_in["input_ids"])
    with torch.no_grad():
        img_ref = _features(ref.get_image_features(pixel_values=pixels))
        txt_ref = _features(ref.get_text_features(**text_in))
        img = model.encode("image", item["x"][None], normalize=False)
        txt = model.encode("text", batch["x"], batch["mask"], normalize=False)
        logits_ref = ref(pixel_values=pixels, **text_in).logits_per_image
        zi, zt = model.encode("image", item["x"][None]), model.encode("text", batch["x"], batch["mask"])
        logits = model.logit_scale.exp() * zi @ zt.T + (model.logit_bias if kind == "siglip" else 0.0)
    d_img, d_txt = float((img - img_ref).abs().max()), float((txt - txt_ref).abs().max())
    d_log = float((logits - logits_ref).abs().max())
    print(f"{kind}: image {d_img:.2e} text {d_txt:.2e} logits {d_log:.2e}")
    assert d_img <= 1e-4 and d_txt <= 1e-4 and d_log <= 1e-4
    assert logits_ref.std() > 0


def test_checkpoint_loads_without_the_folder(pair, tmp_path):
    import shutil

    kind, folder, _, _, _, model = pair
    model.save_pretrained(tmp_path / "m")
    moved = tmp_path / "gone"
    shutil.copytree(folder, moved)
    shutil.rmtree(folder)
    try:
        back = medfm.load_pretrained(tmp_path / "m").eval()
    finally:
        shutil.copytree(moved, folder)
    b = back.adapters["text"].tokenize(PROMPTS)
    x = back.adapters["image"].load(str(RETINA))["x"][None]
    with torch.no_grad():
        assert torch.allclose(back.encode("text", b["x"], b["mask"]), model.encode("text", b["x"], b["mask"]), atol=1e-6)
        assert torch.allclose(back.encode("image", x), model.encode("image", x), atol=1e-6)
