"""DNA barcodes (``dna``): FASTA/TSV readers, IUPAC clean-up, k-mer or BPE tokenisation.

A manifest's ``dna`` cell holds the sequence inline (``input_kind = "value"``). Whole
files are read with :func:`read_fasta` (plain or gzipped, Biopython) and
:func:`read_sequence_table` (BIOSCAN/BOLD TSV or CSV with a ``nucleotides`` or
``dna_barcode`` column and taxonomy columns).

Pipeline (BarcodeBERT defaults)::

    raw ──clean_sequence──► A/C/G/T/N string ──truncate 660──► [random offset < k when train]
        ──pad with N to 660──► non-overlapping 6-mers ──► ids (L,) + mask (L,)

Output of ``preprocess``: ``{"x": LongTensor (L,), "mask": LongTensor (L,), "length": int}``;
``collate`` right-pads with ``[PAD]`` (id 0).
"""
from __future__ import annotations

import functools
import itertools
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from Bio import SeqIO

from medfm.errors import ConfigError, DataError
from medfm.limits import check_text_size, within_text_limit
from medfm.input_files import open_bounded
from medfm.modality import ModalityAdapter, Record, file_reference, require_file
from medfm.models.embedders import DiscreteTokenEmbedder
from medfm.registry import register_embedder, register_modality

from . import tokenizers as tk

#: IUPAC ambiguity codes (mapped to N).
IUPAC_AMBIGUOUS = "RYSWKMBDHVN"
SEQUENCE_COLUMNS = ("nucleotides", "dna_barcode", "sequence", "seq")
TAXONOMY_COLUMNS = ("phylum_name", "class_name", "order_name", "family_name", "subfamily_name", "genus_name",
                    "species_name", "dna_bin", "bin_uri")

_TABLE = str.maketrans({**{c: "N" for c in IUPAC_AMBIGUOUS}, "U": "T"})
_GAPS = re.compile(r"[-.\s]")
_INVALID = re.compile(r"[^ACGTN]")


def clean_sequence(seq: Any, *, source: Optional[str] = None) -> str:
    """Uppercase, U→T, drop gaps (``-``, ``.``, whitespace), IUPAC ambiguity codes → N.

    Raises:
        DataError: another character (names the record and the character), or no A/C/G/T at all.
    """
    if seq is None or (isinstance(seq, float) and np.isnan(seq)):
        raise DataError("empty DNA sequence", source=source, field="sequence")
    s = _GAPS.sub("", str(seq).upper()).translate(_TABLE)
    bad = _INVALID.search(s)
    if bad:
        raise DataError(f"invalid nucleotide {bad.group()!r} at position {bad.start()}", source=source, field="sequence")
    if not any(c in s for c in "ACGT"):
        raise DataError("sequence has no A/C/G/T", source=source, field="sequence")
    return s


def _open_text(path: Path, what: str):
    """A text handle bounded by ``max_file_mb`` (a regular file only; gzip's output bounded too)."""
    return open_bounded(path, what=what, text=True)


def read_fasta(path: os.PathLike, *, clean: bool = True) -> List[Tuple[str, str]]:
    """All records of a FASTA file (``.gz`` too) as ``[(record_id, sequence)]``, cleaned when ``clean``."""
    p = require_file(path, what="FASTA file")
    out = []
    try:
        with _open_text(p, "FASTA file") as fh:
            for rec in SeqIO.parse(fh, "fasta"):
                seq = str(rec.seq)
                check_text_size(seq, source=f"{p}#{rec.id}", field="sequence", what="FASTA record")
                out.append((rec.id, clean_sequence(seq, source=f"{p}:{rec.id}") if clean else seq))
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as e:  # Biopython / gzip in their own words
        raise DataError(f"cannot read FASTA: {type(e).__name__}: {e}", source=str(p)) from e
    if not out:
        raise DataError("no FASTA records", source=str(p))
    return out


