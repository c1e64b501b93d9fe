"""Modality adapters. Importing this package registers every built-in modality."""
import importlib

_BUILTIN = ("ct", "xray", "oct", "fundus", "ecg", "dna", "text", "sources")

for _name in _BUILTIN:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _e:  # while a module is being written
        if _e.name != f"{__name__}.{_name}":
            raise

from . import weight_formats  # noqa: E402,F401  (registers the weight-import formats)
