"""En-face retinal images (``fundus``): colour fundus photographs, infrared SLO, autofluorescence.

The 2D machinery of :class:`~medfm.modalities.xray.Image2DAdapter` with retinal
defaults (RGB, ImageNet mean/std, horizontal flips of left/right eyes in training).
A Heidelberg ``.vol`` file is read for its infrared SLO image (``vol_image="slo"``),
so OCT ↔ IR pairs can come from one vendor file. Output ``{"x": (C, size, size)}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from medfm.errors import ConfigError
from medfm.modality import Record
from medfm.registry import register_modality

from .oct import read_vendor_enface
from .xray import Image2DAdapter

VENDOR_SUFFIXES = (".vol", ".e2e", ".fds", ".fda")


@register_modality("fundus")
class FundusAdapter(Image2DAdapter):
    """Retinal en-face images. Extra option ``vol_image``: ``"slo"`` reads the SLO of vendor files."""

    name = "fundus"
    dicom_modalities = ("OP", "XC")  # ophthalmic photography, external-camera photography
    suffix_priority = 70  # .png: X-ray first; .vol/.e2e/.fds/.fda: the OCT volume first
    suffixes = Image2DAdapter.suffixes + VENDOR_SUFFIXES
    defaults: Dict[str, Any] = {
        **Image2DAdapter.defaults,
        "channels": 3,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "hflip": 0.5,
        "vol_image": "slo",
    }

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.options["vol_image"] not in ("slo",):
            raise ConfigError(f"fundus: vol_image must be 'slo', got {self.options['vol_image']!r}")

    def read_special(self, path: Path) -> Optional[Record]:
        if path.suffix.lower() in VENDOR_SUFFIXES:
            data, meta = read_vendor_enface(path)
            return Record(data, meta)
        return None
