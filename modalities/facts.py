"""The facts each adapter declares, read without importing every adapter module.

``medfm inspect`` and ``medfm manifest`` choose an adapter from its suffixes, its DICOM Modality
values, its suffix priority and whether it reads a folder. A built-in adapter's facts are declared
in :mod:`medfm.modalities` (``ADAPTERS``, checked against the class by ``tests/test_startup.py``),
so choosing one imports only the chosen module; a plug-in adapter (entry point) is its class.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

from medfm.registry import MODALITIES


class DeclaredAdapter:
    """A built-in adapter's declared facts; :meth:`reads_folder` imports the adapter module itself."""

    def __init__(self, name: str, meta: Dict[str, Any]):
        self.name = name
        self.input_kind: str = meta["input_kind"]
        self.suffixes: Tuple[str, ...] = tuple(meta["suffixes"])
        self.dicom_modalities: Tuple[str, ...] = tuple(meta.get("dicom_modalities", ()))
        self.suffix_priority: int = int(meta.get("suffix_priority", 50))

    def reads_folder(self, folder: Path) -> bool:
        return MODALITIES.get(self.name).reads_folder(folder)


def adapter_facts() -> Dict[str, Any]:
    """``{name: adapter facts}`` of every registered or declared adapter (declared built-ins unimported)."""
    out: Dict[str, Any] = {}
    for name in MODALITIES.names():
        meta = MODALITIES.describe(name)
        out[name] = DeclaredAdapter(name, meta) if meta and "suffixes" in meta else MODALITIES.get(name)
    return out
