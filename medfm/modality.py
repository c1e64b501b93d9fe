"""The contract between the engine and a modality adapter.

An adapter turns what a manifest cell holds (a path, or an inline value such as a
DNA sequence or a report) into tensors the engine can encode:

    cell ──read()──► Record(data, meta) ──preprocess(train)──► {"x": Tensor, ["mask": Tensor]}
                                                        ──collate([...])──► batched dict

``x`` (and the optional ``mask``: 1 for a real token, 0 for padding, shape ``(L,)``)
are what ``model.encode(modality, x, mask)`` receives; every other key an adapter
returns is metadata, kept out of the model. An optional ``"flags"`` key (a list of
strings) reports a usable but suspicious input (a flat ECG lead, a NIfTI read as CT):
the dataset logs, counts and removes it; :meth:`ModalityAdapter.load` copies a reader's
``record.meta["flags"]`` there.

Adapters also say how their tensors are cut into tokens: :meth:`tower_config`
returns the config of the tower (token embedder, pooling, masked-modelling
target) that the engine builds for the modality. Adding a modality is one module
in ``modalities/`` with a class decorated by :func:`medfm.registry.register_modality`, which
declares its facts (``suffixes``, ``dicom_modalities``, ``suffix_priority``, ``reads_folder``).
"""
from __future__ import annotations

import copy
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .errors import ConfigError, DataError, MedFMError
from .schema import warn_moved
from .limits import check_file_size, check_text_size
from .input_files import check_regular, read_head

if TYPE_CHECKING:  # the contract names numpy/torch types; importing them is the adapters' business
    import numpy as np


@dataclass
class Record:
    """What ``read`` returns: the data in canonical units plus metadata.

    ``data`` is an ``np.ndarray`` for imaging and signals, a ``str`` for sequences
    and text. ``meta`` holds spacing, sampling rate, lead names, ... — never
    patient-identifying header fields.
    """

    data: Any
    meta: Dict[str, Any] = field(default_factory=dict)


