"""CT and OCT device-file block: reader agreement, previews, embeddings, vendor limitations.

CT: the 20-slice DICOM series and the NIfTI crop are read by the ``ct`` adapter (RAS, HU).
The report shows their spacing, shape, HU range, world-space extent (from the affines)
and a mid-slice PNG of each, side by side. Both are embedded by one seeded random-weights
CT tower (the adapter's windows, resampled to 3 mm, cropped/padded to ``ct_size``); the
cosine of the two vectors is reported with the overlap of their physical extents. Only
when the two files cover the same anatomy would ≥ 0.99 be expected: when the extents do not
overlap, the report says so. As a like-for-like control, the series is written to NIfTI
with nibabel (its own affine), read back through the adapter and embedded: voxels and
embedding must agree with the DICOM reading (cosine ≥ 0.99).

OCT: the Heidelberg ``.vol`` goes through ``oct`` (B-scan) and ``fundus`` (infrared SLO),
with PNG previews and embeddings by seeded random-weights towers; the minimised Topcon
``.fda``/``.fds`` and Heidelberg ``.E2E`` files are tried through both adapters and either
read or reported with the adapter's error (and the installed reader versions).
"""
from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from . import TRUNK, Stopwatch, block_result

CT_WINDOW = (-160.0, 240.0)  # soft-tissue display window for the PNGs


def world_extent(affine: np.ndarray, shape_dhw: Tuple[int, int, int]) -> np.ndarray:
    """``(3, 2)`` min/max world coordinates (x, y, z mm) of a volume's voxel centres.

    ``affine`` maps (x, y, z) = (W, H, D) voxel indices to world mm, as the adapter's ``meta``.
    """
    d, h, w = shape_dhw
    corners = np.array([[i, j, k, 1.0] for i in (0, w - 1) for j in (0, h - 1) for k in (0, d - 1)])
    pts = corners @ np.asarray(affine).T
    return np.stack([pts[:, :3].min(0), pts[:, :3].max(0)], axis=1)


def overlap_mm(a: np.ndarray, b: np.ndarray) -> List[float]:
    """Length (mm) of the intersection of two extents per axis (0 when disjoint)."""
    return [float(max(0.0, min(a[i, 1], b[i, 1]) - max(a[i, 0], b[i, 0]))) for i in range(3)]


def _cosine(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.dot(u, v) / max(1e-12, np.linalg.norm(u) * np.linalg.norm(v)))


