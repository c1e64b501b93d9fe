"""3D retinal OCT adapter (``oct``).

Reads a volume as:

* a folder of B-scan images in natural order (``oct_0.png, oct_1.png, …, oct_10.png`` —
  OCTCube's layout),
* a multi-frame DICOM (Ophthalmic Tomography) via pydicom,
* ``.npy`` / ``.npz`` holding ``(F, H, W)``,
* NIfTI (``.nii``/``.nii.gz``, nnU-Net-style retinal OCT): a 3D volume ``(x, y, z)`` = (fast axis,
  depth, B-scan index) or a single 2D B-scan ``(x, y)``, via nibabel,
* vendor files through the optional extra ``medfm[oct-vendor]``: Heidelberg ``.vol``
  and ``.e2e`` via eyepy, Topcon ``.fds``/``.fda`` and Zeiss ``.img`` via oct-converter.

``read`` → ``Record(data=(F, H, W) float32, meta)`` with B-scan order preserved.
``preprocess`` resamples to ``frames`` along the slow axis and ``size`` in plane,
min–max normalises, then ``normalize`` → ``{"x": (1, F, H, W)}``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import nibabel as nib
import numpy as np
import torch

from medfm.errors import ConfigError, DataError
from medfm.limits import check_declared_shape
from medfm.modality import ModalityAdapter, Record, check_format, require_file
from medfm.registry import register_modality

from . import geometry, intensity
from . import imaging as im
from .augment import flip_and_jitter
from .tower_config import vit_tower
from . import dicom as dcm
from .dicom import check_dicom_modality
from .vendor_oct import read_e2e, topcon_readers

VENDOR_EXTRA = "medfm[oct-vendor]"
VENDOR_SUFFIXES = (".vol", ".e2e", ".fds", ".fda", ".img")


def _vendor_import(module: str, path: Path):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DataError(f"reading {path.suffix} files needs the optional extra {VENDOR_EXTRA} "
                        f"(pip install '{VENDOR_EXTRA}'; missing module {module!r})", source=str(path)) from e


def _vendor_call(path: Path, fn):
    try:
        return fn()
    except DataError:
        raise
    except Exception as e:  # vendor parsers fail with construct/numpy/struct errors
        raise DataError(f"cannot parse vendor OCT file: {type(e).__name__}: {e}", source=str(path)) from e


def read_vendor_oct(path: Path) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Vendor OCT file → ``((F, H, W) float32, meta)``. Patient fields of the file are not copied."""
    sfx = path.suffix.lower()
    if sfx == ".vol":
        vr = _vendor_import("eyepy.io.he.vol_reader", path)

        def f():
            pf = vr.HeVolReader(str(path)).parsed_file
            vol = np.stack([np.asarray(b.data, dtype=np.float32) for b in pf.bscans])
            return vol, {"scale_mm": (float(pf.distance), float(pf.scale_y), float(pf.scale_x)),
                         "scan_pattern": int(pf.scan_pattern)}
        return _vendor_call(path, f)
    if sfx == ".e2e":  # eyepy's container parser (its series index needs directory chunks)
        return _vendor_call(path, lambda: read_e2e(path))
    readers = topcon_readers(path)  # numpy-2 layer around oct-converter's fromstring (vendor_oct)
    cls = {".fds": "FDS", ".fda": "FDA", ".img": "IMG"}[sfx]

    def g():
        v = getattr(readers, cls)(str(path)).read_oct_volume()
        v = v[0] if isinstance(v, list) else v
        return np.asarray(v.volume, dtype=np.float32), {}
    return _vendor_call(path, g)


def read_nifti_oct(path: Path) -> Tuple[np.ndarray, Dict[str, Any]]:
    """NIfTI OCT → ``((F, H, W) float32, meta)`` via nibabel.

    NIfTI stores ``(x, y[, z])``: x = the fast (A-scan) axis, y = depth, z = the B-scan index.
    A 2D file (or a 3D one with a single slice) is one B-scan, ``F = 1``. ``meta["spacing_mm"]``
    is ``(z, y, x)`` voxel size from the header.
    """
    try:
        img = nib.load(str(path))
        shape = img.header.get_data_shape()
    except Exception as e:  # nibabel raises many types for damaged files
        raise DataError(f"unreadable NIfTI header: {type(e).__name__}: {e}", source=str(path)) from e
    check_declared_shape(shape, source=path, what="NIfTI OCT")  # before any voxel is read
    try:
        arr = np.asarray(img.dataobj, dtype=np.float32)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as e:  # nibabel raises many types for damaged files
        raise DataError(f"unreadable NIfTI: {type(e).__name__}: {e}", source=str(path)) from e
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(f"NIfTI OCT must be 2D or 3D, got shape {arr.shape}", source=str(path), field="shape")
    zooms = (zooms + (1.0, 1.0, 1.0))[:3]
    return np.ascontiguousarray(arr.transpose(2, 1, 0)), {"spacing_mm": (zooms[2], zooms[1], zooms[0])}


