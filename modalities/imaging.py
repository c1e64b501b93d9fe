"""Imaging files for the ``ct``, ``xray``, ``oct`` and ``fundus`` adapters: PNG/JPEG/TIFF
(:func:`read_image_file`), B-scan folders, ``.npy``/``.npz`` without pickle, the :class:`Volume`
they and the DICOM readers (:mod:`medfm.modalities.dicom`) return, and the checks on what they
read (shape headers, geometry, spacing cells, finite values).

The other imaging mechanics have one module per job (torch and MONAI stay out of this one):

* :mod:`medfm.modalities.intensity`: named HU windows, :func:`normalize`, optional CLAHE;
* :mod:`medfm.modalities.geometry`: resize + pad to a square, frame resampling, crop/pad;
* :mod:`medfm.modalities.volume_ops`: what MONAI does for CT (NIfTI, RAS + spacing, HU windows);
* :mod:`medfm.modalities.augment`: flips and intensity jitter from an explicit generator;
* :mod:`medfm.modalities.tower_config`: the ViT tower config the imaging adapters ask for.

Their names stay importable from here (``imaging.normalize``), resolved on first use.
"""
from __future__ import annotations

import importlib
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from medfm.errors import DataError
from medfm.input_files import check_regular, open_regular
from medfm.limits import check_declared_shape

#: names that moved to a module of their own (``name -> module``), still importable from here
_MOVED: Dict[str, str] = {
    **dict.fromkeys(("HU_WINDOWS", "resolve_windows", "normalize", "clahe"), "intensity"),
    **dict.fromkeys(("resize_2d", "resize_pad_square", "resample_volume", "crop_or_pad"), "geometry"),
    **dict.fromkeys(("hu_windows", "to_ras_spacing"), "volume_ops"),
    **dict.fromkeys(("random_flip", "intensity_jitter", "flip_and_jitter"), "augment"),
    "vit_tower": "tower_config",
}


def __getattr__(name: str) -> Any:
    """A moved name (PEP 562), from its module on first use: ``import imaging`` loads neither torch nor MONAI."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"medfm.modalities.{_MOVED[name]}"), name)
    globals()[name] = value
    return value


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom", "")


@dataclass
class Volume:
    """A 3D scalar volume with geometry.

    Attributes:
        data: ``(D, H, W)`` float32 — slices, rows, columns.
        spacing: ``(sd, sh, sw)`` voxel size in mm along (D, H, W).
        affine: ``(4, 4)`` voxel index ``(w, h, d, 1)`` → RAS world mm (MONAI/NIfTI convention).
        meta: non-identifying metadata.
    """

    data: np.ndarray
    spacing: Tuple[float, float, float]
    affine: np.ndarray
    meta: Dict[str, Any]



# ------------------------------------------------------------ 2D image files
def read_image_file(path: os.PathLike, *, color: bool = False) -> np.ndarray:
    """PNG/JPEG/TIFF/BMP via Pillow as float32: ``(H, W)`` gray or ``(H, W, 3)`` when ``color``.

    8- and 16-bit (``I;16``) images keep their native integer values.
    """
    check_regular(path, what="image")
    bomb_limit = Image.MAX_IMAGE_PIXELS
    try:
        # medfm's max_elements check (right after open, before any decoding) replaces Pillow's
        # decompression-bomb limit, so that one option raises the limit for every format
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(str(path)) as im:
            w, h = im.size
            check_declared_shape((h, w, len(im.getbands()) or 1), source=path, what=f"{im.format or 'image'}")
            if im.format == "PNG":
                check_png_data(path)
            im.load()
            if color:
                im = im.convert("RGB") if im.mode not in ("RGB",) else im
                return np.asarray(im, dtype=np.float32)
            if im.mode in ("RGB", "RGBA", "P", "CMYK", "LA", "YCbCr"):
                im = im.convert("L")
            return np.asarray(im, dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"unreadable image: {type(e).__name__}: {e}", source=str(path)) from e
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit


def check_png_data(path: os.PathLike) -> None:
    """Raise :class:`DataError` when a PNG's image data is shorter than its header declares.

    Pillow decodes a PNG whose compressed stream ends early without complaint and fills the
    missing rows with zeros; here the IDAT stream is inflated (streamed, never held whole)
    and its length compared with what IHDR (size, bit depth, colour type, interlacing) needs.
    """
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
    with open_regular(path) as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return  # Pillow reports what it is not
        inflater, produced, expected = zlib.decompressobj(), 0, None
        while True:
            head = fh.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            data = fh.read(length)
            fh.read(4)  # CRC (Pillow checks it)
            if kind == b"IHDR" and len(data) >= 13:
                w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", data[:13])
                bpp = depth * channels.get(ctype, 1)
                if interlace:
                    passes = [(8, 8, 0, 0), (8, 8, 4, 0), (4, 8, 0, 4), (4, 4, 2, 0), (2, 4, 0, 2), (2, 2, 1, 0),
                              (1, 2, 0, 1)]
                    expected = 0
                    for dx, dy, x0, y0 in passes:
                        pw, ph = (w - x0 + dx - 1) // dx, (h - y0 + dy - 1) // dy
                        if pw and ph:
                            expected += ph * (1 + (pw * bpp + 7) // 8)
                else:
                    expected = h * (1 + (w * bpp + 7) // 8)
            elif kind == b"IDAT":
                try:
                    while data:
                        produced += len(inflater.decompress(data, 1 << 20))
                        data = inflater.unconsumed_tail
                except zlib.error as e:
                    raise DataError(f"corrupt PNG image data: {e}", source=str(path), field="IDAT") from e
            elif kind == b"IEND":
                break
    if expected is not None and produced < expected:
        raise DataError(f"truncated PNG: the header declares {expected} bytes of image data, the file holds "
                        f"{produced}", source=str(path), field="IDAT")


_NUM = re.compile(r"(\d+)")


def natural_key(name: str) -> list:
    """Sort key so that ``oct_2.png`` < ``oct_10.png`` (OCTCube's B-scan layout)."""
    return [int(t) if t.isdigit() else t.lower() for t in _NUM.split(name)]


def read_image_folder(folder: os.PathLike) -> np.ndarray:
    """Stack of 2D gray images from ``folder`` in natural order → ``(F, H, W)`` float32."""
    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))
    if not files:
        raise DataError(f"folder holds no image of types {IMAGE_SUFFIXES}", source=str(folder))
    for p in files:  # a FIFO or a device among the B-scans is named, never opened
        check_regular(p, what="B-scan")
    frames = [read_image_file(p) for p in files]
    for p, f in zip(files, frames):
        if f.shape != frames[0].shape:
            raise DataError(f"B-scan size {f.shape} differs from {frames[0].shape}", source=str(p))
    return np.stack(frames)


