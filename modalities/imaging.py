"""Shared 2D/3D imaging mechanics for the ``ct``, ``xray``, ``oct`` and ``fundus`` adapters.

One job per section, so that no adapter copies another:

* Files: PNG/JPEG/TIFF (:func:`read_image_file`), B-scan folders, ``.npy``/``.npz``
  without pickle, the :class:`Volume` they and the DICOM readers
  (:mod:`medfm.modalities.dicom`) return, geometry checks.
* Intensity: HU windows as channels (:func:`hu_windows`), per-volume
  normalisation (:func:`normalize`), optional CLAHE (:func:`clahe`).
* Geometry: 2D resize keeping aspect + pad to a square (:func:`resize_pad_square`),
  frame resampling for volumes (:func:`resample_volume`), crop/pad
  (:func:`crop_or_pad`).
* Augmentation with an explicit ``numpy.random.Generator``: flips and intensity
  jitter (:func:`random_flip`, :func:`intensity_jitter`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from medfm.errors import ConfigError, DataError
from medfm.limits import check_declared_shape
from medfm.input_files import check_regular, open_regular


#: Named HU windows as (center, width).
HU_WINDOWS: Dict[str, Tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

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
    from PIL import Image, UnidentifiedImageError

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
    import struct
    import zlib

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


# ----------------------------------------------------------------- intensity
def resolve_windows(windows: Sequence[Any]) -> List[Tuple[float, float]]:
    """Names (``"lung"``) or ``[center, width]`` pairs → list of (center, width)."""
    out = []
    for w in windows:
        if isinstance(w, str):
            if w not in HU_WINDOWS:
                raise ConfigError(f"unknown HU window {w!r}; known: {sorted(HU_WINDOWS)}")
            out.append(HU_WINDOWS[w])
        else:
            c, wd = (float(v) for v in w)
            if wd <= 0:
                raise ConfigError(f"HU window width must be > 0, got {w!r}")
            out.append((c, wd))
    return out


def hu_windows(vol: torch.Tensor, windows: Sequence[Tuple[float, float]]) -> torch.Tensor:
    """``(D, H, W)`` HU → ``(C, D, H, W)`` in [0, 1], one channel per (center, width) window."""
    from monai.transforms import ScaleIntensityRange

    chans = [ScaleIntensityRange(a_min=c - w / 2, a_max=c + w / 2, b_min=0.0, b_max=1.0, clip=True)(vol)
             for c, w in windows]
    return torch.stack([torch.as_tensor(c).as_subclass(torch.Tensor) for c in chans]).float()


def normalize(x: torch.Tensor, mode: str, *, mean: Optional[Sequence[float]] = None,
              std: Optional[Sequence[float]] = None, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample intensity normalisation of ``(C, ...)``.

    ``"minmax"`` → [0, 1] over the whole sample; ``"zscore"`` → zero mean, unit std
    per channel; ``"meanstd"`` → ``(x - mean[c]) / std[c]`` with given constants;
    ``"none"`` → unchanged.
    """
    if mode == "none":
        return x
    if mode == "minmax":
        lo, hi = x.min(), x.max()
        return (x - lo) / (hi - lo).clamp_min(eps)
    if mode == "zscore":
        dims = tuple(range(1, x.ndim))
        return (x - x.mean(dim=dims, keepdim=True)) / x.std(dim=dims, keepdim=True).clamp_min(eps)
    if mode == "meanstd":
        shape = (-1,) + (1,) * (x.ndim - 1)
        m = torch.as_tensor(mean, dtype=x.dtype).view(shape)
        s = torch.as_tensor(std, dtype=x.dtype).view(shape)
        return (x - m) / s
    raise ConfigError(f"unknown normalisation {mode!r}; use minmax, zscore, meanstd or none")


