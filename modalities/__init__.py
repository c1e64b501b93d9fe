"""Modality adapters. Importing this package imports each of its modules, which registers every
built-in modality, manifest source and weight-import format: adding a modality is adding a module
(its adapter declares its own facts: suffixes, DICOM Modality values, suffix priority, folders).
Third-party adapters register through the ``medfm.modalities`` entry-point group."""
import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
