"""Modality adapters. Importing this package registers every built-in modality."""
import importlib

_BUILTIN = ("ct", "xray", "oct", "fundus", "ecg", "dna", "text", "sources")

for _name in _BUILTIN:
    importlib.import_module(f"{__name__}.{_name}")

from . import weight_formats  # noqa: E402,F401  (registers the weight-import formats)