def _ct_previews(vols: Dict[str, Tuple[np.ndarray, Tuple[float, float, float]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(vols), figsize=(5 * len(vols), 5))
    for ax, (name, (vol, sp)) in zip(np.atleast_1d(axes), vols.items()):
        mid = vol[vol.shape[0] // 2]
        # RAS (S, A, R) axes: show anterior up and the patient's right on the left (radiological view)
        img = np.flipud(np.fliplr(mid))
        ax.imshow(img, cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1],
                  extent=(0, mid.shape[1] * sp[2], 0, mid.shape[0] * sp[1]))
        ax.set_title(f"{name}\nslice {vol.shape[0] // 2}/{vol.shape[0]}, HU [{vol.min():.0f}, {vol.max():.0f}]", fontsize=9)
        ax.set_xlabel("mm")
    fig.tight_layout()
    fig.savefig(str(path), dpi=90)
    plt.close(fig)
    return path


def _gray_png(img: np.ndarray, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = np.asarray(img, dtype=np.float32)
    fig, ax = plt.subplots(figsize=(5, 5 * a.shape[0] / a.shape[1] if a.ndim >= 2 else 5))
    lo, hi = np.percentile(a, [1, 99.5])
    ax.imshow(a if a.ndim == 2 else np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1), cmap="gray",
              vmin=lo if a.ndim == 2 else None, vmax=hi if a.ndim == 2 else None)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(str(path), dpi=90)
    plt.close(fig)
    return path


def ct_block(data_dir: Path, out_dir: Path, budget: Dict[str, Any], seed: int) -> Dict[str, Any]:
    import nibabel as nib
    import torch
    import medfm

    ct_dir = Path(data_dir) / "ct"
    opts = {"target_spacing": [3.0, 3.0, 3.0], "size": list(budget["ct_size"]), "patch_size": [8, 16, 16],
            "windows": ["lung", "mediastinum", "bone"], "flip_dims": [], "jitter": 0.0}
    torch.manual_seed(seed)
    model = medfm.create_model({**TRUNK, "modalities": {"ct": opts}}).eval()
    adapter = model.adapters["ct"]
    files = {"dicom_series": ct_dir / "ct_dicom_series_20_slices", "nifti_crop": ct_dir / "ct_30_slices.nii.gz"}
    recs, info = {}, {}
    for name, p in files.items():
        r = adapter.read(str(p))
        recs[name] = r
        aff = np.asarray(r.meta["affine"])
        info[name] = {"format": r.meta["format"], "shape_DHW": list(r.data.shape),
                      "spacing_mm_DHW": [round(s, 4) for s in r.meta["spacing"]],
                      "hu_min": float(r.data.min()), "hu_max": float(r.data.max()),
                      "hu_p1_p99": [float(v) for v in np.percentile(r.data, [1, 99])],
                      "orientation": "".join(__import__("nibabel").aff2axcodes(aff)),
                      "extent_mm_xyz": world_extent(aff, r.data.shape).round(1).tolist()}
    # control: the DICOM series written as NIfTI with its own affine, read back by the adapter
    ctrl = out_dir / "dicom_series_as_nifti.nii.gz"
    ser = recs["dicom_series"]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ser.data.transpose(2, 1, 0)), np.asarray(ser.meta["affine"])), str(ctrl))
    back = adapter.read(str(ctrl))
    recs["dicom_series_as_nifti"] = back
    # calibration of the cosine scale of this (untrained) encoder: the series with its voxels
    # shuffled (same HU histogram, no anatomy) and an all-air volume
    rng = np.random.default_rng(seed)
    from medfm.modality import Record
    shuffled = rng.permutation(ser.data.ravel()).reshape(ser.data.shape)
    recs["series_voxels_shuffled"] = Record(shuffled, dict(ser.meta))
    recs["air_volume"] = Record(np.full_like(ser.data, -1024.0), dict(ser.meta))
    with torch.no_grad():
        emb = {n: model.encode("ct", adapter.preprocess(r, train=False)["x"][None])[0].numpy() for n, r in recs.items()}
    ov = overlap_mm(np.asarray(info["dicom_series"]["extent_mm_xyz"]), np.asarray(info["nifti_crop"]["extent_mm_xyz"]))
    out = {"files": info, "overlap_mm_xyz": ov,
           "cosine_series_vs_nifti": _cosine(emb["dicom_series"], emb["nifti_crop"]),
           "cosine_series_vs_series_as_nifti": _cosine(emb["dicom_series"], emb["dicom_series_as_nifti"]),
           "cosine_series_vs_shuffled_voxels": _cosine(emb["dicom_series"], emb["series_voxels_shuffled"]),
           "cosine_series_vs_air": _cosine(emb["dicom_series"], emb["air_volume"]),
           "series_slice_note": "DICOM SliceThickness is 3 mm but ImagePositionPatient steps 2 mm (overlapping "
                                "reconstruction); the adapter uses the 2 mm position spacing.",
           "control_max_abs_hu_diff": float(np.abs(back.data - ser.data).max()) if back.data.shape == ser.data.shape else None,
           "control_same_shape": list(back.data.shape) == list(ser.data.shape), "adapter_options": opts}
    same_anatomy = all(o > 0 for o in ov)
    if same_anatomy:
        out["explanation"] = "the extents overlap; the cosine compares partly shared anatomy at different fields of view."
    else:
        axes = [a for a, o in zip("xyz", ov) if o == 0]
        out["explanation"] = (f"the two files do not cover the same anatomy: their world extents are disjoint along "
                              f"{', '.join(axes)} (series z {info['dicom_series']['extent_mm_xyz'][2]} mm vs NIfTI z "
                              f"{info['nifti_crop']['extent_mm_xyz'][2]} mm), they have different in-plane fields of view "
                              f"({info['dicom_series']['shape_DHW'][1:]} at {info['dicom_series']['spacing_mm_DHW'][1]} mm vs "
                              f"{info['nifti_crop']['shape_DHW'][1:]} at {info['nifti_crop']['spacing_mm_DHW'][1]} mm) and "
                              f"slice spacings ({info['dicom_series']['spacing_mm_DHW'][0]} vs {info['nifti_crop']['spacing_mm_DHW'][0]} mm): "
                              f"no crop or resampling can make them like for like, so cosine ≥ 0.99 is not expected. The "
                              f"like-for-like control (same series through DICOM and NIfTI) is the reader-agreement check.")
    out["explanation"] += (f" Note also that the encoder is untrained (no CT pretraining in this suite): its embeddings are "
                           f"nearly collinear — the series vs. its own voxels shuffled gives cosine "
                           f"{out['cosine_series_vs_shuffled_voxels']:.4f}, vs. an all-air volume "
                           f"{out['cosine_series_vs_air']:.4f} — so a cosine near 0.99 between different volumes says "
                           f"nothing about anatomy; only the exact control (1.0, identical voxels) is meaningful.")
    out["preview"] = _ct_previews({"DICOM series (RAS, HU)": (ser.data, ser.meta["spacing"]),
                                   "NIfTI crop (RAS, HU)": (recs["nifti_crop"].data, recs["nifti_crop"].meta["spacing"])},
                                  out_dir / "ct_mid_slices.png")
    return out


