"""The CT volume operations medfm takes from MONAI (and nibabel): NIfTI reading through MONAI's
``NibabelReader``, reorientation to RAS with resampling to a voxel size, HU windows as channels.

MONAI takes seconds to import, so this module is imported by :mod:`medfm.modalities.ct` on
its first volume (``medfm manifest`` and ``medfm inspect`` import the CT adapter to ask
``reads_folder``, and a 2D adapter never needs MONAI).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, Orientation, ScaleIntensityRange, Spacing

from medfm.errors import DataError
from medfm.limits import check_declared_shape

from .imaging import Volume, check_array, check_geometry


def read_nifti(path: Path) -> Volume:
    """NIfTI through MONAI's ``LoadImage`` with its ``NibabelReader`` → :class:`~medfm.modalities.imaging.Volume`."""
    try:  # the header alone first: a declared size over the limits fails before any allocation
        header_img = nib.load(str(path))
        shape, stated = header_img.header.get_data_shape(), np.asarray(header_img.affine, dtype=np.float64)
    except Exception as e:
        raise DataError(f"unreadable NIfTI header: {type(e).__name__}: {e}", source=str(path)) from e
    check_declared_shape(shape, source=path, what="NIfTI volume")
    # the header's own affine: MONAI silently replaces a NaN one with the identity
    check_geometry(Volume(np.zeros((1, 1, 1), np.float32), (1.0, 1.0, 1.0), stated, {}), source=path, spacing=False)
    try:
        mt = LoadImage(reader="NibabelReader", image_only=True)(str(path))
    except Exception as e:  # nibabel/MONAI raise many types for damaged files
        raise DataError(f"unreadable NIfTI: {type(e).__name__}: {e}", source=str(path)) from e
    arr = np.asarray(mt.as_tensor() if hasattr(mt, "as_tensor") else mt, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    check_array(arr, 3, source=path, what="NIfTI volume")
    aff = np.asarray(mt.affine, dtype=np.float64)
    sp = np.sqrt((aff[:3, :3] ** 2).sum(0))
    return Volume(np.ascontiguousarray(arr.transpose(2, 1, 0)), (float(sp[2]), float(sp[1]), float(sp[0])), aff, {})


def to_ras_spacing(vol: Volume, target_spacing: Optional[Sequence[float]], *, orient: bool = True) -> Volume:
    """Reorient to RAS and resample to ``target_spacing`` (mm, along D, H, W) with MONAI.

    The tensor axes after this are ``(D, H, W)`` = (S, A, R) index directions, i.e. a
    RAS-oriented ``(X, Y, Z)`` MONAI array transposed to ``(Z, Y, X)``.
    """
    mt = MetaTensor(torch.from_numpy(np.ascontiguousarray(vol.data.transpose(2, 1, 0)))[None], affine=torch.as_tensor(vol.affine))
    if orient:
        mt = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(mt)
    if target_spacing is not None:
        tz, ty, tx = (float(s) for s in target_spacing)
        mt = Spacing(pixdim=(tx, ty, tz), mode="bilinear", padding_mode="border", dtype=np.float32)(mt)
    aff = np.asarray(mt.affine, dtype=np.float64)
    sp = np.sqrt((aff[:3, :3] ** 2).sum(0))  # (x, y, z)
    data = mt.as_tensor()[0].numpy().transpose(2, 1, 0)
    return Volume(np.ascontiguousarray(data, dtype=np.float32), (float(sp[2]), float(sp[1]), float(sp[0])), aff, vol.meta)


def hu_windows(vol: torch.Tensor, windows: Sequence[Tuple[float, float]]) -> torch.Tensor:
    """``(D, H, W)`` HU → ``(C, D, H, W)`` in [0, 1], one channel per (center, width) window."""
    chans = [ScaleIntensityRange(a_min=c - w / 2, a_max=c + w / 2, b_min=0.0, b_max=1.0, clip=True)(vol)
             for c, w in windows]
    return torch.stack([torch.as_tensor(c).as_subclass(torch.Tensor) for c in chans]).float()