def read_sequence_table(path: os.PathLike, *, clean: bool = True, id_column: Optional[str] = None) -> pd.DataFrame:
    """A TSV/CSV (``.gz`` too) of barcodes → DataFrame with a cleaned ``nucleotides`` column.

    The sequence column is the first of ``nucleotides``, ``dna_barcode``, ``sequence``,
    ``seq``; taxonomy columns are kept as they are.
    """
    p = require_file(path, what="sequence table")
    name = p.name.lower().removesuffix(".gz")
    sep = "\t" if name.endswith((".tsv", ".txt")) else ","  # noqa
    with open_bounded(p, what="sequence table") as fh:  # bytes: pandas decodes faster than a text wrapper
        df = pd.read_csv(fh, sep=sep, dtype=str, keep_default_na=True)
    col = next((c for c in SEQUENCE_COLUMNS if c in df.columns), None)
    if col is None:
        raise DataError(f"no sequence column (one of {list(SEQUENCE_COLUMNS)})", source=str(p), field="columns")
    for i, v in enumerate(df[col]):
        if isinstance(v, str):
            check_text_size(v, source=f"{p} row {i + 1}", field=col, what="sequence")
    if clean:
        ids = df[id_column] if id_column else df.get("processid", pd.Series(range(len(df))).astype(str))
        df["nucleotides"] = [clean_sequence(s, source=f"{p}:{i}") for s, i in zip(df[col], ids)]
    elif col != "nucleotides":
        df["nucleotides"] = df[col]
    return df


RECORD_ID_COLUMNS = ("processid", "sampleid", "id", "record_id")
FASTA_SUFFIXES = (".fasta", ".fa", ".fna", ".fas", ".fasta.gz", ".fa.gz", ".fna.gz", ".fas.gz")
TABLE_SUFFIXES = (".tsv", ".csv", ".tsv.gz", ".csv.gz")


@functools.lru_cache(maxsize=8)
def _sequences_of(path: str, mtime_ns: int) -> Tuple[Dict[str, str], List[str]]:
    """``({record_id: raw sequence}, ids in file order)`` of a FASTA or sequence table (cached per file)."""
    p = Path(path)
    if p.name.lower().endswith(FASTA_SUFFIXES):
        recs = read_fasta(p, clean=False)
    else:
        df = read_sequence_table(p, clean=False)
        col = next((c for c in RECORD_ID_COLUMNS if c in df.columns), None)
        ids = df[col].astype(str) if col else pd.Series(range(len(df))).astype(str)
        recs = list(zip(ids, df["nucleotides"]))
    return dict(recs), [r[0] for r in recs]


def sequence_from_file(path: os.PathLike, record_id: Optional[str] = None) -> Tuple[str, str]:
    """``(raw sequence, label)`` of one record of a FASTA/TSV/CSV file: ``record_id``, or the only one.

    Raises:
        DataError: missing file, unknown record id, or several records and no id to pick one.
    """
    p = require_file(path, what="sequence file")
    seqs, order = _sequences_of(str(p.resolve()), p.stat().st_mtime_ns)
    if record_id is None:
        if len(order) != 1:
            raise DataError(f"{len(order)} records in the file; select one with {p.name}#RECORD_ID "
                            f"(e.g. {p.name}#{order[0]})", source=str(p))
        record_id = order[0]
    if record_id not in seqs:
        raise DataError(f"no record {record_id!r} in the file", source=str(p), field="record_id")
    return seqs[record_id], f"{p}#{record_id}"