def read_array_file(path: os.PathLike, *, key: Optional[str] = None) -> np.ndarray:
    """``.npy`` or ``.npz`` (``key`` or the only/first array) without pickle → float32."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(str(path), allow_pickle=False) as z:
                names = list(z.files)
                if not names:
                    raise DataError(".npz holds no array", source=str(path))
                k = key if key is not None else ("arr_0" if "arr_0" in names else names[0])
                if k not in names:
                    raise DataError(f"array {k!r} not in .npz (has {names})", source=str(path), field=k)
                check_declared_shape(npz_member_shape(z, k), source=path, what=f".npz array {k!r}")
                arr = z[k]
        else:
            check_declared_shape(npy_declared_shape(path), source=path, what=".npy array")
            arr = np.load(str(path), allow_pickle=False)
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"unreadable array file: {e}", source=str(path)) from e
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"array dtype {arr.dtype} is not numeric", source=str(path))
    return arr.astype(np.float32)


def _npy_header_shape(fh) -> Tuple[int, ...]:
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, _ = read(fh)
    return tuple(shape)


def npy_declared_shape(path: os.PathLike) -> Tuple[int, ...]:
    """The shape a ``.npy`` header declares (nothing else is read)."""
    with open_regular(path) as fh:
        return _npy_header_shape(fh)


def npz_member_shape(z, key: str) -> Tuple[int, ...]:
    """The shape an ``.npz`` member declares in its header, without decompressing the data."""
    with z.zip.open(key + ".npy") as fh:
        return _npy_header_shape(fh)


def check_geometry(vol: "Volume", *, source: Any, min_spacing: float = 0.01, max_spacing: float = 100.0,
                   spacing: bool = True) -> None:
    """Raise :class:`DataError` for geometry no scanner produces: a non-finite or singular
    affine, or a voxel size outside ``[min_spacing, max_spacing]`` mm (resampling such a
    volume to a physical grid would give a handful of voxels or billions)."""
    aff = np.asarray(vol.affine, dtype=np.float64)
    if not np.isfinite(aff).all():
        raise DataError("the affine (voxel → world) holds NaN or infinite values", source=str(source), field="affine")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise DataError("the affine (voxel → world) is singular (zero voxel size or collapsed axes)",
                        source=str(source), field="affine")
    if not spacing:
        return
    sp = np.asarray(vol.spacing, dtype=np.float64)
    if not np.isfinite(sp).all() or (sp < min_spacing).any() or (sp > max_spacing).any():
        raise DataError(f"voxel spacing {tuple(round(float(v), 6) for v in sp)} mm is outside the physical range "
                        f"[{min_spacing}, {max_spacing}] mm", source=str(source), field="spacing")


def parse_spacing(value: Any, n: int, *, source: Any, field: str) -> Tuple[float, ...]:
    """Spacing from a manifest cell: ``"3,0.8,0.8"``, ``"3 0.8 0.8"``, a list, or one number."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        raise DataError(f"spacing column {field!r} is required for array inputs and is empty", source=str(source), field=field)
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s;x×]+", value.strip("[]() ")) if p]
    elif isinstance(value, (int, float)):
        parts = [value] * n
    else:
        parts = list(value)
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError as e:
        raise DataError(f"cannot parse spacing {value!r}", source=str(source), field=field) from e
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n or any(v <= 0 or not np.isfinite(v) for v in vals):
        raise DataError(f"spacing must be {n} positive numbers, got {value!r}", source=str(source), field=field)
    return vals


def check_array(arr: np.ndarray, ndim: int, *, source: Any, what: str) -> np.ndarray:
    """Raise :class:`DataError` for wrong dimensionality, empty or non-finite arrays."""
    if arr.ndim != ndim:
        raise DataError(f"{what} must be {ndim}D, got shape {tuple(arr.shape)}", source=str(source))
    if arr.size == 0 or min(arr.shape) == 0:
        raise DataError(f"{what} is empty (shape {tuple(arr.shape)})", source=str(source))
    if not np.isfinite(arr).all():
        raise DataError(f"{what} holds NaN or infinite values", source=str(source))
    return arr


def sample_source(path: Any, sample_id: Optional[str]) -> str:
    """What errors name: the manifest id when given (never a DICOM header value), else the path."""
    return f"{sample_id} ({path})" if sample_id is not None else str(path)