def read_vendor_enface(path: Path) -> Tuple[np.ndarray, Dict[str, Any]]:
    """The en-face (SLO/fundus) image stored in a vendor OCT file → ``((H, W[, 3]) float32, meta)``."""
    sfx = path.suffix.lower()
    if sfx == ".vol":
        vr = _vendor_import("eyepy.io.he.vol_reader", path)

        def f():
            pf = vr.HeVolReader(str(path)).parsed_file
            return np.asarray(pf.localizer, dtype=np.float32), {
                "format": "heidelberg-vol-slo",
                "pixel_spacing": (float(pf.scale_y_slo), float(pf.scale_x_slo))}
        return _vendor_call(path, f)
    if sfx == ".e2e":
        return _vendor_call(path, lambda: read_e2e(path, want="localizer"))
    readers = topcon_readers(path)
    cls = {".fds": "FDS", ".fda": "FDA"}.get(sfx)
    if cls is None:
        raise DataError(f"no en-face image reader for {sfx} files", source=str(path))
    return _vendor_call(path, lambda: (np.asarray(getattr(readers, cls)(str(path)).read_fundus_image().image,
                                                  dtype=np.float32), {"format": f"topcon-{sfx[1:]}-fundus"}))


@register_modality("oct")
class OCTAdapter(ModalityAdapter):
    """3D retinal OCT volumes.

    Options: ``frames`` (B-scans after resampling along the slow axis), ``size``
    (H, W in plane), ``npz_key``, ``normalize`` (after min–max to [0, 1]; default
    ``meanstd`` with ``mean``/``std``), ``hflip`` (train flip probability of the fast
    axis), ``jitter``, ``patch_size`` (frames, H, W tubelet), ``pool``.
    Masking: MAE at 0.9 (OCTCube) unless the masked objective sets ``mask_ratio``.
    """

    name = "oct"
    input_kind = "path"
    suffixes = (".dcm", ".npy", ".npz", ".nii", ".nii.gz", "") + VENDOR_SUFFIXES
    dicom_modalities = ("OPT", "OCT")  # ophthalmic tomography; OCT (non-ophthalmic) as DICOM names it
    suffix_priority = 20  # .vol/.e2e/.fds/.fda: the volume before its SLO image (fundus)
    defaults: Dict[str, Any] = {
        "frames": 60,
        "size": [256, 256],
        "npz_key": None,
        "normalize": "meanstd",
        "mean": [0.5],
        "std": [0.5],
        "hflip": 0.5,
        "jitter": 0.1,
        "patch_size": [3, 16, 16],
        "pool": "mean",
    }
    mask_ratio = 0.9  # OCTCube
    training_options = ("hflip", "jitter")  # act only with train=True

    def __init__(self, **options: Any):
        super().__init__(**options)
        if len(self.options["size"]) != 2 or len(self.options["patch_size"]) != 3:
            raise ConfigError("oct: size needs 2 values (H, W) and patch_size 3 (F, H, W)")

    @classmethod
    def reads_folder(cls, folder: Path) -> bool:
        """A folder is an OCT volume when it holds B-scan images and nothing else."""
        files = [p for p in folder.iterdir() if not p.name.startswith(".")]
        return bool(files) and all(p.is_file() and p.suffix.lower() in im.IMAGE_SUFFIXES for p in files)

    def read(self, source: Any, *, sample_id: Optional[str] = None, row: Optional[Mapping[str, Any]] = None) -> Record:
        """Path → ``Record((F, H, W) float32, meta)`` with B-scans in acquisition order."""
        path = require_file(source, what="OCT input")
        sfx = check_format(path, self.name, self.suffixes)
        meta: Dict[str, Any] = {}
        if path.is_dir():
            data, meta["format"] = im.read_image_folder(path), "bscan-folder"
        elif sfx in (".nii", ".nii.gz"):
            data, nmeta = read_nifti_oct(path)
            meta.update(nmeta, format="nifti")
        elif sfx in (".npy", ".npz"):
            data, meta["format"] = im.read_array_file(path, key=self.options["npz_key"]), "array"
        elif sfx in VENDOR_SUFFIXES:
            data, vmeta = read_vendor_oct(path)
            meta.update(vmeta, format=f"vendor{sfx}")
        else:
            ds = dcm.read_dicom(path)
            flags = check_dicom_modality(ds, self, path)
            data = dcm.dicom_pixels(ds, path, modality_lut=False)
            meta.update(dcm.safe_dicom_meta(ds), format="dicom")
            if flags:
                meta["flags"] = flags
            if data.ndim == 4:  # colour frames: luminance
                data = data @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if data.ndim == 2:
            data = data[None]
        im.check_array(data, 3, source=path, what="OCT volume")
        meta["shape"] = tuple(data.shape)
        return Record(data.astype(np.float32), meta)

    def preprocess(self, record: Record, *, train: bool = False, rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
        """``(F, H, W)`` → ``{"x": (1, frames, size[0], size[1]) float32}``."""
        o = self.options
        if train and rng is None:
            rng = np.random.default_rng()
        x = torch.from_numpy(np.ascontiguousarray(record.data, dtype=np.float32))[None]
        x = intensity.normalize(x, "minmax")
        x = geometry.resample_volume(x, (int(o["frames"]), *o["size"]))
        x = intensity.normalize(x, o["normalize"], mean=o["mean"], std=o["std"])
        item = {"x": x.float().contiguous()}
        return self.augment(item, rng) if train else item

    def augment(self, item: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
        """Random left-right flip of the B-scans and intensity jitter of a ``(1, F, H, W)`` volume."""
        return flip_and_jitter(item, rng, width_dim=3, hflip=self.options["hflip"],
                                  jitter=self.options["jitter"])

    def tower_config(self) -> Dict[str, Any]:
        o = self.options
        emb = {"type": "patch3d", "in_chans": 1, "input_size": [int(o["frames"]), *map(int, o["size"])],
               "patch_size": list(o["patch_size"])}
        return vit_tower(emb, mask_ratio=self.mask_ratio, pool=o["pool"])
