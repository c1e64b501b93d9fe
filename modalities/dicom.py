"""Which adapter reads a DICOM object, from the adapters' declared facts; what a codec error needs.

Each adapter declares the DICOM Modality (0008,0060) values it reads
(:attr:`medfm.modality.ModalityAdapter.dicom_modalities`); nothing here names a modality.
``medfm manifest`` (the column of a DICOM series), ``medfm inspect`` (the adapter of a
file) and every DICOM reader (:func:`check_dicom_modality`) ask the registry through
this module, so a plug-in adapter that declares ``("MR",)`` takes part everywhere.

* a Modality value no adapter declares is refused with one wording everywhere:
  ``DICOM Modality 'MR' is not read by the ct adapter; medfm reads CT (ct), ...``;
  non-image objects (SEG, RTDOSE, SR, ...) say what they are;
* a DICOM object without a Modality value is read, with a counted flag;
* :func:`decoder_hint` names the packages that decode a transfer syntax, from pydicom's
  own decoder tables.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional, Tuple

from medfm.errors import DataError
from medfm.registry import MODALITIES

#: DICOM objects that hold no image or waveform to read (or a derived one): what each is
NON_IMAGE = {
    "SEG": "a segmentation", "RTDOSE": "a radiotherapy dose grid", "RTSTRUCT": "a radiotherapy structure set",
    "RTPLAN": "a radiotherapy plan", "RTRECORD": "a radiotherapy treatment record", "RTIMAGE": "a radiotherapy image",
    "SR": "a structured report", "PR": "a presentation state", "KO": "a key object selection",
    "REG": "a spatial registration", "FID": "a fiducials object", "DOC": "an encapsulated document",
    "PLAN": "a plan", "RWV": "a real world value map", "AU": "an audio waveform",
}
#: pip names of the decoders pydicom lists under their module name
_PIP_NAMES = {"gdcm": "python-gdcm"}


def is_dicom_file(path: Any) -> bool:
    """``DICM`` at byte 128 (the DICOM file preamble), whatever the suffix."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def modality_tag(ds: Any) -> str:
    """The Modality value of a pydicom dataset, upper case (``""`` when absent)."""
    return str(ds.get("Modality", "") or "").strip().upper()


def header_modality(path: Any) -> Optional[str]:
    """The Modality value of a DICOM file (header only), ``""`` when absent, ``None`` when the
    file is not a readable DICOM file (its reader then says why)."""
    import pydicom  # deferred: pydicom is needed only for DICOM files

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # pydicom raises many types for damaged files; the reader reports them
        return None
    return modality_tag(ds)


def declared_modalities() -> List[Tuple[str, Tuple[str, ...]]]:
    """``[(adapter name, its DICOM Modality values)]`` of every registered adapter that declares some,
    in :attr:`suffix_priority` order."""
    found = [(name, tuple(v.upper() for v in cls.dicom_modalities)) for name, cls in MODALITIES.items()
             if getattr(cls, "dicom_modalities", ())]
    return sorted(found, key=lambda kv: (getattr(MODALITIES.get(kv[0]), "suffix_priority", 50), kv[0]))


def adapter_for_tag(tag: str) -> Optional[str]:
    """The registered adapter that declares the DICOM Modality value ``tag`` (first by priority), or ``None``."""
    return next((name for name, tags in declared_modalities() if tag.upper() in tags), None)


def medfm_reads() -> str:
    """``CT (ct), CR/DX/RG (xray), ...``: what the registered adapters read, for messages."""
    return ", ".join(f"{'/'.join(tags)} ({name})" for name, tags in declared_modalities()) or "(nothing)"


def tag_reason(tag: str, adapter: Optional[str] = None) -> str:
    """Why a DICOM object of Modality ``tag`` is not read (by ``adapter``, or by any adapter)."""
    what = f" ({NON_IMAGE[tag]}, not an image)" if tag in NON_IMAGE else ""
    who = f"is not read by the {adapter} adapter" if adapter else "has no medfm modality"
    return f"DICOM Modality {tag or '(empty)'!r}{what} {who}; medfm reads {medfm_reads()}"


def check_dicom_modality(ds: Any, adapter: Any, path: Any) -> List[str]:
    """Refuse a DICOM object the adapter does not read; return the flags of one read unchecked.

    Args:
        ds: the pydicom dataset (a header is enough).
        adapter: the adapter (instance or class) that is about to read it; its
            ``dicom_modalities`` are the values it accepts.
        path: the file, named in the error.
    Returns:
        ``[]``, or one flag when the object has no Modality value (nothing to check).
    Raises:
        DataError: a Modality value the adapter does not declare (``field="Modality"``).
    """
    tag = modality_tag(ds)
    name = getattr(adapter, "name", str(adapter))
    if not tag:
        return [f"DICOM has no Modality value: read as {name} unchecked"]
    if tag not in {v.upper() for v in getattr(adapter, "dicom_modalities", ())}:
        raise DataError(tag_reason(tag, name), source=str(path), field="Modality")
    return []


def decoder_hint(transfer_syntax: Any) -> str:
    """Which packages decode ``transfer_syntax`` (a UID), from pydicom's decoder tables.

    ``""`` when pydicom has no decoder for it at all or every plug-in is installed.
    """
    try:
        from pydicom.pixels import get_decoder  # deferred: pydicom is needed only for DICOM files

        missing = get_decoder(transfer_syntax).missing_dependencies
    except Exception:  # no decoder for the UID, or an older pydicom
        return ""
    options = []
    for line in missing:  # "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        plugin, _, req = line.partition(" - requires ")
        pkgs = [p.strip().split(">")[0].split("=")[0].split("<")[0] for p in req.replace(",", " and ").split(" and ")]
        pkgs = [_PIP_NAMES.get(p, p) for p in pkgs if p and p != "numpy"] or [_PIP_NAMES.get(plugin, plugin)]
        options.append(" ".join(pkgs))
    if not options:
        return ""
    return "install one of: " + "; ".join(f"pip install {o}" for o in options)


def codec_error(ds: Any, path: os.PathLike, exc: BaseException) -> DataError:
    """The :class:`DataError` of pixel data that could not be decoded: the transfer syntax, the file
    and the packages that decode it."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(ts, "name", str(ts))
    hint = decoder_hint(ts) if ts is not None else ""
    return DataError(f"cannot decode pixel data (transfer syntax {name}): {type(exc).__name__}: {exc}"
                     + (f"; {hint}" if hint else ""), source=str(path), field="PixelData")

