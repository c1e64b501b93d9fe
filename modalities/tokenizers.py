"""Tokenizers shared by the sequence modalities (``dna``, ``text``), built with HF ``tokenizers``.

Every tokenizer built here uses the same special tokens with fixed ids::

    [PAD]=0  [MASK]=1  [CLS]=2  [SEP]=3  [UNK]=4

and is saved with the checkpoint as ``<prefix>tokenizer.json`` (the ``tokenizers``
format) plus ``<prefix>tokenizer_config.json`` (the options that produced it).
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from medfm.checkpoint import tokenizer_files
from medfm.errors import CheckpointError
from medfm.config_files import load_data_file

SPECIAL_TOKENS: Tuple[str, ...] = ("[PAD]", "[MASK]", "[CLS]", "[SEP]", "[UNK]")
PAD_ID, MASK_ID, CLS_ID, SEP_ID, UNK_ID = range(5)


def _cls_sep(tok: Tokenizer) -> None:
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )


def kmer_vocab(k: int, alphabet: str = "ACGTN") -> Dict[str, int]:
    """The special tokens, then every k-mer in ``itertools.product(alphabet, repeat=k)`` order."""
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for km in itertools.product(alphabet, repeat=int(k)):
        vocab["".join(km)] = len(vocab)
    return vocab


def build_kmer_tokenizer(k: int, *, alphabet: str = "ACGTN", add_special_tokens: bool = True) -> Tokenizer:
    """A WordLevel tokenizer over all ``len(alphabet) ** k`` k-mers plus the special tokens.

    It splits a raw string into non-overlapping k-mers itself (a regex pre-tokenizer;
    a trailing piece shorter than ``k`` becomes ``[UNK]``), so ``tok.encode(seq)``
    works on its own after loading from disk. Overlapping k-mers (stride < k) are
    produced by :func:`kmerize` and encoded with ``is_pretokenized=True``.
    Decoding fuses the k-mers back into one string.
    """
    if not 1 <= int(k) <= 8:
        raise ValueError(f"k must be in 1..8, got {k}")
    vocab = kmer_vocab(int(k), alphabet)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f".{{1,{int(k)}}}"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if add_special_tokens:
        _cls_sep(tok)
    return tok


def kmerize(seq: str, k: int, stride: int, offset: int = 0) -> List[str]:
    """``seq[offset:]`` cut into k-mers every ``stride`` characters; a trailing partial k-mer is dropped."""
    return [seq[i:i + k] for i in range(offset, len(seq) - k + 1, stride)]


def train_bpe_tokenizer(sequences: Iterable[str], *, vocab_size: int = 512, alphabet: str = "ACGTN",
                        add_special_tokens: bool = True) -> Tokenizer:
    """A byte-pair-encoding tokenizer learnt on ``sequences`` (DNABERT-2 style), initial alphabet ``alphabet``."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=list(alphabet), show_progress=False)
    tok.train_from_iterator(sequences, trainer=trainer)
    if add_special_tokens:
        _cls_sep(tok)
    return tok


#: the default of the patient rule: a word enters a learnt vocabulary only when the texts of
#: at least this many distinct patients contain it
MIN_PATIENTS = 5


def vocabulary_rule(min_patients: int, *, patient_ids_given: bool) -> Dict[str, Any]:
    """The rule that kept identifiers out of a learnt vocabulary, as recorded in its metadata."""
    return {
        "min_patients": int(min_patients),
        "patients_counted_by": "patient_id" if patient_ids_given else "text (no patient ids given)",
        "excluded": "words seen in the texts of fewer than min_patients distinct patients; "
                    "words containing a digit (numbers, dates, record numbers, mixed letter-digit ids)",
        "characters": "every character of the texts stays in the alphabet, so excluded words tokenize "
                      "into single characters",
    }


def identifier_free_texts(texts: Sequence[str], patient_ids: Optional[Sequence[Any]], min_patients: int,
                          normalizer: Any, pre_tokenizer: Any) -> Tuple[List[str], Dict[str, int]]:
    """``texts`` with every word that could identify a patient removed, for a vocabulary learner.

    A word (a pre-token of ``pre_tokenizer`` after ``normalizer``) is kept only when it has no
    digit and occurs in the texts of at least ``min_patients`` distinct patients
    (``patient_ids[i]`` owns ``texts[i]``; a text without an id counts as its own patient).
    Names, record numbers and dates written in a few patients' reports therefore never become
    vocabulary entries; the learner only sees the kept words (with their counts).
    Returns the filtered texts and counts ``{"words_kept", "words_rare", "words_with_digits"}``
    (numbers of distinct words; no word itself).
    """
    if patient_ids is not None and len(patient_ids) != len(texts):
        raise ValueError(f"{len(patient_ids)} patient ids for {len(texts)} texts")
    words = [[w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t))] for t in texts]
    owners: Dict[str, set] = {}
    for i, ws in enumerate(words):
        pid = patient_ids[i] if patient_ids is not None else None
        owner = i if pid is None or pid != pid or str(pid).strip() == "" else str(pid).strip()  # none/NaN: own
        for w in set(ws):
            owners.setdefault(w, set()).add(owner)
    digits = {w for w in owners if any(c.isdigit() for c in w)}
    rare = {w for w, o in owners.items() if len(o) < int(min_patients)} - digits
    kept = set(owners) - digits - rare
    out = [" ".join(w for w in ws if w in kept) for ws in words]
    return out, {"words_kept": len(kept), "words_rare": len(rare), "words_with_digits": len(digits)}