class ModalityAdapter:
    """Base class of every modality adapter.

    Class attributes:
        name: registry name (``"ct"``, ``"ecg"``, ...).
        input_kind: ``"path"`` when a manifest cell holds a file path, ``"value"``
            when it holds the data inline (DNA sequence, report text).
        suffixes: file suffixes the adapter reads, lower case, with the dot.
    """

    name: ClassVar[str] = ""
    input_kind: ClassVar[str] = "path"
    suffixes: ClassVar[Sequence[str]] = ()
    #: default options; subclasses extend. Unknown keys passed to __init__ are errors.
    defaults: ClassVar[Dict[str, Any]] = {}
    #: the masked-modelling ratio of the modality's published recipe, proposed to its tower as the
    #: fallback; the masked objective owns the setting (``{name: masked, mask_ratio: {<m>: r}}``)
    mask_ratio: ClassVar[Optional[float]] = None
    #: options that act only when ``train=True`` (random augmentations): an export lists them apart
    #: from the inference options (``training_augmentation`` in ``preprocessing.json``)
    training_options: ClassVar[Sequence[str]] = ()
    #: DICOM Modality (0008,0060) values this adapter reads. ``medfm manifest`` puts a DICOM object
    #: in the column of the adapter that declares its value, ``medfm inspect`` picks that adapter,
    #: and the adapter's readers refuse a DICOM object whose value it does not declare.
    dicom_modalities: ClassVar[Tuple[str, ...]] = ()
    #: when several adapters read a file's suffix (``.nii.gz``: ct/oct, ``.png``: xray/fundus),
    #: ``manifest`` and ``inspect`` choose the one with the lowest priority
    suffix_priority: ClassVar[int] = 50

    @classmethod
    def reads_folder(cls, folder: Path) -> bool:
        """Whether ``folder`` as a whole is one input of this adapter (a DICOM series, a B-scan folder).

        ``inspect`` offers a folder to the adapters that say yes, in :attr:`suffix_priority` order.
        Default: no folder.
        """
        return False

    def __init__(self, **options: Any):
        if "mask_ratio" in options and "mask_ratio" not in self.defaults:  # deprecated: moved to the objective
            options = dict(options)
            value = options.pop("mask_ratio")
            warn_moved(f"modality {self.name!r} option mask_ratio",
                       f"mask_ratio belongs to the masked objective: objectives: [{{name: masked, mask_ratio: "
                       f"{{{self.name}: {value}}}}}]; until then it sets this adapter's fallback ratio",
                       key=("mask_ratio", self.name, value))
            self.mask_ratio = float(value)
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"modality {self.name!r}: unknown option(s) {unknown}; known: {sorted(self.defaults)}"
            )
        merged = copy.deepcopy(dict(self.defaults))
        merged.update(copy.deepcopy(options))
        self.options: Dict[str, Any] = merged

    # ------------------------------------------------------------------ reading
    def read(self, source: Any, *, sample_id: Optional[str] = None, row: Optional[Mapping[str, Any]] = None) -> Record:
        """Read one cell into a :class:`Record`. Raise :class:`DataError` naming ``source``.

        ``row`` is the whole manifest row, for adapters that need a side column
        (a sampling rate or spacing given in the manifest).
        """
        raise NotImplementedError

    def preprocess(self, record: Record, *, train: bool = False, rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
        """Canonicalise a record into tensors: ``{"x": Tensor, ["mask": Tensor], ...}``.

        ``train=True`` applies the random augmentations (using ``rng``); eval is
        deterministic.
        """
        raise NotImplementedError

    def load(self, source: Any, *, train: bool = False, rng: Optional[np.random.Generator] = None,
             sample_id: Optional[str] = None, row: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """``preprocess(read(source))``; any failure becomes a :class:`DataError` naming the sample."""
        label = sample_id if sample_id is not None else (source if self.input_kind == "path" else None)
        if self.input_kind == "path" and isinstance(source, (str, os.PathLike)):
            check_file_size(source)
        elif isinstance(source, str):  # an inline value: bounded before any tokenizer sees it
            check_text_size(source, source=label, field=self.name, what=f"inline {self.name} value")
        try:
            record = self.read(source, sample_id=sample_id, row=row)
            item = self.preprocess(record, train=train, rng=rng)
        except MedFMError as e:
            if isinstance(e, DataError) and e.source is None and label is not None:
                raise DataError(e.reason, source=str(label), field=e.field) from e
            raise
        except Exception as e:  # a reader library failed in its own words
            raise DataError(f"cannot read {self.name} input: {type(e).__name__}: {e}", source=str(label)) from e
        check_finite(item, self.name, label)
        notes = list(record.meta.get("flags") or ())
        if notes:  # a reader's warning about the file (NIfTI read as CT): counted by the dataset
            item = {**item, "flags": list(dict.fromkeys(list(item.get("flags") or ()) + notes))}
        return item

    def augment(self, item: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
        """Train-time random part of preprocessing, applied to an eval-mode item.

        Adapters whose ``preprocess(record, train=True)`` is ``augment(preprocess(record,
        train=False), rng)`` implement this, which lets the engine cache the deterministic
        part on disk (:class:`medfm.data.cache.PreprocessCache`) and re-draw augmentations
        every epoch. Default: no augmentation.
        """
        return item

    def source_from_row(self, row: Mapping[str, Any], column: str) -> Any:
        """The cell this modality reads from a manifest row (``None`` = absent).

        Default: ``row[column]``. An adapter may build its input from other columns
        (a taxonomy string from rank columns).
        """
        return row.get(column)

    # ---------------------------------------------------------------- batching
    def collate(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Batch preprocessed items. Default: stack tensors, list everything else."""
        import torch  # deferred: torch takes seconds to import and `medfm --help` imports this module

        out: Dict[str, Any] = {}
        for key in items[0]:
            vals = [it[key] for it in items]
            out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
        return out

    # --------------------------------------------------------- model building
    def tower_config(self) -> Dict[str, Any]:
        """The tower the engine builds for this modality (a registered tower: ``vit`` in :mod:`medfm.models.vit_tower`, ``hf`` in :mod:`medfm.models.hf_tower`)."""
        raise NotImplementedError

    def fit(self, values: Iterable[Any], patient_ids: Optional[Sequence[Any]] = None) -> None:
        """Learn data-dependent state (a tokenizer) from the training cells. Default: nothing.

        ``patient_ids[i]`` is the patient of ``values[i]`` (or ``None``): an adapter that learns a
        vocabulary from free text keeps identifiers out with it (a word needs several patients).
        """

    def save_pretrained(self, directory: os.PathLike) -> None:
        """Write adapter state (tokenizer files) into ``directory``. Default: nothing."""

    def load_pretrained(self, directory: os.PathLike) -> None:
        """Read what :meth:`save_pretrained` wrote. Default: nothing."""

    def cache_signature(self, row: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """What determines preprocessing output, for the on-disk cache key.

        Besides the options, the manifest side columns an adapter reads (options named
        ``*_column``, e.g. a spacing or sampling-rate column) are part of the key.
        """
        sig: Dict[str, Any] = {"modality": self.name, "options": self.options}
        if row is not None:
            cols = [v for k, v in sorted(self.options.items()) if k.endswith("_column") and isinstance(v, str)]
            sig["row"] = {c: None if row.get(c) is None else str(row.get(c)) for c in cols}
        return sig

    def inference_spec(self) -> Optional[Dict[str, Any]]:
        """The eval-mode preprocessing as data, complete enough to reimplement without medfm.

        Written into ``preprocessing.json`` by ``medfm export``: per input format, the ordered
        steps (reading, colour conversion, interpolation, crop/pad rule, value scaling, dtype)
        with every constant they use. ``None`` (the default) when the adapter does not state
        one; the export then carries only the options and the module docstring.
        """
        return None

    def config(self) -> Dict[str, Any]:
        """Options to rebuild this adapter (stored in a checkpoint's ``config.json``).

        An adapter used under another modality name (:func:`medfm.registry.get_modality`
        with ``adapter=``) adds ``"adapter": <registered name>``.
        """
        cfg = copy.deepcopy(self.options)
        if getattr(self, "alias_of", None):
            cfg["adapter"] = self.alias_of
        return cfg

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"


def fit_on_cohort(adapter: ModalityAdapter, values: Sequence[Any], patient_ids: Sequence[Any]) -> None:
    """``adapter.fit(values, patient_ids=...)``; an adapter whose ``fit`` predates patient ids gets ``values`` only."""
    params = inspect.signature(adapter.fit).parameters
    if "patient_ids" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        adapter.fit(values, patient_ids=patient_ids)
    else:
        adapter.fit(values)


def check_finite(item: Mapping[str, Any], modality: str, source: Any) -> None:
    """Raise :class:`DataError` when a float tensor of ``item`` holds NaN or inf."""
    # deferred: `medfm --help` imports this module, and neither numpy nor torch (seconds) is needed there
    import numpy as np
    import torch

    for key, val in item.items():
        # numpy: torch's multi-threaded reduction is slow inside busy DataLoader workers
        if isinstance(val, torch.Tensor) and val.is_floating_point() and not np.isfinite(val.detach().cpu().numpy()).all():
            raise DataError(f"{modality} input has non-finite values after preprocessing", source=str(source), field=key)


def matching_suffix(path: Any, suffixes: Sequence[str]) -> Optional[str]:
    """The longest of ``suffixes`` that ``path``'s name ends with (case-insensitive), or ``None``.

    ``""`` in ``suffixes`` (files without a suffix, e.g. DICOM) matches a name with no dot.
    """
    name = Path(str(path)).name.lower()
    for sfx in sorted((s for s in suffixes if s), key=len, reverse=True):
        if name.endswith(sfx.lower()):
            return sfx.lower()
    if "" in suffixes and "." not in name:
        return ""
    return None


def _is_dicom(path: Path) -> bool:
    return read_head(path, 132)[128:132] == b"DICM"  # never opens a FIFO or a device


def check_format(path: Any, modality: str, suffixes: Sequence[str]) -> str:
    """The format suffix of a file an adapter is asked to read, or :class:`DataError`.

    Folders pass (DICOM series, B-scan folders) as ``"/"``. A file whose suffix is not among
    ``suffixes`` passes only when it is sniffed as DICOM (``DICM`` at byte 128) and the modality
    reads DICOM; otherwise: ``unsupported format X for modality Y; supported: ...``.
    """
    p = Path(str(path))
    if p.is_dir():
        return "/"
    sfx = matching_suffix(p, suffixes)
    if sfx is not None:
        return sfx
    if ".dcm" in suffixes and _is_dicom(p):
        return ".dcm"
    name = p.name.lower()
    found = name[name.index("."):] if "." in name else "(no suffix)"
    if found.count(".") > 1:
        found = "." + found.rsplit(".", 1)[-1]
    listed = " ".join(s or "(no suffix: DICOM)" for s in suffixes)
    raise DataError(f"unsupported format {found!r} for modality {modality!r}; supported: {listed}", source=str(p))


def file_reference(value: Any, suffixes: Sequence[str]) -> Optional[tuple]:
    """For inline-value modalities: ``(Path, record_id or None)`` when a cell names a file.

    A cell is a file reference when it is one line whose path part (before an optional
    ``#RECORD``) ends with one of ``suffixes`` — ``barcodes.fasta#BOLD123`` or ``report.txt``.
    """
    if not isinstance(value, (str, os.PathLike)):
        return None
    s = str(value).strip()
    if not s or "\n" in s or len(s) > 4096:
        return None
    path, _, rec = s.partition("#")
    if matching_suffix(path, [x for x in suffixes if x]) is None:
        return None
    return Path(path).expanduser(), (rec.strip() or None)


def require_file(path: Any, *, what: str = "file") -> Path:
    """Return ``Path(path)`` when it is a regular file or a folder (links followed), else raise
    :class:`DataError`: ``not found``, or ``'x.png' is a named pipe, not a file`` for a FIFO, a
    socket or a device (checked with ``stat``, nothing is opened)."""
    p = Path(str(path)).expanduser()
    check_regular(p, what=what, allow_dir=True)
    return p
