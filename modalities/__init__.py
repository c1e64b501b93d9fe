"""Modality adapters, weight-import formats and manifest scanners.

Importing this package *declares* every built-in one (:meth:`medfm.registry.Registry.declare`):
its name, the module that registers it, and what ``medfm info`` lists (input kind, suffixes,
description). A module is imported the first time its entry is used (``get_modality("ct")``
imports :mod:`.ct` alone), so listing them imports no adapter, no torch.

Adding a built-in adapter: write the module with ``@register_modality`` (the class declares its
facts: suffixes, DICOM Modality values, suffix priority, folders) and add its line to
:data:`ADAPTERS`, so that listing and choosing adapters (:mod:`.facts`) import nothing;
``tests/test_startup.py`` checks every declaration against the registered class. Third-party
adapters register through the ``medfm.modalities`` entry-point group and are their class.
"""
from medfm.registry import EMBEDDERS, MODALITIES, SOURCES, TOWERS, WEIGHT_FORMATS

_IMAGE = (".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", "")
_FASTA = (".fasta", ".fa", ".fna", ".fas")

#: name -> (module, input kind, suffixes, first docstring line) of each built-in modality adapter
ADAPTERS = {
    "ct": ("ct", "path", (".dcm", ".nii", ".nii.gz", ".npy", ".npz", ""),
           "Computed tomography volumes in Hounsfield units."),
    "dna": ("dna", "value", _FASTA + tuple(s + ".gz" for s in _FASTA) + (".tsv", ".csv", ".tsv.gz", ".csv.gz"),
            "DNA barcode adapter."),
    "ecg": ("ecg", "path", (".hea", ".dat", ".mat", ".dcm", ".xml", ".npy", ".npz", ".csv"), "12-lead ECG adapter."),
    "fundus": ("fundus", "path", _IMAGE + (".vol", ".e2e", ".fds", ".fda"),
               "Retinal en-face images. Extra option ``vol_image``: ``\"slo\"`` reads the SLO of vendor files."),
    "tabular": ("tabular", "value", (), "Clinical table features: numeric (standardised), categorical and multi-valued codes, with a missing mask."),
    "oct": ("oct", "path", (".dcm", ".npy", ".npz", ".nii", ".nii.gz", "", ".vol", ".e2e", ".fds", ".fda", ".img"),
            "3D retinal OCT volumes."),
    "text": ("text", "value", (".txt",), "Reports and taxonomy strings."),
    "xray": ("xray", "path", _IMAGE, "Projection radiographs (chest X-ray): grayscale, 224², mean/std 0.5."),
}

#: name -> (DICOM Modality values, suffix priority) of each built-in adapter (its class attributes
#: ``dicom_modalities`` and ``suffix_priority``): what ``inspect``/``manifest`` choose by (:mod:`.facts`)
CHOICE_FACTS = {
    "ct": (("CT",), 10), "oct": (("OPT", "OCT"), 20), "ecg": (("ECG", "HD"), 30),
    "xray": (("CR", "DX", "DR", "RG"), 40), "dna": ((), 50), "text": ((), 60), "fundus": (("OP", "XC"), 70), "tabular": ((), 80),
}

#: name -> description of each weight-file format (:mod:`.weight_formats`)
WEIGHT_FORMAT_DESCRIPTIONS = {
    "barcodebert": "BarcodeBERT folder (BertForMaskedLM over k-mers) into the dna tower; vocabulary checked",
    "hf": "Hugging Face model folder (BERT family: config.json + model.safetensors/pytorch_model.bin)",
    "mae": "MAE pretraining checkpoint {'model': state_dict}; decoder keys reported, not loaded",
    "medfm": "one tower (+ projection) of a medfm checkpoint directory (init.tower: source modality)",
    "monai": "MONAI ViT state dict (.pt/.pth/.safetensors); LayerNorm eps 1e-5, qkv bias zero-filled",
    "octcube": "OCTCube 3D ViT (.pth; separable pos_embed_spatial/temporal, 3D tubelets)",
    "open_clip": "open_clip CLIP checkpoint: visual.* → image tower, text transformer → text tower, + projections",
    "retfound": "RETFound .pth (MAE ViT layout, {'model': state_dict})",
    "timm": "timm VisionTransformer state dict (.safetensors/.pth/.bin)",
}