@register_embedder("kmer_tokens")
class KmerBagEmbedder(DiscreteTokenEmbedder):
    """k-mer token embedder with a bag-of-k-mers global path (tower embedder ``kmer_tokens``).

    Tokens are as :class:`~medfm.models.embedders.DiscreteTokenEmbedder` (the transformer
    and MLM see them unchanged). :meth:`global_features` rebuilds the nucleotides from the
    token ids (canonical k-mer vocabulary over ``alphabet`` after the special tokens), counts
    the *overlapping* ``bag_k``-mers over A/C/G/T (windows with N, a special, a masked or a
    padded position are skipped), L2-normalises the count vector and multiplies it by a
    learnt ``(4**bag_k, width)`` table. With random weights this is a random projection of
    the k-mer frequency vector, so cosine similarity of the random tower already tracks
    k-mer cosine (the classical barcode baseline), and it is the same for a sequence and
    its one-base offset.

    Args:
        k, stride, alphabet, n_special: how the adapter made the token ids.
        bag_k: length of the counted k-mers.
        trunk_gate_init: initial weight of the transformer's pooled tokens in the tower output.
    """

    def __init__(self, width: int, vocab_size: int, max_len: int, *, k: int, stride: int, bag_k: int = 5,
                 alphabet: str = "ACGTN", n_special: int = 5, trunk_gate_init: float = 0.0, **kw):
        super().__init__(width, vocab_size, max_len, **kw)
        if not 1 <= int(bag_k) <= 8:
            raise ConfigError(f"dna: kmer_bag must be in 1..8, got {bag_k}")
        self.k, self.stride, self.bag_k = int(k), int(stride), int(bag_k)
        self.trunk_gate_init = float(trunk_gate_init)
        # letter code (0..3 for A/C/G/T, -1 otherwise) of every position of every token id: (V, k)
        acgt = {c: i for i, c in enumerate("ACGT")}
        letters = torch.full((self.vocab_size, self.k), -1, dtype=torch.long)
        for i, kmer in enumerate(itertools.product(alphabet, repeat=self.k)):
            if n_special + i < self.vocab_size:
                letters[n_special + i] = torch.tensor([acgt.get(c, -1) for c in kmer])
        self.register_buffer("letters", letters, persistent=False)
        # index of each position's letter in `alphabet` (-1 for special tokens): re-tokenising views
        codes = torch.full((self.vocab_size, self.k), -1, dtype=torch.long)
        for i, kmer in enumerate(itertools.product(range(len(alphabet)), repeat=self.k)):
            if n_special + i < self.vocab_size:
                codes[n_special + i] = torch.tensor(kmer)
        self.register_buffer("codes", codes, persistent=False)
        self.n_letters, self.n_special = len(alphabet), int(n_special)
        self.register_buffer("bag_weights", 4 ** torch.arange(self.bag_k - 1, -1, -1), persistent=False)
        self.bag = nn.Embedding(4 ** self.bag_k, self.width)
        nn.init.normal_(self.bag.weight, std=1.0)

    def kmer_counts(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x (B, L)`` token ids → overlapping ``bag_k``-mer counts ``(B, 4**bag_k)`` float."""
        lt = self.letters[x]                                     # (B, L, k)
        if mask is not None:
            lt = lt.masked_fill(~mask.bool()[..., None], -1)
        seq = lt[:, :, : self.stride].reshape(x.shape[0], -1)    # each token's first `stride` letters
        if seq.shape[1] < self.bag_k:
            return seq.new_zeros(x.shape[0], 4 ** self.bag_k, dtype=torch.float32)
        win = seq.unfold(1, self.bag_k, 1)                       # (B, W, bag_k)
        ok = (win >= 0).all(-1)
        ids = (win.clamp_min(0) * self.bag_weights).sum(-1)
        counts = torch.zeros(x.shape[0], 4 ** self.bag_k, dtype=torch.float32, device=x.device)
        return counts.scatter_add_(1, ids, ok.float())

    def random_view(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, *, crop: float = 0.8,
                    mutation: float = 0.02, generator: Optional[torch.Generator] = None):
        """A random view of each barcode for view-contrastive training (SimCLR on DNA).

        Per row: the nucleotides are rebuilt from the ids, a random window of at least
        ``crop`` of them is kept (a random start, so also a random k-mer offset), each A/C/G/T
        is replaced by a random base with probability ``mutation`` (point mutations), and the
        result is cut into k-mers again (leading/trailing special tokens kept).
        ``x, mask (B, L)`` → ``(ids (B, L'), mask (B, L'))``.
        """
        if mask is None:
            mask = (x != self.pad_id).long()
        code = self.codes[x].masked_fill(~mask.bool()[..., None], -1)[:, :, : self.stride].reshape(x.shape[0], -1)
        powers = self.n_letters ** torch.arange(self.k - 1, -1, -1, device=x.device)
        rows = []
        for b in range(x.shape[0]):
            real = x[b][mask[b].bool()]
            head = real[:1] if real.numel() and self.codes[real[0], 0] < 0 else real[:0]
            tail = real[-1:] if real.numel() > 1 and self.codes[real[-1], 0] < 0 else real[:0]
            seq = code[b][code[b] >= 0]
            n = int(seq.numel())
            if n >= self.k:
                m = int(torch.randint(max(self.k, int(np.ceil(crop * n))), n + 1, (1,), generator=generator))
                start = int(torch.randint(0, n - m + 1, (1,), generator=generator))
                seq = seq[start:start + m].clone()
                acgt = seq < 4
                hit = (torch.rand(seq.shape, generator=generator) < mutation).to(seq.device) & acgt
                seq[hit] = torch.randint(0, 4, (int(hit.sum()),), generator=generator).to(seq.device)
                ids = (seq.unfold(0, self.k, self.stride) * powers).sum(-1) + self.n_special
            else:
                ids = real[:0]
            rows.append(torch.cat([head, ids, tail])[: self.max_len])
        L = max(int(r.numel()) for r in rows)
        out = torch.full((len(rows), L), self.pad_id, dtype=x.dtype, device=x.device)
        out_mask = torch.zeros((len(rows), L), dtype=torch.long, device=x.device)
        for b, r in enumerate(rows):
            out[b, : r.numel()] = r
            out_mask[b, : r.numel()] = 1
        return out, out_mask

    def global_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Bag-of-k-mers path ``(B, width)``: L2-normalised counts @ the learnt table."""
        counts = self.kmer_counts(x, mask)
        freq = counts / counts.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return freq.to(self.bag.weight.dtype) @ self.bag.weight


@register_modality("dna")
class DNAAdapter(ModalityAdapter):
    """DNA barcode adapter.

    Options:
        k, stride: k-mer size (4, 5, 6 ...) and step (``None`` = k, non-overlapping).
        max_length: nucleotides kept (660 as BarcodeBERT); ``pad_with_n`` pads shorter ones with N
            (BarcodeBERT's input layout). Off by default: padding is then ``[PAD]`` tokens with mask 0,
            which pooling ignores — N-padding dominates a mean-pooled embedding of a short barcode.
        tokenizer: ``"kmer"`` (fixed vocabulary) or ``"bpe"`` (learnt in :meth:`fit`, ``bpe_vocab_size``).
        alphabet: letters of the k-mer vocabulary (``"ACGTN"``; ``"ACGT"`` sends N-k-mers to ``[UNK]``).
        add_special_tokens: wrap in ``[CLS] ... [SEP]``.
        random_offset: random start in ``[0, k)`` for training views.
        tower: ``"vit"`` (tokens embedder + shared trunk) or ``"hf"`` (a BERT, ``model_dir`` to load
            a BarcodeBERT-style ``BertForMaskedLM`` from disk; ``hf_config`` for the built-in one).
        pool: pooling. Masking: MLM of 0.5 of the tokens (BarcodeBERT) unless the masked objective
            sets ``mask_ratio``.
        kmer_bag: ``vit`` tower only — add a bag-of-``kmer_bag``-mers path to the pooled output
            (:class:`KmerBagEmbedder`; ``None`` = off); ``trunk_gate`` is the initial weight of the
            transformer's pooled tokens beside it (0: the untrained tower is the k-mer bag).
    """

    name = "dna"
    input_kind = "value"
    suffixes = FASTA_SUFFIXES + TABLE_SUFFIXES
    suffix_priority = 50  # .csv/.tsv: an ECG table (ecg) first
    defaults: Dict[str, Any] = {
        "k": 6, "stride": None, "max_length": 660, "pad_with_n": False, "tokenizer": "kmer", "alphabet": "ACGTN",
        "bpe_vocab_size": 512, "add_special_tokens": True, "random_offset": True,
        "tower": "vit", "model_dir": None, "hf_config": {}, "pool": "mean",
        "kmer_bag": None, "trunk_gate": 0.0,
    }
    mask_ratio = 0.5  # BarcodeBERT
    training_options = ("random_offset",)  # act only with train=True

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.options
        if o["tokenizer"] not in ("kmer", "bpe"):
            raise ConfigError(f"dna: tokenizer must be 'kmer' or 'bpe', got {o['tokenizer']!r}")
        if o["tower"] not in ("vit", "hf"):
            raise ConfigError(f"dna: tower must be 'vit' or 'hf', got {o['tower']!r}")
        if int(o["k"]) < 1 or (o["stride"] is not None and int(o["stride"]) < 1) or int(o["max_length"]) < 1:
            raise ConfigError("dna: k, stride and max_length must be positive")
        self.k = int(o["k"])
        self.stride = int(o["stride"] or o["k"])
        self.tokenizer = (tk.build_kmer_tokenizer(self.k, alphabet=o["alphabet"], add_special_tokens=False)
                          if o["tokenizer"] == "kmer" else None)
        self._set_vocab()

    def _set_vocab(self) -> None:
        """Cache the k-mer → id dict of the tokenizer and whether it is the canonical vocabulary."""
        self._vocab = self.tokenizer.get_vocab() if self.options["tokenizer"] == "kmer" and self.tokenizer else None
        alphabet = self.options["alphabet"]
        self._canonical = self._vocab is not None and self._vocab == tk.kmer_vocab(self.k, alphabet)
        self._lut = np.full(256, -1, dtype=np.int64)
        for i, c in enumerate(alphabet):
            self._lut[ord(c)] = i
        self._weights = len(alphabet) ** np.arange(self.k - 1, -1, -1, dtype=np.int64)

    # ------------------------------------------------------------------ reading
    def read(self, source: Any, *, sample_id: Optional[str] = None, row: Optional[Mapping[str, Any]] = None) -> Record:
        """An inline sequence, or a file reference → ``Record(cleaned str, {"raw_length": n})``.

        File references (see :func:`medfm.modality.file_reference`): a FASTA or a sequence table
        holding one sequence, or ``FILE#ID`` selecting the record ``ID`` (FASTA record id; in a
        table, the first of the columns ``processid``, ``sampleid``, ``id``, ``record_id``).
        """
        ref = file_reference(source, self.suffixes)
        if ref is not None:
            seq, label = sequence_from_file(ref[0], ref[1])
            seq = clean_sequence(seq, source=label)
            return Record(seq, {"raw_length": len(seq), "source_file": str(ref[0]), "record_id": ref[1]})
        seq = clean_sequence(source, source=sample_id)
        if self.options["tokenizer"] == "kmer" and len(seq) < self.k:
            raise DataError(f"sequence of {len(seq)} nt is shorter than k={self.k}: no k-mer to embed",
                            source=sample_id, field="sequence")
        return Record(seq, {"raw_length": len(seq)})

    # ----------------------------------------------------------- tokenisation
    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ConfigError("dna: the BPE tokenizer is not trained; call fit(sequences) or load_pretrained(dir)")
        return self.tokenizer

    def _specials(self, ids: List[int]) -> List[int]:
        return [tk.CLS_ID] + ids + [tk.SEP_ID] if self.options["add_special_tokens"] else ids

    def prepare(self, seq: str, offset: int = 0) -> str:
        """Truncate to ``max_length``, drop ``offset`` leading nucleotides, pad with N (when ``pad_with_n``)."""
        n = int(self.options["max_length"])
        s = seq[:n][offset:]
        if self.options["pad_with_n"] and len(s) < n:
            s = s + "N" * (n - len(s))
        return s

    def _kmer_ids(self, seq: str) -> List[int]:
        """k-mer ids of one sequence by dictionary lookup in the tokenizer's vocabulary (per-sample path)."""
        get, k, unk = self._vocab.get, self.k, tk.UNK_ID
        return [get(seq[i:i + k], unk) for i in range(0, len(seq) - k + 1, self.stride)]

    def _kmer_ids_array(self, seqs: List[str]) -> np.ndarray:
        """Vectorised ids of equal-length sequences ``(B, n_tokens)``: the k-mer's rank in
        ``product(alphabet, repeat=k)`` + the number of special tokens (the canonical vocabulary);
        a letter outside ``alphabet`` gives ``[UNK]``."""
        codes = self._lut[np.frombuffer("".join(seqs).encode("ascii"), dtype=np.uint8)].reshape(len(seqs), -1)
        win = np.lib.stride_tricks.sliding_window_view(codes, self.k, axis=1)[:, :: self.stride]
        ids = win @ self._weights + len(tk.SPECIAL_TOKENS)
        return np.where((win < 0).any(-1), tk.UNK_ID, ids)

    def encode(self, seq: str) -> List[int]:
        """Token ids (specials included) of an already :meth:`prepare`-d sequence."""
        if self._vocab is not None:
            return self._specials(self._kmer_ids(seq))
        return self.encode_batch([seq], backend="tokenizers")[0]

    def encode_batch(self, seqs: List[str], backend: str = "auto") -> List[List[int]]:
        """Batched :meth:`encode`.

        ``backend="auto"``: one vectorised numpy pass when the sequences have equal length and the
        vocabulary is the canonical k-mer one (the ``pad_with_n`` default), else per-sample lookup;
        ``"tokenizers"``: through the HF ``tokenizers.Tokenizer`` (Rust, parallel) — same ids.
        """
        if backend == "auto" and self._vocab is not None:
            if self._canonical and seqs and len({len(s) for s in seqs}) == 1 and len(seqs[0]) >= self.k:
                return [self._specials(r) for r in self._kmer_ids_array(seqs).tolist()]
            return [self.encode(s) for s in seqs]
        tok = self._require_tokenizer()
        if self.options["tokenizer"] == "bpe":
            encs = tok.encode_batch(seqs)
        elif self.stride == self.k:
            encs = tok.encode_batch([s[: len(s) - len(s) % self.k] for s in seqs])
        else:
            encs = tok.encode_batch([tk.kmerize(s, self.k, self.stride) for s in seqs], is_pretokenized=True)
        return [self._specials(e.ids) for e in encs]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → nucleotides (special tokens skipped)."""
        return self._require_tokenizer().decode(list(int(i) for i in ids), skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Size of the token embedding: the k-mer vocabulary, or the planned BPE size (before or after fit)."""
        if self.options["tokenizer"] == "bpe":
            return int(self.options["bpe_vocab_size"])
        return self._require_tokenizer().get_vocab_size()

    def max_tokens(self) -> int:
        """Longest token sequence :meth:`preprocess` can produce (for the position embedding)."""
        n = int(self.options["max_length"])
        if self.options["tokenizer"] == "bpe":
            core = n
        else:
            core = (n - self.k) // self.stride + 1
        return core + (2 if self.options["add_special_tokens"] else 0)

    def preprocess(self, record: Record, *, train: bool = False, rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
        seq = record.data
        offset = 0
        if train and self.options["random_offset"] and self.options["tokenizer"] == "kmer" and self.k > 1:
            rng = rng if rng is not None else np.random.default_rng()
            offset = int(rng.integers(0, self.k))
        ids = torch.tensor(self.encode(self.prepare(seq, offset)), dtype=torch.long)
        return {"x": ids, "mask": torch.ones_like(ids), "length": min(len(seq), int(self.options["max_length"]))}

    def augment(self, item: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
        """The random start offset applied to a cached eval item (same draw as ``preprocess(train=True)``).

        Needs ids that decode back to the sequence: non-overlapping k-mers without ``[UNK]``;
        other items are returned unchanged.
        """
        o = self.options
        if not (o["random_offset"] and o["tokenizer"] == "kmer" and self.stride == self.k and self.k > 1):
            return item
        ids = item["x"].tolist()
        if tk.UNK_ID in ids:
            return item
        seq = self.decode(ids)[: int(item["length"])]
        return self.preprocess(Record(seq, {}), train=True, rng=rng)

    def collate(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        return tk.collate_token_items(items, tk.PAD_ID)

    # --------------------------------------------------------- model building
    def tower_config(self) -> Dict[str, Any]:
        o = self.options
        masked = {"kind": "mlm", "mask_ratio": float(self.mask_ratio)}
        if o["tower"] == "hf":
            hf = {"max_position_embeddings": max(512, self.max_tokens())}
            hf.update(o["hf_config"] or {})
            return {"type": "hf", "model_dir": o["model_dir"], "hf_config": hf, "pool": o["pool"], "masked": masked,
                    "mask_id": tk.MASK_ID, "pad_id": tk.PAD_ID, "vocab_size": self.vocab_size,
                    "special_ids": list(range(len(tk.SPECIAL_TOKENS)))}
        embedder = {"type": "tokens", "vocab_size": self.vocab_size, "max_len": self.max_tokens(),
                    "pad_id": tk.PAD_ID, "mask_id": tk.MASK_ID, "special_ids": list(range(len(tk.SPECIAL_TOKENS)))}
        if o["kmer_bag"]:
            if o["tokenizer"] != "kmer":
                raise ConfigError("dna: kmer_bag needs the k-mer tokenizer (tokenizer: kmer)")
            embedder.update({"type": "kmer_tokens", "k": self.k, "stride": self.stride, "bag_k": int(o["kmer_bag"]),
                             "alphabet": o["alphabet"], "n_special": len(tk.SPECIAL_TOKENS),
                             "trunk_gate_init": float(o["trunk_gate"])})
        return {"type": "vit", "pool": o["pool"], "masked": masked, "embedder": embedder}

    def fit(self, values: Iterable[Any], patient_ids: Optional[Sequence[Any]] = None) -> None:
        """Train the BPE tokenizer on the training sequences (k-mer vocabularies are fixed: nothing to learn).

        ``patient_ids`` is not needed: a cleaned sequence holds only the IUPAC alphabet, so no
        name or record number can enter the vocabulary.
        """
        if self.options["tokenizer"] != "bpe":
            return
        seqs: Iterator[str] = (clean_sequence(v)[: int(self.options["max_length"])] for v in values
                               if isinstance(v, str) and v.strip() and within_text_limit(v))
        self.tokenizer = tk.train_bpe_tokenizer(seqs, vocab_size=int(self.options["bpe_vocab_size"]),
                                                alphabet=self.options["alphabet"], add_special_tokens=False)

    def save_pretrained(self, directory: os.PathLike) -> None:
        tk.save_tokenizer(self._require_tokenizer(), directory, "dna_", self.config())

    def load_pretrained(self, directory: os.PathLike) -> None:
        self.tokenizer, _ = tk.load_tokenizer(directory, "dna_")
        self._set_vocab()
