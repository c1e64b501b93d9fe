"""Free text (``text``): radiology/cardiology reports and taxonomy strings.

Two tokenizer sources:

- ``model_dir`` set: the tokenizer of a local Hugging Face model directory
  (``AutoTokenizer.from_pretrained(model_dir, local_files_only=True)``), with the
  same directory loaded as the tower (any BERT/RoBERTa-family masked LM);
- ``tokenizer: open_clip``: open_clip's CLIP BPE tokenizer (its vocabulary file ships with
  ``open_clip``), ``[SOT] ... [EOT]`` truncated to ``max_length`` (77), with a causal
  ``vit`` text tower pooled at the end-of-text token — the layout an open_clip checkpoint
  imports into (``init: {format: open_clip}`` sets this);
- otherwise a WordPiece tokenizer learnt on the cohort's own training texts in
  :meth:`TextAdapter.fit` with HF ``tokenizers`` and saved with the checkpoint, and a
  small built-in BERT tower.

Reports are normalised (Unicode NFKC, whitespace collapsed), optionally reduced
to sections (``sections=["FINDINGS", "IMPRESSION"]``) and truncated to
``max_length`` tokens. With ``taxonomy_columns`` the text of a sample is built
from the manifest row (``"order family genus species"``, missing ranks skipped)
for CLIBD-style DNA ↔ taxonomy alignment.

Output of ``preprocess``: ``{"x": LongTensor (L,), "mask": LongTensor (L,), "content_key": int}``;
``collate`` right-pads with the pad id. ``content_key`` (:func:`duplicate_key`) is equal for
texts that differ only in case, whitespace and punctuation: the contrastive objectives make
such duplicates positives of each other (many reports are word-for-word ``"normal ECG"``).
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import unicodedata
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch

from medfm.data.manifest import is_missing
from medfm.errors import ConfigError, DataError
from medfm.input_files import read_text
from medfm.limits import within_text_limit
from medfm.modality import ModalityAdapter, Record, file_reference, require_file
from medfm.registry import register_modality

from . import tokenizers as tk

DEFAULT_RANKS = ("order_name", "family_name", "genus_name", "species_name")
#: how taxonomy tables spell an unassigned rank (beyond an empty manifest cell)
_UNASSIGNED_RANK = {"nan", "none", "null", "na", "n/a", "not_classified", "not classified"}
_WS = re.compile(r"\s+")
# "FINDINGS:" / "IMPRESSION :" at a line start or after a sentence end.
_SECTION = re.compile(r"(?:^|(?<=[\n.]))\s*([A-Z][A-Z /&-]{2,40}?)\s*:", re.MULTILINE)


def normalize_report(text: Any) -> str:
    """NFKC, control characters to spaces, whitespace collapsed, stripped. ``None``/NaN → ``""``."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    s = unicodedata.normalize("NFKC", str(text))
    s = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in s)
    return _WS.sub(" ", s).strip()


def duplicate_key(text: Any) -> int:
    """A 62-bit key equal for texts that differ only in case, whitespace and punctuation.

    ``"No acute findings."`` and ``"no  acute findings"`` share a key. Computed with
    BLAKE2b (stable across processes and runs, unlike Python's ``hash``).
    """
    s = normalize_report(text).casefold()
    s = "".join(" " if unicodedata.category(c).startswith("P") else c for c in s)
    s = _WS.sub(" ", s).strip()
    digest = hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 62) - 1)


def split_sections(text: str) -> Dict[str, str]:
    """Upper-case headers (``FINDINGS:``, ``IMPRESSION:`` ...) → their text, in order of appearance."""
    out: Dict[str, str] = {}
    matches = list(_SECTION.finditer(text))
    for m, nxt in zip(matches, matches[1:] + [None]):
        body = text[m.end(): nxt.start() if nxt else len(text)].strip()
        out[m.group(1).strip().upper()] = body
    return out


def extract_sections(text: str, sections: Sequence[str]) -> str:
    """The named sections of a report joined by a space, headers dropped; the whole text when none is found."""
    found = split_sections(str(text))
    parts = [found[s.upper()] for s in sections if found.get(s.upper())]
    return " ".join(parts) if parts else str(text)


