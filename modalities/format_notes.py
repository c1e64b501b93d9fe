"""Which library reads each vendor or clinical format, and what of it is not read (``medfm info``).

Plain data, imported by ``medfm info`` without importing any reader.
"""
from typing import Tuple

#: (modality, format, reader, not supported)
FORMAT_READERS: Tuple[Tuple[str, str, str, str], ...] = (
    ("oct/fundus", "Topcon .fda/.fds", "oct-converter 0.7 (numpy-2 layer around its binary fromstring: vendor_oct)",
     "Zeiss .img has no en-face image; .fda/.fds scan variants other than oct-converter's"),
    ("oct/fundus", "Heidelberg .e2e", "eyepy's E2E container parser (vendor_oct.read_e2e)",
     "containers cut short (listed in meta 'unreadable'); layer segmentations; patient records (never read)"),
    ("oct/fundus", "Heidelberg .vol", "eyepy HeVolReader", "layer segmentations"),
    ("ecg", "HL7 aECG .xml (urn:hl7-org:v3 AnnotatedECG)", "xml.etree (ecg_hl7)",
     "annotations, derived/representative-beat series, non-uniform time (SLIST_TS), demographics"),
    ("ecg", "GE MUSE .xml", "xml.etree (ecg.read_muse_xml)", "median beats, measurements, demographics"),
    ("ct", "DICOM folder of several series", "pydicom; one manifest row per series, cell FOLDER#SeriesInstanceUID",
     "series without a SeriesInstanceUID in a shared folder (listed unreadable)"),
    ("tabular", "manifest / joined table columns", "pandas (tabular)",
     "free-text columns (use text); dates (give numbers); per-visit time series"),
)
