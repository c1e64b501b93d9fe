"""Text adapter: report normalisation, sections, taxonomy strings, WordPiece/HF tokenizers, model round-trip."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from medfm.errors import ConfigError, DataError
from medfm.modalities import text as T
from medfm.modalities import tokenizers as tk

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IU = DATA / "text" / "iu_chest_xray_reports.csv"

REPORTS = [
    "FINDINGS: The heart is normal in size. The lungs are clear.\nIMPRESSION: No acute cardiopulmonary disease.",
    "INDICATION: chest pain.  FINDINGS: Mild cardiomegaly. Small left pleural effusion. IMPRESSION: Cardiomegaly.",
    "Sinus rhythm. Left axis deviation. Abnormal ECG.",
    "Atrial fibrillation with rapid ventricular response. Abnormal ECG.",
] * 5


def test_normalize_and_sections():
    assert T.normalize_report("  The\theart\r\n is\u00a0normal.  ") == "The heart is normal."
    text = T.normalize_report(REPORTS[1])
    secs = T.split_sections(text)
    assert list(secs) == ["INDICATION", "FINDINGS", "IMPRESSION"]
    assert secs["FINDINGS"] == "Mild cardiomegaly. Small left pleural effusion."
    assert T.extract_sections(text, ["impression", "findings"]) == "Cardiomegaly. Mild cardiomegaly. Small left pleural effusion."
    assert T.extract_sections("Sinus rhythm.", ["FINDINGS"]) == "Sinus rhythm."


def test_taxonomy_text():
    row = {"order_name": "Diptera", "family_name": float("nan"), "genus_name": "Aedes",
           "species_name": "Aedes aegypti", "phylum_name": "Arthropoda"}
    assert T.taxonomy_text(row) == "Diptera Aedes Aedes aegypti"
    assert T.taxonomy_text(row, ["phylum_name", "family_name"]) == "Arthropoda"
    a = T.TextAdapter(taxonomy_columns=["order_name", "genus_name"], min_frequency=1, vocab_size=200)
    a.fit([row, {"order_name": "Lepidoptera", "genus_name": "Pieris"}])
    rec = a.read("ignored", row=row, sample_id="s1")
    assert rec.data == "Diptera Aedes"
    assert a.source_from_row(row, "text") == "Diptera Aedes"
    assert a.source_from_row({"order_name": float("nan")}, "text") is None
    with pytest.raises(DataError, match="empty text") as e:
        a.load("x", row={"order_name": "", "genus_name": None}, sample_id="s2")
    assert e.value.source == "s2" and e.value.field == "text"


def test_wordpiece_fit_roundtrip_truncation_and_collate(tmp_path):
    a = T.TextAdapter(vocab_size=300, min_frequency=1, max_length=12)
    with pytest.raises(ConfigError, match="fit"):
        a.load(REPORTS[0])
    a.fit(REPORTS)
    assert a.vocab_size <= 300
    vocab = a.tokenizer.get_vocab()
    assert [vocab[t] for t in tk.SPECIAL_TOKENS] == list(range(5))
    short = "sinus rhythm. abnormal ecg."
    item = a.load(short)
    assert item["x"][0] == tk.CLS_ID and item["x"][-1] == tk.SEP_ID
    assert a.decode(item["x"]) == short
    long = a.load(REPORTS[0])
    assert long["x"].numel() == 12 and long["x"][-1] == tk.SEP_ID
    b = a.collate([item, long])
    assert b["x"].shape == (2, 12) and b["mask"][0].sum() == item["x"].numel()
    assert torch.all(b["x"][0, item["x"].numel():] == tk.PAD_ID)
    with pytest.raises(DataError, match="empty"):
        a.load("   \n ", sample_id="r9")

    a.save_pretrained(tmp_path)
    c = T.TextAdapter(vocab_size=300, max_length=12)
    c.load_pretrained(tmp_path)
    torch.testing.assert_close(c.load(REPORTS[2])["x"], a.load(REPORTS[2])["x"])
    batch = c.tokenize(["Sinus rhythm.", "Atrial fibrillation."])
    assert batch["x"].shape[0] == 2 and batch["mask"].dtype == torch.long


def test_sections_option_applies():
    a = T.TextAdapter(sections=["IMPRESSION"], vocab_size=300, min_frequency=1)
    a.fit(REPORTS)
    assert a.read(REPORTS[0]).data == "No acute cardiopulmonary disease."
    assert a.read(REPORTS[2]).data == REPORTS[2]


def test_local_hf_model_dir_tokenizer_and_tower(tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = list(tk.SPECIAL_TOKENS) + sorted({w.strip(".,:").lower() for r in REPORTS for w in r.split()} | {"."})
    order = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + vocab[5:]  # the usual BERT order
    d = tmp_path / "bert"
    d.mkdir()
    (d / "vocab.txt").write_text("\n".join(order) + "\n")
    transformers.BertTokenizerFast(str(d / "vocab.txt")).save_pretrained(str(d))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(order), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    transformers.BertForMaskedLM(cfg).save_pretrained(str(d))
    a = T.TextAdapter(model_dir=str(d), max_length=32)
    assert a.special_ids["mask"] == 4 and a.special_ids["unk"] == 1 and a.vocab_size == len(order)
    item = a.load("The heart is normal.")
    assert a.decode(item["x"]) == "the heart is normal."
    tc = a.tower_config()
    assert tc["model_dir"] == str(d) and tc["mask_id"] == 4 and tc["vocab_size"] == len(order)
    from medfm.models.hf_tower import HFTower

    tower = HFTower(**{k: v for k, v in tc.items() if k != "type"}).eval()
    assert tower.width == 32


def test_model_roundtrip_with_fitted_tokenizer(tmp_path):
    import medfm

    torch.manual_seed(0)
    a = T.TextAdapter(vocab_size=300, min_frequency=1, max_length=32,
                      hf_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                 "intermediate_size": 64})
    a.fit(REPORTS)
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"text": a.config()}}, adapters={"text": a}).eval()
    b = a.collate([a.load(r) for r in REPORTS[:4]])
    z = model.encode("text", b["x"], b["mask"])
    assert z.shape == (4, model.embed_dim)
    assert torch.isfinite(model.masked_loss("text", b["x"], b["mask"])["loss"])
    model.save_pretrained(tmp_path / "ckpt")
    again = medfm.load_pretrained(tmp_path / "ckpt").eval()
    b2 = again.adapters["text"].collate([again.adapters["text"].load(r) for r in REPORTS[:4]])
    assert torch.equal(b2["x"], b["x"])
    torch.testing.assert_close(again.encode("text", b2["x"], b2["mask"]), z)


def test_real_iu_reports():
    if not IU.is_file():
        pytest.skip(f"real report data not found at {IU}")
    df = pd.read_csv(IU)
    texts = ("FINDINGS: " + df["findings"].fillna("") + " IMPRESSION: " + df["impression"].fillna("")).tolist()
    a = T.TextAdapter(vocab_size=2000, sections=["FINDINGS", "IMPRESSION"], max_length=64)
    a.fit(texts[:3000])
    ids = a.encode_batch([a.read(t).data for t in texts[3000:3200]])
    n_unk = sum(i.count(tk.UNK_ID) for i in ids)
    n_tok = sum(len(i) for i in ids)
    assert n_unk / n_tok < 0.01  # held-out reports are covered by the learnt word pieces
    assert max(len(i) for i in ids) <= 64
    assert a.decode(a.encode_batch(["no acute cardiopulmonary abnormality."])[0]) == "no acute cardiopulmonary abnormality."