def _rank_unassigned(v: Any) -> bool:
    """An empty cell (:func:`medfm.data.manifest.is_missing`) or a taxonomy table's "not classified" spelling."""
    return is_missing(v) or str(v).strip().lower() in _UNASSIGNED_RANK


def taxonomy_text(row: Mapping[str, Any], ranks: Sequence[str] = DEFAULT_RANKS) -> str:
    """``"order family genus species"`` from a row's taxonomy columns; missing ranks skipped."""
    return " ".join(str(row[r]).strip() for r in ranks if r in row and not _rank_unassigned(row[r]))


def _open_clip_tokenizer():
    """``open_clip.tokenizer`` (the ``open_clip`` tokenizer option), or :class:`ConfigError` naming the package."""
    try:
        from open_clip import tokenizer  # deferred: optional package (open_clip_torch), seconds to import
    except ImportError as e:
        raise ConfigError("text: tokenizer 'open_clip' needs the open_clip_torch package") from e
    return tokenizer


@register_modality("text")
class TextAdapter(ModalityAdapter):
    """Reports and taxonomy strings.

    Options:
        model_dir: local HF model directory (tokenizer + tower); ``None`` = built-in.
        max_length: tokens kept, special tokens included.
        vocab_size, lowercase, min_frequency: of the WordPiece tokenizer learnt in :meth:`fit`.
        min_patients: a word enters the learnt vocabulary only when the texts of at least this many
            distinct patients contain it, and never when it has a digit (names, record numbers and
            dates stay out; see :func:`~medfm.modalities.tokenizers.identifier_free_texts`).
        sections: report sections to keep (e.g. ``["FINDINGS", "IMPRESSION"]``), ``None`` = all text.
        taxonomy_columns: build the text from these manifest columns instead of the cell.
        pool, hf_config: tower options (CLS pooling, small BERT). Masking: MLM of 15 % of the tokens
            (BERT) unless the masked objective sets ``mask_ratio``.
    """

    name = "text"
    input_kind = "value"
    suffixes = (".txt",)
    suffix_priority = 60
    defaults: Dict[str, Any] = {
        "model_dir": None, "max_length": 128, "vocab_size": 4096, "lowercase": True, "min_frequency": 2,
        "min_patients": tk.MIN_PATIENTS,
        "sections": None, "taxonomy_columns": None, "pool": "cls", "hf_config": {},
        "tokenizer": "wordpiece",
    }
    mask_ratio = 0.15  # BERT

    def __init__(self, **options: Any):
        super().__init__(**options)
        if int(self.options["max_length"]) < 3:
            raise ConfigError("text: max_length must be at least 3")
        self.tokenizer = None  # a tokenizers.Tokenizer
        self.vocabulary_rule: Optional[Dict[str, Any]] = None  # how fit() kept identifiers out (metadata)
        self._hf_tokenizer = None  # a transformers tokenizer when model_dir is set
        self._clip = None  # open_clip's SimpleTokenizer with tokenizer="open_clip"
        if self.options["tokenizer"] not in ("wordpiece", "open_clip"):
            raise ConfigError(f"text: tokenizer must be 'wordpiece' or 'open_clip', got {self.options['tokenizer']!r}")
        if self.options["tokenizer"] == "open_clip":
            if self.options["model_dir"]:
                raise ConfigError("text: tokenizer 'open_clip' and model_dir exclude each other")
            self._clip = _open_clip_tokenizer().SimpleTokenizer()
        if self.options["model_dir"]:
            self._load_hf_tokenizer(self.options["model_dir"])

    def _load_hf_tokenizer(self, model_dir: Any) -> None:
        from transformers import AutoTokenizer  # deferred: transformers takes seconds to import; only with model_dir

        try:
            self._hf_tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"text: cannot load a tokenizer from model_dir {model_dir}: {e}") from e

    # ------------------------------------------------------------------ reading
    def text_of(self, source: Any, row: Optional[Mapping[str, Any]] = None) -> str:
        """The normalised text of a cell (or of a row, with ``taxonomy_columns``), sections applied."""
        cols = self.options["taxonomy_columns"]
        if cols and (row is not None or isinstance(source, Mapping)):
            text = taxonomy_text(row if row is not None else source, cols)
        elif isinstance(source, Mapping):
            raise ConfigError("text: a row was given but taxonomy_columns is not set")
        else:
            text = source
        text = normalize_report(text)
        if self.options["sections"] and text:
            text = normalize_report(extract_sections(text, self.options["sections"]))
        return text

    def source_from_row(self, row: Mapping[str, Any], column: str) -> Any:
        """With ``taxonomy_columns``: the taxonomy string of the row (``None`` when every rank is missing)."""
        cols = self.options["taxonomy_columns"]
        if cols:
            return taxonomy_text(row, cols) or None
        return super().source_from_row(row, column)

    def read(self, source: Any, *, sample_id: Optional[str] = None, row: Optional[Mapping[str, Any]] = None) -> Record:
        """An inline text, or a ``.txt`` file reference (UTF-8) → ``Record(normalised str, meta)``."""
        ref = file_reference(source, self.suffixes) if not self.options["taxonomy_columns"] else None
        if ref is not None:
            path = require_file(ref[0], what="text file")
            try:
                source = read_text(path, limit="max_text_mb", what="text file")
            except OSError as e:
                raise DataError(f"cannot read text file: {e}", source=str(path)) from None
            sample_id = str(path)
        text = self.text_of(source, row)
        if not text:
            raise DataError("empty text", source=sample_id, field="text")
        return Record(text, {"n_chars": len(text)})

    # ----------------------------------------------------------- tokenisation
    @property
    def special_ids(self) -> Dict[str, int]:
        """``{"pad": id, "mask": id, "cls": id, "sep": id, "unk": id}`` of the active tokenizer."""
        if self._hf_tokenizer is not None:
            t = self._hf_tokenizer
            return {"pad": t.pad_token_id, "mask": t.mask_token_id, "cls": t.cls_token_id,
                    "sep": t.sep_token_id, "unk": t.unk_token_id}
        if self._clip is not None:  # CLIP has no mask token: pad (0) stands in for it
            return {"pad": 0, "mask": 0, "cls": self._clip.sot_token_id, "sep": self._clip.eot_token_id,
                    "unk": None}
        return {"pad": tk.PAD_ID, "mask": tk.MASK_ID, "cls": tk.CLS_ID, "sep": tk.SEP_ID, "unk": tk.UNK_ID}

    @property
    def vocab_size(self) -> int:
        if self._hf_tokenizer is not None:
            return len(self._hf_tokenizer)
        if self._clip is not None:
            return len(self._clip.encoder)
        return self._require_tokenizer().get_vocab_size()

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ConfigError("text: no tokenizer; call fit(texts), load_pretrained(dir) or set model_dir")
        return self.tokenizer

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        """Texts → ids with ``[CLS] ... [SEP]``, truncated to ``max_length``."""
        n = int(self.options["max_length"])
        if self._hf_tokenizer is not None:
            return self._hf_tokenizer(list(texts), truncation=True, max_length=n)["input_ids"]
        if self._clip is not None:  # open_clip.tokenize: [SOT] bpe [EOT], cut to n with EOT kept last
            sot, eot = self._clip.sot_token_id, self._clip.eot_token_id
            return [([sot] + self._clip.encode(t) + [eot])[:n - 1] + [eot] if len(self._clip.encode(t)) + 2 > n
                    else [sot] + self._clip.encode(t) + [eot] for t in texts]
        tok = self._require_tokenizer()
        tok.enable_truncation(n)
        return [e.ids for e in tok.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self._hf_tokenizer is not None:
            return self._hf_tokenizer.decode(ids, skip_special_tokens=True)
        if self._clip is not None:
            sp = {self._clip.sot_token_id, self._clip.eot_token_id, 0}
            return self._clip.decode([i for i in ids if i not in sp]).strip()
        return self._require_tokenizer().decode(ids, skip_special_tokens=True)

    def tokenize(self, texts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Prompts or queries → ``{"x": (B, L), "mask": (B, L)}`` (normalised like manifest cells)."""
        ids = self.encode_batch([normalize_report(t) for t in texts])
        x, mask = tk.pad_ids([torch.tensor(i, dtype=torch.long) for i in ids], self.special_ids["pad"])
        return {"x": x, "mask": mask}

    def preprocess(self, record: Record, *, train: bool = False, rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
        ids = torch.tensor(self.encode_batch([record.data])[0], dtype=torch.long)
        return {"x": ids, "mask": torch.ones_like(ids), "content_key": duplicate_key(record.data)}

    def collate(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        return tk.collate_token_items(items, self.special_ids["pad"])

    # --------------------------------------------------------- model building
    def tower_config(self) -> Dict[str, Any]:
        o = self.options
        sp = self.special_ids
        if self._clip is not None:  # open_clip's text transformer: causal, pooled at the end-of-text token
            return {"type": "vit", "pool": "last", "masked": {"kind": "mlm", "mask_ratio": float(self.mask_ratio)},
                    "embedder": {"type": "tokens", "vocab_size": self.vocab_size, "max_len": int(o["max_length"]),
                                 "pad_id": 0, "mask_id": 0, "special_ids": [0, sp["cls"], sp["sep"]]},
                    "trunk": {"causal": True, "norm_eps": 1e-5}}
        # Built-in: the planned vocabulary size, so a model can be built before fit() (the
        # trained WordPiece vocabulary never exceeds it).
        vocab = self.vocab_size if self._hf_tokenizer is not None else int(o["vocab_size"])
        hf = {"max_position_embeddings": max(512, int(o["max_length"]))}
        hf.update(o["hf_config"] or {})
        return {"type": "hf", "model_dir": o["model_dir"], "hf_config": hf, "pool": o["pool"],
                "masked": {"kind": "mlm", "mask_ratio": float(self.mask_ratio)},
                "mask_id": sp["mask"], "pad_id": sp["pad"], "vocab_size": vocab,
                "special_ids": sorted({v for v in sp.values() if v is not None})}

    def fit(self, values: Iterable[Any], patient_ids: Optional[Sequence[Any]] = None) -> None:
        """Learn the WordPiece vocabulary on training cells (strings, or rows with ``taxonomy_columns``).

        ``patient_ids[i]`` is the patient of ``values[i]``: a word is learnt only when the texts of
        ``min_patients`` distinct patients hold it (without ids each text counts as its own patient),
        and words with digits never are. The rule is recorded in ``text_tokenizer_config.json``.
        """
        if self._hf_tokenizer is not None or self._clip is not None:
            return
        values = list(values)
        if patient_ids is not None and len(patient_ids) != len(values):
            raise ConfigError(f"text: {len(patient_ids)} patient ids for {len(values)} training cells")
        # a value over max_text_mb (a 50 MB cell) never reaches the native tokenizer trainer
        pairs = [(t, None if patient_ids is None else patient_ids[i])
                 for i, t in enumerate(self.text_of(v) if isinstance(v, Mapping)
                                       or (isinstance(v, str) and within_text_limit(v)) else "" for v in values) if t]
        o = self.options
        k = int(o["min_patients"])
        if k < 1:
            raise ConfigError(f"text: min_patients must be at least 1, got {k}")
        self.tokenizer = tk.train_wordpiece_tokenizer([t for t, _ in pairs], vocab_size=int(o["vocab_size"]),
                                                      lowercase=bool(o["lowercase"]),
                                                      min_frequency=int(o["min_frequency"]),
                                                      patient_ids=None if patient_ids is None else [p for _, p in pairs],
                                                      min_patients=k)
        self.vocabulary_rule = tk.vocabulary_rule(k, patient_ids_given=patient_ids is not None)

    def save_pretrained(self, directory: os.PathLike) -> None:
        if self._hf_tokenizer is not None:
            self._hf_tokenizer.save_pretrained(str(directory))
        elif self._clip is not None:  # the BPE merges file, for a deployment without medfm
            bpe = _open_clip_tokenizer().default_bpe()
            shutil.copyfile(bpe, os.path.join(str(directory), os.path.basename(bpe)))
        else:
            meta = self.config()
            if self.vocabulary_rule is not None:
                meta["vocabulary_rule"] = self.vocabulary_rule
            tk.save_tokenizer(self._require_tokenizer(), directory, "text_", meta)

    def load_pretrained(self, directory: os.PathLike) -> None:
        if self.options["model_dir"] or self._clip is not None:
            return  # the tokenizer comes from model_dir / open_clip
        self.tokenizer, meta = tk.load_tokenizer(directory, "text_")
        self.vocabulary_rule = meta.get("vocabulary_rule")
