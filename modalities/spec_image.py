"""The ``image`` adapter: a 2D image preprocessed exactly as a model family's weights expect.

Options (the input spec; a ``family`` fills them from :mod:`.family_specs`, the user may override
each, and an override is a *departure* — listed by :attr:`SpecImageAdapter.departures`, reported
in ``init_report.json`` and refused with ``strict: true``):

``channels`` 1 | 3, ``colour`` ``rgb`` | ``luma`` (Pillow ``L``) | ``mean_of_rgb``,
``resize`` ``shortest_edge`` (short side → ``size``, long side ``int(size * long / short)``, then a
centre crop to ``crop``) | ``square`` (``size × size``) | ``xrv`` (a square centre crop of the long
side, then ``size × size``), ``crop_rule`` ``round`` (torchvision: ``int(round((h - c) / 2))``) |
``floor`` (transformers: ``(h - c) // 2``) | ``xrv`` (``h // 2 - c // 2``), ``interpolation``,
``backend`` ``pil`` (Pillow resize of the 8-bit image, as open_clip's torchvision transforms do
on a PIL image) | ``torchvision`` (``torchvision.transforms.v2.functional.resize`` of the uint8
tensor with antialias, as transformers 5's image processors do) | ``skimage`` (``skimage.transform.resize`` on floats, as torchxrayvision),
``scale`` ``unit`` (x / 255) | ``xrv`` ((2 x / 255 - 1) · 1024), ``mean`` / ``std`` (``None``: none).

``preprocess`` → ``{"x": (channels, S, S) float32}``. Reading is the ``xray`` adapter's (Pillow for
PNG/JPEG, pydicom with VOI LUT for DICOM); a DICOM's values are scaled to 0..255 first (a
DICOM is not 8-bit; the family specs are stated for 8-bit files), which the spec names.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch
from PIL import Image

from medfm.errors import ConfigError
from medfm.modality import Record
from medfm.registry import register_modality

from .family_specs import OPENAI_MEAN, OPENAI_STD, departures, family, family_tower, reference_spec
from .xray import Image2DAdapter

_SPEC_DEFAULTS: Dict[str, Any] = {
    "channels": 3, "colour": "rgb", "resize": "shortest_edge", "size": 224, "crop": 224, "crop_rule": "round",
    "interpolation": "bicubic", "backend": "pil", "scale": "unit", "mean": OPENAI_MEAN, "std": OPENAI_STD,
}
_PIL_FILTERS = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}


def _crop_start(length: int, crop: int, rule: str) -> int:
    if rule == "round":
        return int(round((length - crop) / 2.0))
    if rule == "xrv":
        return length // 2 - crop // 2
    return (length - crop) // 2


def _to_uint8(arr: np.ndarray, meta: Dict[str, Any]) -> np.ndarray:
    """8-bit files keep their values; other ranges (a DICOM) are min-max scaled to 0..255."""
    if meta.get("format") != "dicom" and arr.min() >= 0 and arr.max() <= 255 and np.all(arr == np.round(arr)):
        return arr.astype(np.uint8)
    lo, hi = float(arr.min()), float(arr.max())
    return np.round((arr - lo) / max(hi - lo, 1e-6) * 255.0).astype(np.uint8)


@register_modality("image")
class SpecImageAdapter(Image2DAdapter):
    """2D images under a model family's input spec (see the module docstring)."""

    name = "image"
    dicom_modalities = ("CR", "DX", "DR", "RG", "OP", "XC")  # radiographs and en-face photographs
    suffix_priority = 90  # never chosen by suffix over xray / fundus
    defaults: Dict[str, Any] = {**Image2DAdapter.defaults, **_SPEC_DEFAULTS, "family": None, "weights_spec": None,
                                "strict": False, "normalize": "none",
                                "hflip": 0.0, "jitter": 0.0}

    def __init__(self, **options: Any):
        fam = options.get("family")
        if fam:
            options = {**reference_spec(fam, self.name, options.get("weights_spec")), **options}
        super().__init__(**options)
        o = self.options
        for key, allowed in (("resize", ("shortest_edge", "square", "xrv")), ("backend", ("pil", "torchvision", "skimage")),
                             ("scale", ("unit", "xrv")), ("colour", ("rgb", "luma", "mean_of_rgb")),
                             ("crop_rule", ("round", "floor", "xrv"))):
            if o[key] not in allowed:
                raise ConfigError(f"image: {key} must be one of {allowed}, got {o[key]!r}")
        self.departures = departures(fam, self.name, o)
        if self.departures and o["strict"]:
            raise ConfigError(f"image: departs from the {fam} input spec under strict: {'; '.join(self.departures)}")

    def read(self, source: Any, *, sample_id: Optional[str] = None, row=None) -> Record:
        saved = self.options["channels"]
        self.options["channels"] = 3  # read colour; the spec's colour rule makes the channels
        try:
            return super().read(source, sample_id=sample_id, row=row)
        finally:
            self.options["channels"] = saved

    # ------------------------------------------------------------------ preprocess
    def _pil(self, img: np.ndarray) -> np.ndarray:
        o = self.options
        pil = Image.fromarray(img)
        if o["colour"] == "luma":
            pil = pil.convert("L")
        w, h = pil.size
        size, flt = int(o["size"]), _PIL_FILTERS[o["interpolation"]]
        if o["resize"] == "shortest_edge":
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = size, int(size * long / short)
            nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
            if (nw, nh) != (w, h):
                pil = pil.resize((nw, nh), flt)
        else:
            if o["resize"] == "xrv":
                c = min(w, h)
                top, left = _crop_start(h, c, "xrv"), _crop_start(w, c, "xrv")
                pil = pil.crop((left, top, left + c, top + c))
            pil = pil.resize((size, size), flt)
        out = np.asarray(pil, dtype=np.float32)
        crop = o["crop"]
        if crop and o["resize"] == "shortest_edge":
            hh, ww = out.shape[:2]
            top, left = _crop_start(hh, int(crop), o["crop_rule"]), _crop_start(ww, int(crop), o["crop_rule"])
            out = out[top:top + int(crop), left:left + int(crop)]
        return out

    def _torchvision(self, img: np.ndarray) -> torch.Tensor:
        """transformers' TorchvisionBackend order: uint8 resize (antialias), centre crop; ``(C, S, S)`` float 0..255."""
        import torchvision.transforms.v2.functional as tvF  # deferred: only for this backend

        o = self.options
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()
        h, w = t.shape[-2:]
        size = int(o["size"])
        if o["resize"] == "shortest_edge":
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(size * long / short)
            new = (new_long, size) if w <= h else (size, new_long)
        else:
            new = (size, size)
        mode = getattr(tvF.InterpolationMode, o["interpolation"].upper())
        t = tvF.resize(t, list(new), interpolation=mode, antialias=True)
        crop = o["crop"]
        if crop and o["resize"] == "shortest_edge":
            hh, ww = t.shape[-2:]
            top, left = _crop_start(hh, int(crop), o["crop_rule"]), _crop_start(ww, int(crop), o["crop_rule"])
            t = t[:, top:top + int(crop), left:left + int(crop)]
        return t.float()

    def _skimage(self, img: np.ndarray) -> np.ndarray:
        """torchxrayvision's order: scale, colour, centre crop, ``skimage.transform.resize``."""
        import skimage.transform  # deferred: scikit-image is needed only for this backend

        o = self.options
        grey = img.ndim == 3 and bool((img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all())
        arr = self._scale(img[..., 0] if grey else img)  # a grey file has one channel (no mean to take)
        if arr.ndim == 3 and o["colour"] == "mean_of_rgb":
            arr = arr.mean(2)
        arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
        _, h, w = arr.shape
        if o["resize"] in ("xrv", "shortest_edge"):
            c = min(h, w)
            top, left = _crop_start(h, c, o["crop_rule"]), _crop_start(w, c, o["crop_rule"])
            arr = arr[:, top:top + c, left:left + c]
        size = int(o["size"])
        return skimage.transform.resize(arr, (arr.shape[0], size, size), mode="constant",
                                        preserve_range=True).astype(np.float32)

    def _scale(self, arr: np.ndarray) -> np.ndarray:
        if self.options["scale"] == "xrv":
            return (2 * (arr.astype(np.float32) / 255) - 1.0) * 1024
        return arr.astype(np.float32) / np.float32(255.0)

    def preprocess(self, record: Record, *, train: bool = False, rng: Optional[np.random.Generator] = None
                   ) -> Dict[str, Any]:
        """``(H, W, 3)`` values → ``{"x": (channels, S, S) float32}`` by the spec."""
        o = self.options
        img = _to_uint8(np.asarray(record.data), record.meta)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        if o["backend"] == "skimage":
            x = torch.from_numpy(np.ascontiguousarray(self._skimage(img)))
        elif o["backend"] == "torchvision":
            x = self._torchvision(img)
            if o["colour"] == "mean_of_rgb":
                x = x.mean(0, keepdim=True)
            x = torch.from_numpy(self._scale(x.numpy()))
        else:
            arr = self._pil(img)
            if arr.ndim == 3 and o["colour"] == "mean_of_rgb":
                arr = arr.mean(2)
            arr = self._scale(arr)
            x = torch.from_numpy(np.ascontiguousarray(arr))
            x = x.permute(2, 0, 1) if x.ndim == 3 else x[None]
        if int(o["channels"]) == 1 and x.shape[0] == 3:
            x = x.mean(0, keepdim=True)
        if o["mean"] is not None and o["std"] is not None:
            mean = torch.tensor(o["mean"], dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(o["std"], dtype=torch.float32).view(-1, 1, 1)
            x = (x - mean) / std
        item = {"x": x.float().contiguous()}
        return self.augment(item, rng if rng is not None else np.random.default_rng()) if train else item

    def inference_spec(self) -> Dict[str, Any]:
        """The spec as data (``preprocessing.json``), with the family's sources and any departures."""
        o = self.options
        fam = o.get("family")
        spec = {k: o[k] for k in _SPEC_DEFAULTS}
        return {"input": "one 2D image file (PNG/JPEG/TIFF/BMP via Pillow, DICOM via pydicom with VOI LUT and "
                         "MONOCHROME1 inverted, then min-max scaled to 0..255); output x (channels, S, S) float32",
                "family": fam, "spec": spec, "departures": list(self.departures),
                "sources": (family(fam)["cite"] if fam else {}),
                "steps": ["8-bit RGB image", f"colour: {o['colour']}",
                          f"resize: {o['resize']} to {o['size']} ({o['interpolation']}, {o['backend']})",
                          f"crop: {o['crop']} ({o['crop_rule']})", f"scale: {o['scale']}",
                          f"normalize: mean {o['mean']} std {o['std']}"]}

    def example_input_shape(self) -> tuple:
        """``(channels, S, S)``: the tensor one image becomes (an export traces with it)."""
        side = int(self.options["crop"] or self.options["size"]) if self.options["resize"] == "shortest_edge" \
            else int(self.options["size"])
        return (int(self.options["channels"]), side, side)

    def tower_config(self) -> Dict[str, Any]:
        """The family's tower (its weight format sets what the files fix); without a family: a timm ViT-B/16."""
        if self.options.get("family"):
            return family_tower(self.options["family"], self.name)
        return {"type": "timm", "model_name": "vit_base_patch16_224",
                "model_kwargs": {"in_chans": int(self.options["channels"])}, "pool": "token"}

