"""CT adapter (``ct``): DICOM series / multi-frame DICOM / NIfTI / .npy/.npz → HU-window channels.

``read`` gives a :class:`~medfm.modality.Record` whose ``data`` is a ``(D, H, W)``
float32 volume in Hounsfield units, reoriented to RAS (axes ``D, H, W`` = S, A, R
index directions) with ``meta`` = spacing (mm, along D, H, W), affine, format and
whitelisted non-identifying DICOM fields. ``preprocess`` resamples to
``target_spacing``, crops/pads to ``size`` (air = -1024 HU padding; random crop in
training), maps each HU window to one channel in [0, 1] and returns
``{"x": (C, D, H, W)}`` with ``C = len(windows)`` (1 when ``windows`` is empty: raw HU,
z-scored).

DICOM objects whose Modality is not CT (MR, PT, US, SEG, RTDOSE, ...) are refused before
any pixel is decoded; NIfTI records no modality, so a NIfTI volume is read with a flag
(``meta["flags"]``, counted in runs, a note in ``medfm inspect``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from medfm.errors import ConfigError, DataError
from medfm.modality import ModalityAdapter, Record, check_format, require_file
from medfm.registry import register_modality

from . import augment, geometry, intensity
from . import imaging as im
from . import dicom as dcm
from .dicom_series import split_series_reference
from .dicom import is_dicom_file
from .tower_config import vit_tower

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: NIfTI records no modality: an MR or PET volume would be windowed as HU without a word
NIFTI_FLAG = "NIfTI records no modality: read as CT (Hounsfield units) unchecked"
ARRAY_SUFFIXES = (".npy", ".npz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _volume_ops():
    """:mod:`medfm.modalities.volume_ops` (MONAI), imported with the first CT volume."""
    from . import volume_ops  # deferred: MONAI takes seconds to import; manifest/inspect import this adapter for reads_folder
    return volume_ops


def read_nifti(path: Path) -> im.Volume:
    """NIfTI → :class:`~medfm.modalities.imaging.Volume` (:func:`medfm.modalities.volume_ops.read_nifti`)."""
    return _volume_ops().read_nifti(path)


@register_modality("ct")
class CTAdapter(ModalityAdapter):
    """Computed tomography volumes in Hounsfield units.

    Options (``defaults``): ``series_uid`` (choose a series in a folder holding
    several), ``spacing_column`` (manifest column with ``"d,h,w"`` mm spacing for
    .npy/.npz), ``npz_key``, ``orient`` (reorient to RAS), ``target_spacing`` (mm along
    D, H, W or None), ``size`` (D, H, W), ``windows`` (names from
    :data:`~medfm.modalities.intensity.HU_WINDOWS` or ``[center, width]``), ``normalize``, ``flip_dims``
    (train-time flips over D/H/W = 0/1/2), ``jitter``, ``spacing_tolerance``,
    ``patch_size``, ``pool``. Masking: MAE at 0.75 unless the masked objective sets ``mask_ratio``.
    """

    name = "ct"
    input_kind = "path"
    suffixes = (".dcm", ".nii", ".nii.gz", ".npy", ".npz", "")
    dicom_modalities = ("CT",)
    suffix_priority = 10  # .nii.gz / .npy / .dcm: a volume is CT before OCT
    defaults: Dict[str, Any] = {
        "series_uid": None,
        "spacing_column": "ct_spacing",
        "npz_key": None,
        "orient": True,
        "target_spacing": [1.5, 1.5, 1.5],
        "size": [160, 224, 224],
        "windows": ["lung", "mediastinum", "bone"],
        "normalize": "none",
        "flip_dims": [2],
        "jitter": 0.05,
        "spacing_tolerance": 0.1,
        "patch_size": [4, 16, 16],
        "pool": "mean",
    }
    mask_ratio = 0.75  # MAE
    training_options = ("flip_dims", "jitter")  # act only with train=True

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._windows = intensity.resolve_windows(self.options["windows"])
        if len(self.options["size"]) != 3 or len(self.options["patch_size"]) != 3:
            raise ConfigError("ct: size and patch_size need 3 values (D, H, W)")

    @classmethod
    def reads_folder(cls, folder: Path) -> bool:
        """A folder is a CT series when it holds a DICOM file (the first few files are sniffed)."""
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        return any(is_dicom_file(p) for p in files[:8])

    # ------------------------------------------------------------------ read
    def read(self, source: Any, *, sample_id: Optional[str] = None, row: Optional[Mapping[str, Any]] = None) -> Record:
        """Path → ``Record(data=(D, H, W) HU float32, meta)``."""
        source, series_uid = split_series_reference(source)  # FOLDER#UID: one series of the folder
        path = require_file(source, what="CT input")
        sfx = check_format(path, self.name, self.suffixes)
        if path.is_dir():
            vol, fmt = dcm.read_dicom_series(path, series_uid=series_uid or self.options["series_uid"],
                                            spacing_tolerance=self.options["spacing_tolerance"], adapter=self), "dicom-series"
        elif sfx in NIFTI_SUFFIXES:
            vol, fmt = read_nifti(path), "nifti"
            vol.meta["flags"] = [NIFTI_FLAG]
        elif sfx in ARRAY_SUFFIXES:
            vol, fmt = self._read_array(path, row, sample_id), "array"
        else:
            vol, fmt = dcm.read_dicom_file_volume(path, adapter=self), "dicom"
        im.check_array(vol.data, 3, source=path, what="CT volume")
        im.check_geometry(vol, source=path)
        if fmt != "array" and self.options["orient"]:
            vol = _volume_ops().to_ras_spacing(vol, None, orient=True)
        meta = {"format": fmt, "spacing": tuple(vol.spacing), "shape": tuple(vol.data.shape),
                "affine": vol.affine.tolist(), **vol.meta}
        return Record(vol.data, meta)

    def _read_array(self, path: Path, row: Optional[Mapping[str, Any]], sample_id: Optional[str]) -> im.Volume:
        col = self.options["spacing_column"]
        arr = im.read_array_file(path, key=self.options["npz_key"])
        im.check_array(arr, 3, source=path, what="CT array")
        if row is None or col not in row:
            raise DataError(f"a .npy/.npz CT needs its spacing (mm, 'd,h,w') in manifest column {col!r}",
                            source=im.sample_source(path, sample_id), field=col)
        sd, sh, sw = im.parse_spacing(row[col], 3, source=im.sample_source(path, sample_id), field=col)
        return im.Volume(arr, (sd, sh, sw), np.diag([sw, sh, sd, 1.0]), {})

    # ------------------------------------------------------------ preprocess
    def preprocess(self, record: Record, *, train: bool = False, rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
        """HU volume → ``{"x": (C, D, H, W) float32, "spacing": (sd, sh, sw)}``."""
        o = self.options
        if train and rng is None:
            rng = np.random.default_rng()
        vol = im.Volume(np.asarray(record.data, dtype=np.float32), tuple(record.meta["spacing"]),
                        np.asarray(record.meta.get("affine", np.diag(list(record.meta["spacing"])[::-1] + [1.0]))), {})
        if o["target_spacing"] is not None:
            vol = _volume_ops().to_ras_spacing(vol, o["target_spacing"], orient=False)
        x = torch.from_numpy(vol.data)
        x = geometry.crop_or_pad(x, o["size"], pad_value=-1024.0, rng=rng if train else None)
        if self._windows:
            x = _volume_ops().hu_windows(x, self._windows)
            x = intensity.normalize(x, o["normalize"])
        else:
            x = intensity.normalize(x[None], o["normalize"] if o["normalize"] != "none" else "zscore")
        item = {"x": x.float().contiguous(), "spacing": tuple(float(s) for s in vol.spacing)}
        return self.augment(item, rng) if train else item

    def augment(self, item: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
        """Random flips and intensity jitter of a preprocessed ``(C, D, H, W)`` volume.

        (The random crop is part of ``preprocess(train=True)``; a cached eval item is centre-cropped.)
        """
        o = self.options
        x = augment.random_flip(item["x"], [1 + d for d in o["flip_dims"]], rng)
        if o["jitter"]:
            x = augment.intensity_jitter(x, rng, scale=o["jitter"], shift=o["jitter"])
        return {**item, "x": x.contiguous()}

    # ----------------------------------------------------------------- model
    def tower_config(self) -> Dict[str, Any]:
        o = self.options
        emb = {"type": "patch3d", "in_chans": max(1, len(self._windows)), "input_size": list(o["size"]),
               "patch_size": list(o["patch_size"])}
        return vit_tower(emb, mask_ratio=self.mask_ratio, pool=o["pool"])
