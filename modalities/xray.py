"""X-ray adapter (``xray``) and the shared 2D image adapter base (:class:`Image2DAdapter`).

DICOM goes through pydicom's modality LUT and VOI LUT (window or LUT sequence);
MONOCHROME1 is inverted so that bone is bright. PNG/JPEG/TIFF (8/16-bit) go
through Pillow. ``preprocess``: min–max to [0, 1], optional CLAHE, aspect-preserving
resize + centre padding to ``size × size``, then ``normalize`` → ``{"x": (C, size, size)}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from pydicom.pixels import apply_voi_lut, convert_color_space

from medfm.errors import ConfigError
from medfm.modality import ModalityAdapter, Record, check_format, require_file
from medfm.registry import register_modality

from . import geometry, intensity
from . import imaging as im
from .augment import flip_and_jitter
from .tower_config import vit_tower
from . import dicom as dcm
from .dicom import check_dicom_modality


def read_dicom_2d(path: Path, *, color: bool, adapter: Any = None) -> Record:
    """One DICOM image → ``Record((H, W) or (H, W, 3) float32, meta)`` with display LUTs applied.

    Grayscale: modality LUT, then VOI LUT (window center/width or LUT sequence, as
    pydicom's ``apply_voi_lut``), then MONOCHROME1 inverted (``max + min - x``).
    Meta: pixel spacing (PixelSpacing or ImagerPixelSpacing, mm), whether VOI and
    inversion were applied, whitelisted non-identifying fields. With ``adapter``, the Modality
    value is checked against the adapter's first (:func:`medfm.modalities.dicom.check_dicom_modality`).
    """
    ds = dcm.read_dicom(path)
    flags = check_dicom_modality(ds, adapter, path) if adapter is not None else []
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    gray = photometric.startswith("MONOCHROME")
    arr = dcm.dicom_pixels(ds, path, modality_lut=gray)
    meta: Dict[str, Any] = dcm.safe_dicom_meta(ds)
    if gray:
        if arr.ndim == 3:  # multi-frame radiograph: keep the first frame
            arr = arr[0]
        has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
        if has_voi:
            arr = np.asarray(apply_voi_lut(arr, ds), dtype=np.float32)
        if photometric == "MONOCHROME1":
            arr = arr.max() + arr.min() - arr
        meta.update(voi_applied=bool(has_voi), inverted=photometric == "MONOCHROME1")
        if color:
            arr = np.repeat(arr[..., None], 3, axis=-1)
    else:
        if photometric.startswith("YBR") and ds.get("SamplesPerPixel", 1) == 3:
            arr = convert_color_space(arr, photometric, "RGB").astype(np.float32)
        if arr.ndim == 4:
            arr = arr[0]
        if not color:
            arr = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing is not None:
        meta["pixel_spacing"] = tuple(float(s) for s in spacing)
    meta["format"] = "dicom"
    if flags:
        meta["flags"] = flags
    return Record(arr.astype(np.float32), meta)


class Image2DAdapter(ModalityAdapter):
    """Shared 2D image reading/preprocessing for ``xray`` and ``fundus``.

    Options: ``size`` (square side), ``channels`` (1 gray or 3 RGB), ``clahe``,
    ``clahe_clip``, ``normalize`` (``"meanstd"`` with ``mean``/``std``, ``"zscore"``,
    ``"minmax"``, ``"none"``), ``hflip`` (train flip probability), ``jitter``,
    ``patch_size``, ``pool``. Masking: MAE at 0.75 unless the masked objective sets ``mask_ratio``.
    """

    input_kind = "path"
    suffixes = (".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", "")
    defaults: Dict[str, Any] = {
        "size": 224,
        "channels": 1,
        "clahe": False,
        "clahe_clip": 0.01,
        "normalize": "meanstd",
        "mean": [0.5],
        "std": [0.5],
        "hflip": 0.0,
        "jitter": 0.1,
        "patch_size": 16,
        "pool": "mean",
    }
    mask_ratio = 0.75  # MAE
    training_options = ("hflip", "jitter")  # act only with train=True

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.options
        if o["channels"] not in (1, 3):
            raise ConfigError(f"{self.name}: channels must be 1 or 3, got {o['channels']!r}")
        if o["normalize"] == "meanstd" and not (len(o["mean"]) in (1, o["channels"]) and len(o["std"]) == len(o["mean"])):
            raise ConfigError(f"{self.name}: mean/std need 1 or {o['channels']} values")

    # ------------------------------------------------------------------ read
    def read(self, source: Any, *, sample_id: Optional[str] = None, row: Optional[Mapping[str, Any]] = None) -> Record:
        """Path → ``Record((H, W) or (H, W, 3) float32, meta)``."""
        path = require_file(source, what=f"{self.name} image")
        check_format(path, self.name, self.suffixes)
        rec = self.read_special(path)
        if rec is None:
            if path.suffix.lower() in im.IMAGE_SUFFIXES:
                data = im.read_image_file(path, color=self.options["channels"] == 3)
                rec = Record(data, {"format": path.suffix.lower().lstrip(".")})
            else:
                rec = read_dicom_2d(path, color=self.options["channels"] == 3, adapter=self)
        want = 3 if self.options["channels"] == 3 else 2
        if rec.data.ndim == 2 and want == 3:
            rec.data = np.repeat(rec.data[..., None], 3, axis=-1)
        im.check_array(rec.data, want, source=path, what=f"{self.name} image")
        rec.meta["shape"] = tuple(rec.data.shape)
        return rec

    def read_special(self, path: Path) -> Optional[Record]:
        """Hook for formats only one subclass reads (fundus: SLO from a Heidelberg .vol)."""
        return None

    # ------------------------------------------------------------ preprocess
    def preprocess(self, record: Record, *, train: bool = False, rng: Optional[np.random.Generator] = None) -> Dict[str, Any]:
        """``(H, W[, 3])`` → ``{"x": (C, size, size) float32}``."""
        o = self.options
        if train and rng is None:
            rng = np.random.default_rng()
        arr = np.asarray(record.data, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / max(hi - lo, 1e-6)
        if o["clahe"]:
            arr = intensity.clahe(arr, clip_limit=o["clahe_clip"])
        x = torch.from_numpy(np.ascontiguousarray(arr))
        x = x.permute(2, 0, 1) if x.ndim == 3 else x[None]
        x = geometry.resize_pad_square(x, int(o["size"]), pad_value=0.0)
        x = intensity.normalize(x, o["normalize"], mean=o["mean"], std=o["std"])
        item = {"x": x.float().contiguous()}
        return self.augment(item, rng) if train else item

    def inference_spec(self) -> Dict[str, Any]:
        """Eval-mode preprocessing of one image as data (``preprocessing.json``; see :meth:`preprocess`)."""
        o = self.options
        size, channels = int(o["size"]), int(o["channels"])
        grey = ("Pillow Image.convert('L') for modes RGB, RGBA, P, CMYK, LA, YCbCr (ITU-R 601-2 luma "
                "L = R*299/1000 + G*587/1000 + B*114/1000, alpha dropped, 8-bit result); modes L, I;16, I, F "
                "are kept with their native values")
        colour = "Pillow Image.convert('RGB') unless the mode is RGB; a grey DICOM is repeated to 3 channels"
        norm: Dict[str, Any] = {"mode": o["normalize"]}
        if o["normalize"] == "meanstd":
            norm.update(mean=list(o["mean"]), std=list(o["std"]), rule="(x - mean[c]) / std[c]")
        elif o["normalize"] == "zscore":
            norm.update(rule="per channel (x - mean) / max(std, 1e-6), std with ddof=1 over the channel")
        elif o["normalize"] == "minmax":
            norm.update(rule="(x - min) / max(max - min, 1e-6) over the whole image")
        return {
            "input": "one 2D image file; output x of shape (channels, size, size) float32, batched to "
                     "(B, channels, size, size)",
            "formats": {
                "png/jpeg/tiff/bmp": {"reader": "Pillow Image.open(path); pixel values as float32 (8- and "
                                                "16-bit integers keep their values)",
                                      "colour": grey if channels == 1 else colour},
                "dicom": {"reader": "pydicom; grey: modality LUT, then VOI LUT (pydicom.pixels.apply_voi_lut) when "
                                    "WindowCenter or VOILUTSequence is present, then MONOCHROME1 inverted as "
                                    "max + min - x; first frame of a multi-frame image; colour: YBR converted to RGB",
                          "colour": ("RGB to grey as x @ [0.299, 0.587, 0.114]" if channels == 1 else colour)},
            },
            "steps": [
                {"op": "scale", "rule": "x = (x - min(x)) / max(max(x) - min(x), 1e-6) over the whole image, "
                                        "in float32", "range": [0.0, 1.0]},
                {"op": "clahe", "enabled": bool(o["clahe"]), "clip_limit": float(o["clahe_clip"]),
                 "implementation": "skimage.exposure.equalize_adapthist(clip(x, 0, 1), kernel_size=(max(1, H // 8), "
                                   "max(1, W // 8)), clip_limit=clip_limit) (OpenCV CLAHE where scikit-image is "
                                   "absent)"},
                {"op": "layout", "rule": "(H, W) -> (1, H, W); (H, W, 3) -> (3, H, W)"},
                {"op": "resize", "rule": "keep the aspect ratio: s = size / max(H, W), new_h = max(1, round(H * s)), "
                                         "new_w = max(1, round(W * s)) with Python round (half to even); skipped when "
                                         "the size is unchanged",
                 "interpolation": "bilinear", "antialias": True, "align_corners": False,
                 "implementation": "torch.nn.functional.interpolate(x[None], (new_h, new_w), mode='bilinear', "
                                   "align_corners=False, antialias=True)"},
                {"op": "pad", "rule": "centre padding to (size, size): top = (size - new_h) // 2, bottom = the rest, "
                                      "left = (size - new_w) // 2, right = the rest", "value": 0.0,
                 "size": [size, size]},
                {"op": "normalize", **norm},
                {"op": "dtype", "dtype": "float32"},
            ],
        }

    def augment(self, item: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
        """Random horizontal flip and intensity jitter of a preprocessed ``(C, S, S)`` image."""
        return flip_and_jitter(item, rng, width_dim=2, hflip=self.options["hflip"],
                                  jitter=self.options["jitter"])

    # ----------------------------------------------------------------- model
    def tower_config(self) -> Dict[str, Any]:
        o = self.options
        ps = o["patch_size"]
        emb = {"type": "patch2d", "in_chans": int(o["channels"]), "input_size": [int(o["size"])] * 2,
               "patch_size": list(ps) if isinstance(ps, (list, tuple)) else [int(ps)] * 2}
        return vit_tower(emb, mask_ratio=self.mask_ratio, pool=o["pool"])


@register_modality("xray")
class XRayAdapter(Image2DAdapter):
    """Projection radiographs (chest X-ray): grayscale, 224², mean/std 0.5."""

    name = "xray"
    dicom_modalities = ("CR", "DX", "DR", "RG")  # computed / digital / (vendor "DR") / conventional radiography
    suffix_priority = 40  # .png / .dcm: a radiograph before a fundus photograph
    defaults = dict(Image2DAdapter.defaults)
