"""Which adapter reads a file, from the facts the adapters declare (``medfm inspect``, ``medfm manifest``).

Nothing here names a modality: a registered plug-in adapter takes part like a built-in one.

1. a DICOM file (``DICM`` preamble, or a ``.dcm``/extensionless name pydicom reads): the adapter
   that declares its Modality value (:attr:`~medfm.modality.ModalityAdapter.dicom_modalities`);
   a value no adapter declares is refused with the reason;
2. a folder: the adapters whose :meth:`~medfm.modality.ModalityAdapter.reads_folder` says yes;
3. else the adapters whose ``suffixes`` match the name;

and among several, the lowest :attr:`~medfm.modality.ModalityAdapter.suffix_priority`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from medfm.errors import DataError, UsageError
from medfm.modality import matching_suffix

from .facts import adapter_facts

from .dicom import adapter_for_tag, header_modality, is_dicom_file, tag_reason


def _priority(cls: Any) -> int:
    return int(getattr(cls, "suffix_priority", 50))


def dicom_adapter(path: Path, adapters: Mapping[str, Any]) -> Optional[str]:
    """For a DICOM file: the adapter among ``adapters`` that declares its Modality value.

    ``None`` when the file is not DICOM or has no Modality value (the suffix decides, and the
    reader flags the object as unchecked).

    Raises:
        DataError: a Modality value no adapter of ``adapters`` declares.
    """
    sniffed = is_dicom_file(path)
    if not sniffed and matching_suffix(path, (".dcm", ".dicom", "")) is None:
        return None
    tag = header_modality(path)
    if not tag:  # not readable as DICOM (its reader says why) or no Modality value
        return None
    hits = sorted((name for name, cls in adapters.items() if tag in {v.upper() for v in
                                                                    getattr(cls, "dicom_modalities", ())}),
                  key=lambda n: (_priority(adapters[n]), n))
    if hits:
        return hits[0]
    owner = adapter_for_tag(tag)
    if owner is not None:
        raise DataError(f"DICOM Modality {tag!r} is read by the {owner} adapter, which this model does not have "
                        f"(it has {', '.join(sorted(adapters))})", source=str(path), field="Modality")
    raise DataError(tag_reason(tag), source=str(path), field="Modality")


def choose_modality(path: Any, adapters: Optional[Mapping[str, Any]] = None) -> str:
    """The name of the adapter that reads ``path`` (a file, a folder, or ``FILE#RECORD``).

    Args:
        path: what to read.
        adapters: ``{name: adapter class or instance}`` to choose from (a model's); default: the registry.
    Raises:
        DataError: a DICOM object whose Modality value no adapter reads (the reason names the file).
        UsageError: no adapter reads the suffix or the folder.
    """
    adapters = adapter_facts() if adapters is None else dict(adapters)
    p = Path(str(path).partition("#")[0])
    if p.is_dir():
        hits = [m for m, cls in adapters.items() if getattr(cls, "reads_folder", lambda _: False)(p)]
        if not hits:
            raise UsageError(f"{p}: no modality reads this folder; name one with --modality")
    else:
        if p.is_file():
            found = dicom_adapter(p, adapters)
            if found is not None:
                return found
        hits = [m for m, cls in adapters.items() if matching_suffix(p, [s for s in cls.suffixes if s]) is not None]
        if not hits and p.is_file() and is_dicom_file(p):  # an extensionless DICOM file without Modality
            hits = [m for m, cls in adapters.items() if "" in cls.suffixes]
        if not hits:
            raise UsageError(f"{p}: no modality reads {p.suffix or 'this file'}; name one with --modality")
    return min(hits, key=lambda m: (_priority(adapters[m]), m))
