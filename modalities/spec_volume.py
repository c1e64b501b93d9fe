"""The ``volume`` adapter: a CT volume preprocessed exactly as a 3D model family's weights expect.

Reading is the ``ct`` adapter's (a DICOM series, a DICOM file, NIfTI through MONAI's reader), kept
in the file's own orientation; the spec is then applied with MONAI's transforms on a
``MetaTensor`` carrying the file's affine, in the order the families publish:

``Orientation(orientation)`` → ``Spacing(spacing, interpolation)`` → ``ScaleIntensityRange(window →
range, clip)`` → ``SpatialPad(size)`` → ``CenterSpatialCrop(size)``.

Options (a ``family`` fills them from :mod:`.family_specs`; an override is a departure, reported
and refused with ``strict: true``): ``orientation`` (axis codes, e.g. ``RAS``), ``spacing`` (mm along
the array axes after orientation), ``interpolation``, ``window`` (HU ``[a_min, a_max]``),
``range`` (``[b_min, b_max]``), ``clip``, ``size`` (array axes after orientation), ``crop_pad``.
``preprocess`` → ``{"x": (1, X, Y, Z) float32}`` in MONAI's channel-first axis order.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch

from medfm.errors import ConfigError
from medfm.modality import Record
from medfm.registry import register_modality

from .ct import CTAdapter
from .family_specs import departures, family, family_tower, reference_spec

_SPEC_DEFAULTS: Dict[str, Any] = {
    "orientation": "RAS", "spacing": [1.5, 1.5, 3.0], "interpolation": "bilinear", "window": [-1000.0, 1000.0],
    "range": [0.0, 1.0], "clip": True, "size": [224, 224, 160],
    "crop_pad": "SpatialPad then CenterSpatialCrop (symmetric)",
}


def monai_spec_transform(o: Dict[str, Any]):
    """The MONAI array transforms of a spec (``o``: the adapter options), in the family's order."""
    from monai.transforms import (CenterSpatialCrop, Compose, Orientation,  # deferred: MONAI, heavy
                                  ScaleIntensityRange, Spacing, SpatialPad)

    steps = [Orientation(axcodes=str(o["orientation"]))]
    if o["spacing"] is not None:
        steps.append(Spacing(pixdim=tuple(float(s) for s in o["spacing"]), mode=str(o["interpolation"])))
    a_min, a_max = (float(v) for v in o["window"])
    b_min, b_max = (float(v) for v in o["range"])
    steps.append(ScaleIntensityRange(a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=bool(o["clip"])))
    if o["size"] is not None:
        size = [int(s) for s in o["size"]]
        steps += [SpatialPad(spatial_size=size), CenterSpatialCrop(roi_size=size)]
    return Compose(steps)


@register_modality("volume")
class SpecVolumeAdapter(CTAdapter):
    """CT volumes under a 3D family's input spec (see the module docstring)."""

    name = "volume"
    suffix_priority = 90  # never chosen by suffix over ct
    defaults: Dict[str, Any] = {**CTAdapter.defaults, **_SPEC_DEFAULTS, "orient": False, "family": None, "weights_spec": None,
                                "strict": False, "flip_dims": [], "jitter": 0.0}

    def __init__(self, **options: Any):
        fam = options.get("family")
        if fam:
            options = {**reference_spec(fam, self.name, options.get("weights_spec")), **options}
        super().__init__(**options)
        if self.options["orient"]:
            raise ConfigError("volume: orient must stay false; the spec's orientation option orients the volume")
        self.departures = departures(fam, self.name, self.options)
        if self.departures and self.options["strict"]:
            raise ConfigError(f"volume: departs from the {fam} input spec under strict: {'; '.join(self.departures)}")
        self._transform = monai_spec_transform(self.options)

    def preprocess(self, record: Record, *, train: bool = False, rng: Optional[np.random.Generator] = None
                   ) -> Dict[str, Any]:
        """HU ``(D, H, W)`` + affine → ``{"x": (1, X, Y, Z) float32}`` by the spec."""
        from monai.data import MetaTensor  # deferred: MONAI, heavy

        arr = np.asarray(record.data, dtype=np.float32).transpose(2, 1, 0)[None]  # back to (1, x, y, z)
        affine = np.asarray(record.meta.get("affine", np.diag(list(record.meta["spacing"])[::-1] + [1.0])))
        mt = MetaTensor(torch.from_numpy(np.ascontiguousarray(arr)), affine=torch.as_tensor(affine, dtype=torch.float64))
        out = self._transform(mt)
        x = out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)
        item = {"x": x.float().contiguous()}
        return self.augment(item, rng if rng is not None else np.random.default_rng()) if train else item

    def augment(self, item: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
        return item

    def inference_spec(self) -> Dict[str, Any]:
        o = self.options
        fam = o.get("family")
        return {"input": "a CT DICOM series, DICOM file or NIfTI in HU; output x (1, X, Y, Z) float32 (MONAI's "
                         "channel-first order of the oriented array)",
                "family": fam, "spec": {k: o[k] for k in _SPEC_DEFAULTS},
                "steps": ["monai.transforms.Orientation(axcodes)", "Spacing(pixdim, mode)",
                          "ScaleIntensityRange(a_min, a_max, b_min, b_max, clip)", "SpatialPad(size)",
                          "CenterSpatialCrop(size)"],
                "departures": list(self.departures), "sources": family(fam)["cite"] if fam else {}}

    def example_input_shape(self) -> tuple:
        """``(1, X, Y, Z)``: the tensor one volume becomes (an export traces with it)."""
        return (1, *[int(v) for v in self.options["size"]])

    def tower_config(self) -> Dict[str, Any]:
        """The family's tower (its weight format sets what the files fix); without a family: a MONAI 3D ResNet-18."""
        if self.options.get("family"):
            return family_tower(self.options["family"], self.name)
        return {"type": "monai", "net": "resnet18", "net_kwargs": {}}