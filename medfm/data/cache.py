"""On-disk cache of preprocessed tensors, keyed by input content and preprocessing config."""
from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from safetensors.torch import load_file, save_file

from ..input_files import check_regular, open_bounded
from ..io import hash_file


def content_hash(source: Any, is_path: bool = True) -> str:
    """Hash of what a manifest cell points to: file bytes, every file of a folder, or the inline value."""
    h = hashlib.blake2b(digest_size=20)
    p = Path(str(source)) if is_path and isinstance(source, (str, os.PathLike)) else None
    if p is not None and p.exists():
        if not p.is_dir():
            check_regular(p)  # a FIFO or a device is refused by name (a skip), never hashed
        # a folder: every file in it; a file: it and its siblings of the same stem
        # (a WFDB header's .dat/.mat signal, an Analyze .hdr's .img)
        files = (sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir()
                 else sorted(f for f in p.parent.glob(glob.escape(p.stem) + ".*") if f.is_file()) or [p])
        for f in files:
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            with open_bounded(f, what="input", decompress=False) as fh:  # capped by max_file_mb
                hash_file(fh, h)
    else:
        h.update(repr(source).encode())
    return h.hexdigest()


class PreprocessCache:
    """Deterministic (eval-mode) preprocessing results stored as safetensors files.

    The key is the content hash of the input plus the adapter's ``cache_signature()``,
    so editing a file or a preprocessing option makes a new entry. Only tensors are
    cached; non-tensor metadata is kept in a JSON sidecar.
    """

    def __init__(self, directory: os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def key(self, source: Any, signature: Dict[str, Any], is_path: bool = True) -> str:
        sig = json.dumps(signature, sort_keys=True, default=str)
        return hashlib.blake2b((content_hash(source, is_path) + sig).encode(), digest_size=20).hexdigest()

    def get_or_compute(self, source: Any, signature: Dict[str, Any], compute: Callable[[], Dict[str, Any]],
                       is_path: bool = True) -> Dict[str, Any]:
        """The cached item for ``(source, signature)``, computing and storing it on a miss."""
        key = self.key(source, signature, is_path)
        path = self.dir / key[:2] / f"{key}.safetensors"
        if path.is_file():
            try:
                item: Dict[str, Any] = dict(load_file(str(path)))
                meta_path = path.with_suffix(".json")
                if meta_path.is_file():
                    item.update(json.loads(meta_path.read_text()))
                self.hits += 1
                return item
            except Exception:  # a torn or foreign file: recompute
                pass
        self.misses += 1
        item = compute()
        tensors = {k: v.contiguous() for k, v in item.items() if isinstance(v, torch.Tensor)}
        meta = {k: v for k, v in item.items() if not isinstance(v, torch.Tensor)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp))
        try:
            meta_json = json.dumps(meta)
        except TypeError:
            meta_json = None
        if meta_json is not None:
            mtmp = path.with_name(f".{key}.{os.getpid()}.json.tmp")
            mtmp.write_text(meta_json)
            os.replace(mtmp, path.with_suffix(".json"))
        os.replace(tmp, path)
        return item
