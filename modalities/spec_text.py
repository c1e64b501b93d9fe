"""The ``text_spec`` adapter: text tokenized the way a model family's text tower was trained.

Options: ``family`` (fills the rest from :mod:`.family_specs`), ``tokenizer_dir`` (the folder of the
family's tokenizer files; the weight format sets it to the user's download), ``max_length``,
``padding`` (``max_length``: every text padded to ``max_length``, as open_clip's ``HFTokenizer``,
CLIP and SigLIP do), ``truncation``, ``strict``. Reading (inline text, ``.txt`` references,
sections, taxonomy columns) is the ``text`` adapter's.

``preprocess`` → ``{"x": (L,) input ids, "mask": (L,) attention mask, "content_key": int}``. The
tokenizer is saved into the checkpoint (``modalities/<name>/``); the folder path is not kept.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from medfm.errors import ConfigError
from medfm.modality import ModalityAdapter, Record
from medfm.registry import register_modality

from .family_specs import departures, family, family_tower, reference_spec
from .text import TextAdapter, duplicate_key

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json", "spiece.model")


@register_modality("text_spec")
class SpecTextAdapter(TextAdapter):
    """Reports and prompts under a family's tokenizer (see the module docstring)."""

    name = "text_spec"
    suffix_priority = 90  # never chosen by suffix over text
    defaults: Dict[str, Any] = {"family": None, "weights_spec": None, "tokenizer_dir": None, "max_length": 77, "padding": "max_length",
                                "truncation": True, "mask": "tokenizer attention_mask", "strict": False,
                                "sections": None, "taxonomy_columns": None}

    def __init__(self, **options: Any):
        fam = options.get("family")
        if fam:
            options = {**reference_spec(fam, "text_spec", options.get("weights_spec")), **options}
        ModalityAdapter.__init__(self, **options)
        o = self.options
        if o["padding"] != "max_length":
            raise ConfigError(f"text_spec: padding must be 'max_length' (the families pad so), got {o['padding']!r}")
        self.departures = departures(fam, "text_spec", o)
        if self.departures and o["strict"]:
            raise ConfigError(f"text_spec: departs from the {fam} input spec under strict: {'; '.join(self.departures)}")
        self._hf_tokenizer = None
        self._clip = None
        self.tokenizer = None
        self.vocabulary_rule = None
        if o["tokenizer_dir"]:
            self._load_hf_tokenizer(o["tokenizer_dir"])

    def _require(self):
        if self._hf_tokenizer is None:
            raise ConfigError("text_spec: no tokenizer; point the family's init at its folder (tokenizer files "
                              "inside) or give tokenizer_dir")
        return self._hf_tokenizer

    def tokenize(self, texts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Texts → ``{"x": (B, L), "mask": (B, L)}`` with the family's tokenizer call."""
        o = self.options
        enc = self._require()(list(texts), max_length=int(o["max_length"]), padding="max_length",
                              truncation=bool(o["truncation"]), return_tensors="pt")
        ids = enc["input_ids"].long()
        mask = enc.get("attention_mask")
        if mask is None:  # a tokenizer that returns ids only (SigLIP's): real tokens are not padding
            pad = self._hf_tokenizer.pad_token_id
            mask = (ids != pad).long() if pad is not None else torch.ones_like(ids)
        return {"x": ids, "mask": mask.long()}

    def preprocess(self, record: Record, *, train: bool = False, rng: Optional[np.random.Generator] = None
                   ) -> Dict[str, Any]:
        out = self.tokenize([record.data])
        return {"x": out["x"][0], "mask": out["mask"][0], "content_key": duplicate_key(record.data)}

    def collate(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        return ModalityAdapter.collate(self, items)

    @property
    def special_ids(self) -> Dict[str, Optional[int]]:
        tok = self._require()
        return {"pad": tok.pad_token_id, "cls": tok.cls_token_id, "sep": tok.sep_token_id, "mask": tok.mask_token_id}

    @property
    def vocab_size(self) -> int:
        return len(self._require())

    def fit(self, values, patient_ids=None) -> None:
        """Nothing to learn: the family's tokenizer is fixed."""

    def tower_config(self) -> Dict[str, Any]:
        """The family's tower (its weight format sets what the files fix); without a family: a BERT-base."""
        if self.options.get("family"):
            return family_tower(self.options["family"], self.name)
        return {"type": "hf_encoder", "hf_arch": {"model_type": "bert", "config": {}}, "pool": "cls"}

    def inference_spec(self) -> Dict[str, Any]:
        o = self.options
        fam = o.get("family")
        return {"input": "one text; output x (max_length,) int64 ids and mask (max_length,)",
                "family": fam, "spec": {k: o[k] for k in ("max_length", "padding", "truncation", "mask")},
                "tokenizer": "the tokenizer files saved beside this file (transformers AutoTokenizer)",
                "departures": list(self.departures), "sources": family(fam)["cite"] if fam else {}}

    def config(self) -> Dict[str, Any]:
        cfg = super().config()
        cfg["tokenizer_dir"] = None  # the tokenizer travels as files in the checkpoint, not as a path
        return cfg

    def save_pretrained(self, directory: os.PathLike) -> None:
        if self._hf_tokenizer is not None:
            self._hf_tokenizer.save_pretrained(str(directory))

    def load_pretrained(self, directory: os.PathLike) -> None:
        if any((Path(directory) / f).is_file() for f in _TOKENIZER_FILES):
            self._load_hf_tokenizer(directory)