def clahe(img: np.ndarray, *, clip_limit: float = 0.01, tile: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a [0, 1] image ``(H, W)`` or ``(H, W, 3)``.

    Uses scikit-image's ``equalize_adapthist`` or OpenCV's CLAHE, whichever is
    installed (both come with the ``medfm[oct-vendor]`` extra); otherwise a
    :class:`ConfigError` says what to install.
    """
    try:
        from skimage.exposure import equalize_adapthist

        kernel = (max(1, img.shape[0] // tile), max(1, img.shape[1] // tile))
        return equalize_adapthist(np.clip(img, 0, 1), kernel_size=kernel, clip_limit=clip_limit).astype(np.float32)
    except ImportError:
        pass
    try:
        import cv2
    except ImportError:
        raise ConfigError("clahe=True needs scikit-image or opencv-python (pip install scikit-image)") from None
    u16 = (np.clip(img, 0, 1) * 65535).astype(np.uint16)
    op = cv2.createCLAHE(clipLimit=max(1.0, clip_limit * 100), tileGridSize=(tile, tile))
    if u16.ndim == 3:
        out = np.stack([op.apply(u16[..., c]) for c in range(u16.shape[-1])], -1)
    else:
        out = op.apply(u16)
    return out.astype(np.float32) / 65535.0


# ------------------------------------------------------------------ geometry
def resize_2d(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(C, H, W)`` → ``(C, size[0], size[1])``, bilinear with antialiasing."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None].float(), size=tuple(int(s) for s in size), mode="bilinear",
                         align_corners=False, antialias=True)[0]


def resize_pad_square(x: torch.Tensor, size: int, *, pad_value: float = 0.0) -> torch.Tensor:
    """Aspect-preserving resize so the long side is ``size``, then centre padding to square.

    ``(C, H, W)`` → ``(C, size, size)``.
    """
    h, w = x.shape[-2:]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    x = resize_2d(x, (nh, nw))
    ph, pw = size - nh, size - nw
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=pad_value)


def resample_volume(vol: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(C, F, H, W)`` → ``(C, *size)``: 2D antialiased resize of each frame, then
    linear interpolation along the frame (slow) axis; frame order is preserved."""
    c, f, h, w = vol.shape
    nf, nh, nw = (int(s) for s in size)
    if (h, w) != (nh, nw):
        vol = F.interpolate(vol.reshape(c * f, 1, h, w).float(), size=(nh, nw), mode="bilinear",
                            align_corners=False, antialias=True).reshape(c, f, nh, nw)
    if f != nf:
        vol = F.interpolate(vol[None].float(), size=(nf, nh, nw), mode="trilinear", align_corners=False)[0]
    return vol


def crop_or_pad(x: torch.Tensor, size: Sequence[int], *, pad_value: float = 0.0,
                rng: Optional[np.random.Generator] = None) -> torch.Tensor:
    """Crop/pad the trailing ``len(size)`` dims of ``x`` to ``size``.

    Padding is centred. Cropping is centred, or at a random offset drawn from
    ``rng`` (train-time random crop).
    """
    nd = len(size)
    pads: List[int] = []
    for dim, target in zip(range(x.ndim - nd, x.ndim), size):
        n = x.shape[dim]
        if n > target:
            start = int(rng.integers(0, n - target + 1)) if rng is not None else (n - target) // 2
            x = x.narrow(dim, start, int(target))
    for dim, target in zip(reversed(range(x.ndim - nd, x.ndim)), reversed(list(size))):
        d = max(0, int(target) - x.shape[dim])
        pads += [d // 2, d - d // 2]
    if any(pads):
        x = F.pad(x, pads, value=pad_value)
    return x


def to_ras_spacing(vol: Volume, target_spacing: Optional[Sequence[float]], *, orient: bool = True) -> Volume:
    """Reorient to RAS and resample to ``target_spacing`` (mm, along D, H, W) with MONAI.

    The tensor axes after this are ``(D, H, W)`` = (S, A, R) index directions, i.e. a
    RAS-oriented ``(X, Y, Z)`` MONAI array transposed to ``(Z, Y, X)``.
    """
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

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


# -------------------------------------------------------------- augmentation
def random_flip(x: torch.Tensor, dims: Sequence[int], rng: np.random.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each of ``dims`` independently with probability ``p``."""
    flip = [d for d in dims if rng.random() < p]
    return torch.flip(x, flip) if flip else x


def intensity_jitter(x: torch.Tensor, rng: np.random.Generator, *, scale: float = 0.1, shift: float = 0.1) -> torch.Tensor:
    """``x * (1 + u1) + u2`` with ``u1 ~ U(-scale, scale)``, ``u2 ~ U(-shift, shift)``."""
    a = 1.0 + float(rng.uniform(-scale, scale))
    b = float(rng.uniform(-shift, shift))
    return x * a + b


def vit_tower(embedder: Dict[str, Any], *, mask_ratio: float, pool: str = "mean",
              norm_pix_loss: bool = False) -> Dict[str, Any]:
    """The engine's ViT tower config with an MAE target."""
    return {"type": "vit", "embedder": embedder, "pool": pool,
            "masked": {"kind": "mae", "mask_ratio": float(mask_ratio), "norm_pix_loss": bool(norm_pix_loss)}}


def sample_source(path: Any, sample_id: Optional[str]) -> str:
    """What errors name: the manifest id when given (never a DICOM header value), else the path."""
    return f"{sample_id} ({path})" if sample_id is not None else str(path)


def flip_and_jitter(item: Dict[str, Any], rng: np.random.Generator, *, width_dim: int, hflip: float,
                    jitter: float) -> Dict[str, Any]:
    """Train-time view of a preprocessed image or volume: left-right flip with probability
    ``hflip`` along ``width_dim`` of ``item["x"]``, then intensity jitter of size ``jitter``."""
    x = item["x"]
    if hflip:
        x = random_flip(x, [width_dim], rng, p=hflip)
    if jitter:
        x = intensity_jitter(x, rng, scale=jitter, shift=jitter)
    return {**item, "x": x.contiguous()}
