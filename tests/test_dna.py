"""DNA adapter: FASTA/TSV readers, IUPAC clean-up, k-mer/BPE tokenizers, real BOLD barcodes."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medfm.errors import ConfigError, DataError
from medfm.modalities import dna as D
from medfm.modalities import tokenizers as tk

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BOLD = DATA / "dna" / "coi_barcodes_100_species.tsv"


def test_clean_sequence_rules():
    assert D.clean_sequence("acgu-..ACGT\nTT") == "ACGTACGTTT"
    assert D.clean_sequence("ARYSWKMBDHVNT") == "A" + "N" * 11 + "T"
    with pytest.raises(DataError, match="'X' at position 3") as e:
        D.clean_sequence("ACGXT", source="rec7")
    assert e.value.source == "rec7" and e.value.field == "sequence"
    with pytest.raises(DataError, match="no A/C/G/T"):
        D.clean_sequence("NNRY--", source="rec8")


def test_fasta_plain_and_gzip(tmp_path):
    text = ">s1 first\nACGT-RYAC\nGGTT\n>s2\nuuaacg\n"
    (tmp_path / "a.fasta").write_text(text)
    with gzip.open(tmp_path / "a.fa.gz", "wt") as fh:
        fh.write(text)
    expect = [("s1", "ACGTNNACGGTT"), ("s2", "TTAACG")]
    assert D.read_fasta(tmp_path / "a.fasta") == expect
    assert D.read_fasta(tmp_path / "a.fa.gz") == expect
    (tmp_path / "bad.fasta").write_text(">ok\nACGT\n>broken\nAC*GT\n")
    with pytest.raises(DataError, match="broken"):
        D.read_fasta(tmp_path / "bad.fasta")


def test_sequence_table(tmp_path):
    df = pd.DataFrame({"processid": ["p1", "p2"], "dna_barcode": ["ac-gtn", "GGYYT"], "genus_name": ["A", "B"]})
    df.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    out = D.read_sequence_table(tmp_path / "t.tsv")
    assert out["nucleotides"].tolist() == ["ACGTN", "GGNNT"] and out["genus_name"].tolist() == ["A", "B"]
    pd.DataFrame({"processid": ["p9"], "nucleotides": ["AC!G"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="p9"):
        D.read_sequence_table(tmp_path / "bad.csv")


@pytest.mark.parametrize("k", [4, 5, 6])
def test_kmer_tokenizer_vocab_and_roundtrip(k):
    a = D.DNAAdapter(k=k, pad_with_n=False)
    assert a.vocab_size == 5 ** k + len(tk.SPECIAL_TOKENS)
    rng = np.random.default_rng(k)
    seq = "".join(rng.choice(list("ACGTN"), 97))
    ids = a.encode(a.prepare(seq))
    assert ids[0] == tk.CLS_ID and ids[-1] == tk.SEP_ID and len(ids) == 97 // k + 2
    vocab = a.tokenizer.get_vocab()
    assert ids[1:-1] == [vocab[seq[i:i + k]] for i in range(0, 97 - k + 1, k)]
    assert a.decode(ids) == seq[: 97 - 97 % k]
    assert tk.UNK_ID not in ids


def test_overlapping_stride_and_padding_to_660():
    a = D.DNAAdapter(k=4, stride=1, pad_with_n=False, add_special_tokens=False)
    v = a.tokenizer.get_vocab()
    assert a.encode("ACGTAC") == [v["ACGT"], v["CGTA"], v["GTAC"]]
    b = D.DNAAdapter(pad_with_n=True)  # BarcodeBERT layout: k=6, 660 nt padded with N
    item = b.load("ACGT" * 10, sample_id="x")
    assert item["x"].shape == (660 // 6 + 2,) and item["mask"].all()
    assert b.decode(item["x"]) == ("ACGT" * 10 + "N" * 620)[:660]
    assert b.max_tokens() == item["x"].numel()
    long = b.load("ACGT" * 300)
    assert b.decode(long["x"]) == ("ACGT" * 300)[:660]
    # default: no N-padding; the collate pads with [PAD] under mask 0
    c = D.DNAAdapter()
    short, longer = c.load("ACGT" * 10), c.load("ACGT" * 20)
    assert short["x"].shape == (40 // 6 + 2,)
    batch = c.collate([short, longer])
    assert batch["x"].shape == (2, 80 // 6 + 2)
    assert batch["mask"][0].sum() == 40 // 6 + 2 and (batch["x"][0, 40 // 6 + 2:] == tk.PAD_ID).all()


def test_random_offset_augmentation():
    a = D.DNAAdapter(k=6, pad_with_n=False)
    seq = "".join(np.random.default_rng(0).choice(list("ACGT"), 300))
    rec = a.read(seq)
    decoded = {a.decode(a.preprocess(rec, train=True, rng=np.random.default_rng(s))["x"]) for s in range(20)}
    assert len(decoded) > 1
    for d in decoded:
        off = seq.index(d)
        assert 0 <= off < 6 and len(d) % 6 == 0
    assert a.decode(a.preprocess(rec)["x"]) == seq[:300]  # eval: offset 0
    b = D.DNAAdapter(k=6, pad_with_n=True)  # padded with N: the cached eval item re-drawn by augment()
    rec = b.read(seq[:250])
    for s in range(5):
        want = b.preprocess(rec, train=True, rng=np.random.default_rng(s))
        got = b.augment(b.preprocess(rec), np.random.default_rng(s))
        assert torch.equal(got["x"], want["x"])


def test_collate_pads_with_pad_id():
    a = D.DNAAdapter(k=4, pad_with_n=False)
    items = [a.load("ACGT" * n) for n in (3, 7)]
    b = a.collate(items)
    assert b["x"].shape == (2, 9) and b["mask"].tolist()[0] == [1] * 5 + [0] * 4
    assert torch.all(b["x"][0, 5:] == tk.PAD_ID) and torch.equal(b["x"][1], items[1]["x"])


def test_save_load_tokenizer_and_bpe(tmp_path):
    a = D.DNAAdapter(k=5)
    a.save_pretrained(tmp_path)
    b = D.DNAAdapter(k=5)
    b.tokenizer = None
    b.load_pretrained(tmp_path)
    assert b.encode(b.prepare("ACGTTGCAAT")) == a.encode(a.prepare("ACGTTGCAAT"))

    rng = np.random.default_rng(1)
    motifs = ["ACGTTGCA", "TTTTAAAA", "GGCCGGCC"]
    train = ["".join(rng.choice(motifs, 40)) for _ in range(50)]
    bpe = D.DNAAdapter(tokenizer="bpe", bpe_vocab_size=64, pad_with_n=False)
    with pytest.raises(ConfigError):
        bpe.encode("ACGT")
    bpe.fit(train)
    ids = bpe.encode(bpe.prepare(train[0]))
    assert bpe.decode(ids) == train[0]
    assert len(ids) - 2 < len(train[0]) / 4  # merges learnt the repeated motifs
    assert max(ids) < bpe.vocab_size == 64
    bpe.save_pretrained(tmp_path / "bpe")
    again = D.DNAAdapter(tokenizer="bpe", bpe_vocab_size=64, pad_with_n=False)
    again.load_pretrained(tmp_path / "bpe")
    assert again.encode(train[1]) == bpe.encode(train[1])


def test_tower_configs():
    a = D.DNAAdapter()
    cfg = a.tower_config()
    assert cfg["type"] == "vit" and cfg["embedder"]["vocab_size"] == a.vocab_size
    assert cfg["masked"] == {"kind": "mlm", "mask_ratio": 0.5}
    h = D.DNAAdapter(tower="hf", hf_config={"hidden_size": 32}).tower_config()
    assert h["type"] == "hf" and h["mask_id"] == tk.MASK_ID and h["pad_id"] == tk.PAD_ID
    assert h["hf_config"]["hidden_size"] == 32 and set(h["special_ids"]) == set(range(5))
    with pytest.raises(ConfigError):
        D.DNAAdapter(tower="cnn")


def test_real_bold_barcodes_and_model():
    if not BOLD.is_file():
        pytest.skip(f"real DNA data not found at {BOLD}")
    df = D.read_sequence_table(BOLD)
    assert len(df) == 5000 and df["nucleotides"].str.fullmatch("[ACGTN]+").all()
    raw = pd.read_csv(BOLD, sep="\t", dtype=str)
    assert (df["nucleotides"].str.len() <= raw["nucleotides"].str.len()).all()
    a = D.DNAAdapter(k=6)
    ids = a.encode_batch([a.prepare(s) for s in df["nucleotides"][:200]])
    for s, i in zip(df["nucleotides"][:200], ids):
        p = a.prepare(s)
        assert a.decode(i) == p[: len(p) // 6 * 6]  # non-overlapping 6-mers: an incomplete tail is dropped
    import medfm

    torch.manual_seed(0)
    model = medfm.create_model({"name": "medfm-tiny", "modalities": {"dna": {"k": 6}}})
    batch = a.collate([a.load(s) for s in df["nucleotides"][:4]])
    z = model.encode("dna", batch["x"], batch["mask"])
    assert z.shape == (4, model.embed_dim) and torch.isfinite(z).all()


@pytest.mark.parametrize("k,stride,alphabet", [(4, 4, "ACGTN"), (5, 2, "ACGTN"), (6, 6, "ACGT"), (3, 1, "ACGT")])
def test_vectorised_kmer_ids_equal_the_hf_tokenizer(k, stride, alphabet):
    a = D.DNAAdapter(k=k, stride=stride, alphabet=alphabet, pad_with_n=False)
    rng = np.random.default_rng(k * 10 + stride)
    seqs = ["".join(rng.choice(list("ACGTN"), n, p=[0.24] * 4 + [0.04])) for n in (k - 1, k, 50, 333)]
    fast = [a.encode(s) for s in seqs]
    slow = a.encode_batch(seqs, backend="tokenizers")
    assert fast == slow
    same_len = ["".join(rng.choice(list("ACGTN"), 97)) for _ in range(8)]
    assert a.encode_batch(same_len) == a.encode_batch(same_len, backend="tokenizers")
    if alphabet == "ACGT":
        assert any(tk.UNK_ID in f for f in fast)  # N-containing k-mers are unknown


def _bag_model(**dna):
    import medfm

    torch.manual_seed(0)
    opts = {"k": 5, "max_length": 660, "kmer_bag": 4, **dna}
    return medfm.create_model({"name": "medfm-tiny", "modalities": {"dna": opts}})


@pytest.mark.parametrize("k,stride,bag_k", [(5, 5, 4), (6, 6, 6), (4, 2, 3)])
def test_kmer_bag_counts_equal_scikit_learn_char_ngrams(k, stride, bag_k):
    from sklearn.feature_extraction.text import CountVectorizer

    model = _bag_model(k=k, stride=stride, kmer_bag=bag_k)
    a, emb = model.adapters["dna"], model.towers["dna"].embedder
    rng = np.random.default_rng(k)
    seqs = ["".join(rng.choice(list("ACGTN"), n, p=[0.24] * 4 + [0.04])) for n in (30, 61, 200, 17)]
    items = [a.preprocess(a.read(s)) for s in seqs]
    batch = a.collate(items)
    counts = emb.kmer_counts(batch["x"], batch["mask"]).numpy()
    vec = CountVectorizer(analyzer="char", ngram_range=(bag_k, bag_k), lowercase=False)
    for s, row in zip(seqs, counts):
        kept = s[: (len(s) - k) // stride * stride + stride] if stride < k else s[: len(s) // k * k]
        if stride < k:  # the bag sees each token's first `stride` letters
            kept = kept[: ((len(s) - k) // stride + 1) * stride]
        ref = vec.fit([kept]).transform([kept]).toarray()[0] if len(kept) >= bag_k else np.zeros(0)
        names = vec.get_feature_names_out() if len(kept) >= bag_k else []
        want = np.zeros(4 ** bag_k)
        for name, c in zip(names, ref):
            if set(name) <= set("ACGT"):
                want[sum("ACGT".index(ch) * 4 ** (bag_k - 1 - i) for i, ch in enumerate(name))] = c
        np.testing.assert_array_equal(row, want)


def test_kmer_bag_is_offset_invariant_and_random_tower_tracks_kmer_cosine():
    model = _bag_model(kmer_bag=5).eval()
    a = model.adapters["dna"]
    rng = np.random.default_rng(0)
    base = "".join(rng.choice(list("ACGT"), 600))
    seqs = [base, base[1:]] + ["".join(rng.choice(list("ACGT"), 600)) for _ in range(6)]
    batch = a.collate([a.preprocess(a.read(s)) for s in seqs])
    # a 1-base offset changes every non-overlapping 5-mer token of the original ...
    n = int(batch["mask"][1].sum()) - 1
    assert int((batch["x"][0, 1:n] == batch["x"][1, 1:n]).sum()) <= 2
    with torch.no_grad():
        z = model.encode("dna", batch["x"], batch["mask"])
    sim = (z @ z.T).numpy()
    # ... but the random-weights tower (trunk gate 0) still maps it next to the original
    assert sim[0, 1] > 0.95 and sim[0, 2:].max() < sim[0, 1] - 0.2
    assert float(model.towers["dna"].trunk_gate.detach()) == 0.0


def test_random_views_of_a_barcode():
    model = _bag_model(kmer_bag=4)
    a, emb = model.adapters["dna"], model.towers["dna"].embedder
    rng = np.random.default_rng(1)
    seq = "".join(rng.choice(list("ACGT"), 400))
    batch = a.collate([a.preprocess(a.read(s)) for s in (seq, seq[:200])])
    same, m = emb.random_view(batch["x"], batch["mask"], crop=1.0, mutation=0.0)
    assert torch.equal(same, batch["x"]) and torch.equal(m, batch["mask"])
    g = torch.Generator().manual_seed(0)
    v, vm = emb.random_view(batch["x"], batch["mask"], crop=0.5, mutation=0.1, generator=g)
    view = a.decode(v[0][vm[0].bool()].tolist())
    assert 200 <= len(view) <= 400 and v[0, 0] == tk.CLS_ID and v[0, int(vm[0].sum()) - 1] == tk.SEP_ID
    # a cropped window of the original with about 10 % × 3/4 of its bases changed
    best = min(sum(x != y for x, y in zip(view, seq[o:o + len(view)])) for o in range(len(seq) - len(view) + 1))
    assert 0.02 * len(view) < best < 0.15 * len(view)


def test_views_objective_trains_and_bag_model_round_trips(tmp_path):
    import medfm
    from medfm.objectives import build_objective

    if not BOLD.is_file():
        pytest.skip(f"real DNA data not found at {BOLD}")
    df = D.read_sequence_table(BOLD).groupby("species_name").head(1).head(32)
    model = _bag_model(kmer_bag=4, max_length=300)
    a = model.adapters["dna"]
    batch = a.collate([a.preprocess(a.read(s)) for s in df["nucleotides"]])
    full = {"id": list(df["processid"]), "inputs": {"dna": batch}}
    obj = build_objective([{"name": "views", "weight": 1.0, "temperature": 0.1}])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(8):
        loss = obj(model, full, {})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.1, losses
    assert float(model.towers["dna"].trunk_gate.detach()) != 0.0   # the transformer joins in
    model.save_pretrained(tmp_path / "m")
    back = medfm.load_pretrained(tmp_path / "m").eval()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.encode("dna", batch["x"], batch["mask"]), back.encode("dna", batch["x"], batch["mask"]))