def train_wordpiece_tokenizer(texts: Iterable[str], *, vocab_size: int = 4096, lowercase: bool = True,
                              min_frequency: int = 2, add_special_tokens: bool = True,
                              patient_ids: Optional[Sequence[Any]] = None,
                              min_patients: int = MIN_PATIENTS) -> Tokenizer:
    """A BERT-style WordPiece tokenizer learnt on ``texts`` (normaliser, pre-tokenizer, decoder as BERT).

    No identifiers: the vocabulary is learnt only from the words :func:`identifier_free_texts`
    keeps (no digits, seen in the texts of ``min_patients`` distinct patients, ``patient_ids[i]``
    owning ``texts[i]``); every character of the texts stays in the alphabet.

    Deterministic: the same texts give a byte-identical ``tokenizer.json`` in every process.
    (``tokenizers``' trainer numbers the ``##``-continuation pieces in hash-map order, which
    varies from process to process and, through the merge tie-break on token ids, changes the
    learnt vocabulary. Here the continuation alphabet is registered up front in sorted order,
    so every id and every tie-break is fixed; the tokenizer is then rebuilt from the learnt
    vocabulary with only the real special tokens marked special.)
    """
    texts = list(texts)
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                            strip_accents=None, lowercase=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    chars = sorted({c for t in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t))
                    for c in w})
    kept, _ = identifier_free_texts(texts, patient_ids, min_patients, normalizer, pre_tokenizer)
    trainer = trainers.WordPieceTrainer(vocab_size=int(vocab_size), min_frequency=int(min_frequency),
                                        special_tokens=list(SPECIAL_TOKENS) + [f"##{c}" for c in chars],
                                        initial_alphabet=chars, show_progress=False)
    learner = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    learner.normalizer, learner.pre_tokenizer = normalizer, pre_tokenizer
    learner.train_from_iterator(kept, trainer=trainer)
    vocab = learner.get_vocab(with_added_tokens=False)
    tok = Tokenizer(models.WordPiece(vocab=dict(sorted(vocab.items(), key=lambda kv: kv[1])), unk_token="[UNK]",
                                     continuing_subword_prefix="##"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    if add_special_tokens:
        _cls_sep(tok)
    return tok


def save_tokenizer(tok: Tokenizer, directory: os.PathLike, prefix: str, options: Dict[str, Any]) -> None:
    """Write ``<prefix>tokenizer.json`` and ``<prefix>tokenizer_config.json`` into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tok_name, cfg_name = tokenizer_files(prefix)
    tok.save(str(d / tok_name))
    (d / cfg_name).write_text(json.dumps(options, indent=2, sort_keys=True))


def load_tokenizer(directory: os.PathLike, prefix: str) -> Tuple[Tokenizer, Dict[str, Any]]:
    """Read what :func:`save_tokenizer` wrote; :class:`CheckpointError` when absent."""
    d = Path(directory)
    tok_name, cfg_name = tokenizer_files(prefix)
    path = d / tok_name
    if not path.is_file():
        raise CheckpointError(f"{path} not found (the checkpoint has no {prefix.rstrip('_') or 'saved'} tokenizer)")
    cfg_path = d / cfg_name
    options = load_data_file(cfg_path, kind="json") if cfg_path.is_file() else {}
    return Tokenizer.from_file(str(path)), options


def pad_ids(seqs: Sequence[torch.Tensor], pad_id: int = PAD_ID,
            length: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id tensors: ``[(L_i,)]`` → ``ids (B, L)`` long, ``mask (B, L)`` long (1 = real)."""
    L = max(int(s.numel()) for s in seqs) if length is None else int(length)
    ids = torch.full((len(seqs), L), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        n = min(int(s.numel()), L)
        ids[i, :n] = s[:n]
        mask[i, :n] = 1
    return ids, mask


def collate_token_items(items: List[Dict[str, Any]], pad_id: int = PAD_ID) -> Dict[str, Any]:
    """Collate ``[{"x": (L_i,), "mask": (L_i,), meta...}]`` → ``{"x": (B, L), "mask": (B, L), meta: list}``."""
    x, mask = pad_ids([it["x"] for it in items], pad_id)
    out: Dict[str, Any] = {"x": x, "mask": mask}
    for key in items[0]:
        if key not in ("x", "mask"):
            out[key] = [it[key] for it in items]
    return out