#: manifest scanners of ``medfm manifest`` (:mod:`.sources`)
SCANNERS = ("dicom", "fasta", "image_folder", "nifti", "table", "vendor_oct", "wfdb")

for _name, (_module, _kind, _suffixes, _summary) in ADAPTERS.items():
    _dicom, _priority = CHOICE_FACTS[_name]
    MODALITIES.declare(_name, f"{__name__}.{_module}", input_kind=_kind, suffixes=_suffixes, summary=_summary,
                       dicom_modalities=_dicom, suffix_priority=_priority)
for _name, _description in WEIGHT_FORMAT_DESCRIPTIONS.items():
    WEIGHT_FORMATS.declare(_name, f"{__name__}.weight_formats", description=_description)
#: adapters that apply a model family's input spec (:mod:`.family_specs`); never chosen by suffix over the above:
#: name -> (module, input kind, suffixes, first docstring line, DICOM Modality values, suffix priority)
SPEC_ADAPTERS = {
    "image": ("spec_image", "path", _IMAGE, "2D images under a model family's input spec (see the module docstring).",
              ("CR", "DX", "DR", "RG", "OP", "XC"), 90),
    "volume": ("spec_volume", "path", (".dcm", ".nii", ".nii.gz", ".npy", ".npz", ""),
               "CT volumes under a 3D family's input spec (see the module docstring).", ("CT",), 90),
    "ecg_spec": ("spec_ecg", "path", (".hea", ".dat", ".mat", ".dcm", ".xml", ".npy", ".npz", ".csv"),
                 "12-lead ECGs under an ECG family's input spec (see the module docstring).", ("ECG", "HD"), 90),
    "text_spec": ("spec_text", "value", (".txt",), "Reports and prompts under a family's tokenizer (see the module "
                  "docstring).", (), 90),
}
for _name, (_module, _kind, _suffixes, _summary, _dicom, _priority) in SPEC_ADAPTERS.items():
    MODALITIES.declare(_name, f"{__name__}.{_module}", input_kind=_kind, suffixes=_suffixes, summary=_summary,
                       dicom_modalities=_dicom, suffix_priority=_priority)
#: weight formats of the published families (:mod:`.family_formats`, :mod:`.family_formats_cnn`)
FAMILY_WEIGHT_FORMATS = {
    "open_clip_hf": ("family_formats", "open_clip folder with a timm image tower and a Hugging Face text tower "
                                       "(BiomedCLIP): open_clip_config.json + weights + tokenizer"),
    "hf_two_tower": ("family_formats", "transformers CLIPModel / SiglipModel folder: each half into its tower, "
                                       "projections, logit scale"),
    "hf_encoder_dir": ("family_formats", "transformers encoder folder (HuBERT / wav2vec2 / BERT-like) into an "
                                         "hf_encoder tower; identity projection"),
    "xrv": ("family_formats_cnn", "torchxrayvision DenseNet-121 state dict (features.* = timm densenet121, in_chans 1); "
                                  "classifier reported"),
    "monai_net": ("family_formats_cnn", "MONAI 3D ResNet state dict (monai.networks.nets.resnetXX, depth read off the "
                                        "tensors); fc reported"),
}
for _name, (_module, _description) in FAMILY_WEIGHT_FORMATS.items():
    WEIGHT_FORMATS.declare(_name, f"{__name__}.{_module}", description=_description)
for _name in SCANNERS:
    SOURCES.declare(_name, f"{__name__}.sources")
EMBEDDERS.declare("kmer_tokens", f"{__name__}.dna")
TOWERS.declare("tabular", f"{__name__}.tabular_tower")
