"""Duplicate-aware contrastive targets: identical texts are positives, not negatives."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import medfm
from medfm.data import ManifestDataset, MultiModalCollate
from medfm.objectives import build_objective, clip_loss, siglip_loss
from medfm.modalities.text import duplicate_key

pytestmark = pytest.mark.usefixtures("one_thread")


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def ref_dup_clip(za, zb, log_scale, ka, kb):
    """Loops: P_i = {j : j == i or ka_j == ka_i or kb_j == kb_i}; targets uniform over P_i, both directions."""
    s = min(float(torch.exp(log_scale)), 100.0)
    B = za.shape[0]
    P = [{j for j in range(B) if j == i or (ka is not None and ka[i] >= 0 and ka[j] == ka[i])
          or (kb is not None and kb[i] >= 0 and kb[j] == kb[i])} for i in range(B)]

    def direction(q, k):
        total = 0.0
        for i in range(B):
            logits = [s * float(q[i] @ k[j]) for j in range(B)]
            lse = torch.logsumexp(torch.tensor(logits, dtype=torch.float64), 0)
            total += -sum(logits[j] - float(lse) for j in P[i]) / len(P[i])
        return total / B

    return 0.5 * (direction(za, zb) + direction(zb, za))


def test_duplicate_key_ignores_case_whitespace_punctuation():
    assert duplicate_key("No acute findings.") == duplicate_key("  no ACUTE\tfindings ")
    assert duplicate_key("Normal ECG") == duplicate_key("normal, ECG!")
    assert duplicate_key("no acute findings") != duplicate_key("acute findings")
    assert 0 <= duplicate_key("x") < 2 ** 62
    assert duplicate_key("Normal ECG") == duplicate_key("Normal ECG")  # stable (no salted hash)


def test_duplicate_aware_clip_matches_reference():
    za, zb = unit(7, 5, seed=1), unit(7, 5, seed=2)
    s = torch.tensor(2.0, dtype=torch.float64)
    ka = torch.tensor([0, 1, 2, 3, 4, 5, 6])          # e.g. ECGs: all distinct
    kb = torch.tensor([10, 11, 10, 12, -1, 11, 10])   # texts: 0, 2, 6 and 1, 5 identical; 4 has no key
    got = clip_loss(za, zb, s, keys_a=ka, keys_b=kb)
    assert float(got) == pytest.approx(ref_dup_clip(za, zb, s, ka.tolist(), kb.tolist()), rel=1e-10)
    both = torch.tensor([0, 0, 1, 2, 3, 4, 5])        # duplicates on the other side too
    got2 = clip_loss(za, zb, s, keys_a=both, keys_b=kb)
    assert float(got2) == pytest.approx(ref_dup_clip(za, zb, s, both.tolist(), kb.tolist()), rel=1e-10)
    plain = clip_loss(za, zb, s)
    assert float(plain) == pytest.approx(ref_dup_clip(za, zb, s, None, None), rel=1e-10)
    assert abs(float(got) - float(plain)) > 1e-3
    # unique keys change nothing
    torch.testing.assert_close(clip_loss(za, zb, s, keys_a=ka, keys_b=ka + 100), plain)


def test_duplicate_aware_siglip_labels_duplicates_positive():
    za, zb = unit(5, 4, seed=3), unit(5, 4, seed=4)
    s, b = torch.tensor(1.5, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64)
    kb = torch.tensor([7, 8, 7, 9, 8])
    # with keys equal to the labels of a label-aware loss, the two are the same loss
    torch.testing.assert_close(siglip_loss(za, zb, s, b, keys_b=kb), siglip_loss(za, zb, s, b, labels=kb))


def _report_batch(texts):
    adapter = medfm.get_modality("text", max_length=16, vocab_size=200, min_frequency=1)
    adapter.fit(texts)
    df = pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "patient_id": [f"p{i}" for i in range(len(texts))],
                       "text": texts})
    ds = ManifestDataset(df, {"text": adapter})
    return MultiModalCollate({"text": adapter})([ds[i] for i in range(len(ds))])


def test_collate_keys_identical_reports_and_objective_uses_them():
    texts = ["No acute findings.", "Cardiomegaly with effusion", "no acute findings", "Pneumothorax on the left."]
    batch = _report_batch(texts)
    keys = batch["keys"]["text"]
    assert keys.shape == (4,) and keys[0] == keys[2] and len(set(keys.tolist())) == 3
    assert "content_key" not in batch["inputs"]["text"]  # taken out of what the model sees

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logit_scale = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

        def encode_batch(self, batch):
            return {"ecg": unit(4, 6, seed=5), "text": unit(4, 6, seed=6)}

    batch["present"]["ecg"] = torch.ones(4, dtype=torch.bool)
    model = Model()
    on = build_objective({"name": "clip"})(model, batch, {})["loss"]
    off = build_objective({"name": "clip", "duplicate_positives": False})(model, batch, {})["loss"]
    emb, ls = model.encode_batch(batch), model.logit_scale.detach()  # the objective works in float32
    assert float(off) == pytest.approx(ref_dup_clip(emb["ecg"], emb["text"], ls, None, None), rel=1e-6)
    assert float(on) == pytest.approx(ref_dup_clip(emb["ecg"], emb["text"], ls, None, keys.tolist()), rel=1e-6)
    assert abs(float(on) - float(off)) > 1e-3


def test_two_text_modalities_by_adapter_alias_round_trip(tmp_path):
    """``{"impression": {"adapter": "text"}}``: a second text tower; the checkpoint rebuilds it."""
    from medfm.errors import ConfigError

    hf = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    adapters = {}
    for name, texts in (("findings", ["heart size normal", "left effusion"]), ("impression", ["no acute disease"])):
        adapters[name] = medfm.get_modality(name, adapter="text", vocab_size=60, min_frequency=1, max_length=12,
                                            hf_config=hf)
        adapters[name].fit(texts * 3)
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {}}, adapters=adapters).eval()
    assert model.modalities == ["findings", "impression"]
    assert model.config_with_adapters()["modalities"]["impression"]["adapter"] == "text"
    model.save_pretrained(tmp_path / "m")
    back = medfm.load_pretrained(tmp_path / "m").eval()
    from medfm.evaluation.embed import encode_values

    for m in ("findings", "impression"):
        torch.testing.assert_close(torch.from_numpy(encode_values(back, m, ["left effusion"])),
                                   torch.from_numpy(encode_values(model, m, ["left effusion"])))
    with pytest.raises(ConfigError, match="findings"):
        medfm.get_modality("findings")  # without adapter= the name must be a registered modality