def _versions() -> Dict[str, str]:
    out = {}
    for pkg in ("eyepy", "oct-converter", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def oct_block(data_dir: Path, out_dir: Path, seed: int) -> Dict[str, Any]:
    import torch
    import medfm
    from medfm.errors import MedFMError

    dev = Path(data_dir) / "oct" / "device_files"
    torch.manual_seed(seed)
    oct_opts = {"frames": 3, "size": [128, 256], "patch_size": [3, 16, 16], "hflip": 0.0, "jitter": 0.0}
    fun_opts = {"size": 128, "hflip": 0.0, "jitter": 0.0}
    model = medfm.create_model({**TRUNK, "modalities": {"oct": oct_opts, "fundus": fun_opts}}).eval()
    files: List[Dict[str, Any]] = []
    plots: List[Path] = []
    for p in sorted(f for f in dev.iterdir() if f.suffix.lower() in (".vol", ".e2e", ".fda", ".fds")):
        for mod in ("oct", "fundus"):
            adapter = model.adapters[mod]
            row: Dict[str, Any] = {"file": p.name, "adapter": mod}
            try:
                r = adapter.read(str(p))
                item = adapter.preprocess(r, train=False)
                with torch.no_grad():
                    z = model.encode(mod, item["x"][None])[0]
                row.update(status="read", shape=list(np.asarray(r.data).shape), input=list(item["x"].shape),
                           value_range=[float(np.min(r.data)), float(np.max(r.data))],
                           embedding_norm=round(float(z.norm()), 4), embedding_finite=bool(torch.isfinite(z).all()))
                data = np.asarray(r.data)
                img = data[data.shape[0] // 2] if mod == "oct" else data
                plots.append(_gray_png(img, out_dir / f"{p.stem}_{mod}.png",
                                       f"{p.name} via {mod}: {'B-scan' if mod == 'oct' else 'en-face SLO'} "
                                       f"{'x'.join(map(str, data.shape))}"))
            except MedFMError as e:
                row.update(status="error", error=str(e), error_type=type(e).__name__)
            files.append(row)
    vers = _versions()
    notes = []
    for row in files:
        if row["status"] == "error" and "fromstring" in row.get("error", ""):
            row["limitation"] = (f"oct-converter {vers['oct-converter']} calls numpy.fromstring in binary mode, "
                                 f"removed in numpy {vers['numpy']}: Topcon files cannot be parsed with this numpy")
        elif row["status"] == "error" and "E2E" in row["file"].upper():
            row["limitation"] = (f"eyepy {vers['eyepy']} finds no B-scan series it can assemble in this minimised "
                                 "E2E test file (it holds headers/fragments only)")
        elif row["status"] == "error" and "oct-vendor" in row.get("error", ""):
            row["limitation"] = "the optional extra medfm[oct-vendor] is not installed"
    if vers["oct-converter"] == "not installed":
        notes.append("oct-converter is not installed: Topcon .fda/.fds files report the missing optional extra.")
    return {"files": files, "versions": vers, "plots": plots, "notes": notes,
            "adapter_options": {"oct": oct_opts, "fundus": fun_opts}}


def run(data_dir: Path, out_dir: Path, budget: Dict[str, Any], seed: int = 0) -> Dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sw = Stopwatch()
    res = block_result(budget=dict(budget))
    with sw("ct"):
        ct = ct_block(data_dir, out_dir, budget, seed)
    with sw("oct"):
        oc = oct_block(data_dir, out_dir, seed)
    res["ct"] = {k: v for k, v in ct.items() if k != "preview"}
    res["oct"] = {k: v for k, v in oc.items() if k not in ("plots", "notes")}
    res["plots"] = [ct["preview"], *oc["plots"]]
    res["notes"] += oc["notes"]
    res["metrics"] = {
        "ct/cosine_series_vs_nifti_crop": {"value": ct["cosine_series_vs_nifti"]},
        "ct/cosine_series_vs_series_as_nifti": {"value": ct["cosine_series_vs_series_as_nifti"]},
        "ct/control_max_abs_hu_diff": {"value": ct["control_max_abs_hu_diff"]},
        "ct/cosine_series_vs_shuffled_voxels": {"value": ct["cosine_series_vs_shuffled_voxels"]},
        "ct/cosine_series_vs_air": {"value": ct["cosine_series_vs_air"]},
        "oct/files_read": {"value": sum(r["status"] == "read" for r in oc["files"]), "n": len(oc["files"])},
    }
    res["baselines"].append("dicom_vs_nifti_control")
    res["timing_s"] = sw.times
    return res
