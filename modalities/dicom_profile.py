"""DICOM headers against the PS3.15 Annex E Basic Application Level Confidentiality Profile.

:data:`BASIC_PROFILE` lists attributes of the Basic Profile (DICOM PS3.15 Table E.1-1) by keyword,
grouped by what they reveal; pydicom's data dictionary gives their tags (``tests`` check every
keyword against it). :func:`header_phi` reads a header (``stop_before_pixels``) and returns which of
them are present and non-empty — never their values. UIDs (action ``U``: replace consistently) are
counted apart from the identifying attributes: every DICOM object has them.

The PyPI ``deid`` package applies de-identification *recipes* to DICOM files; auditing needs only
the profile's attribute list, so medfm reads headers with pydicom and adds no dependency.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Tuple

__all__ = ["BASIC_PROFILE", "UID_ATTRIBUTES", "dicom_files", "header_phi"]

#: category → attribute keywords of the Basic Profile whose action removes, empties or dummies them
BASIC_PROFILE: Dict[str, Tuple[str, ...]] = {
    "names": ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
              "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
              "OperatorsName", "PhysiciansOfRecord", "RequestingPhysician", "ScheduledPerformingPhysicianName",
              "ResponsiblePerson", "ReviewerName", "ContentCreatorName", "PersonName", "VerifyingObserverName",
              "ConsultingPhysicianName"),
    "identifiers": ("PatientID", "OtherPatientIDs", "OtherPatientIDsSequence", "IssuerOfPatientID",
                    "AccessionNumber", "StudyID", "MedicalRecordLocator", "AdmissionID", "RequestedProcedureID",
                    "PerformedProcedureStepID", "ScheduledProcedureStepID", "DeviceSerialNumber", "PlateID",
                    "DetectorID", "MilitaryRank", "BranchOfService", "InsurancePlanIdentification"),
    "dates_times": ("PatientBirthDate", "PatientBirthTime", "StudyDate", "SeriesDate", "AcquisitionDate",
                    "ContentDate", "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime",
                    "AcquisitionDateTime", "InstanceCreationDate", "InstanceCreationTime", "OverlayDate",
                    "OverlayTime", "CurveDate", "CurveTime", "LastMenstrualDate"),
    "contact_location": ("PatientAddress", "PatientTelephoneNumbers", "InstitutionName", "InstitutionAddress",
                         "InstitutionalDepartmentName", "StationName", "CountryOfResidence", "RegionOfResidence",
                         "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "CurrentPatientLocation"),
    "demographics_history": ("PatientAge", "PatientSex", "PatientSize", "PatientWeight", "EthnicGroup", "Occupation",
                             "AdditionalPatientHistory", "PatientComments", "MedicalAlerts", "Allergies",
                             "PregnancyStatus", "SmokingStatus", "PatientReligiousPreference", "PatientState",
                             "PatientSexNeutered", "SpecialNeeds"),
    "descriptions": ("StudyDescription", "SeriesDescription", "ImageComments", "AdmittingDiagnosesDescription",
                     "PerformedProcedureStepDescription", "RequestedProcedureDescription", "DerivationDescription",
                     "ProtocolName", "TextString", "TextComments"),
}
#: Basic Profile UIDs (action U): present in every object, counted apart
UID_ATTRIBUTES: Tuple[str, ...] = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
                                   "ReferencedSOPInstanceUID", "IrradiationEventUID",
                                   "SynchronizationFrameOfReferenceUID")


def _non_empty(value) -> bool:
    if value is None:
        return False
    if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
        return len(value) > 0
    return str(value).strip() != ""


def header_phi(path: os.PathLike) -> Dict[str, List[str]]:
    """``{category: [keyword, ...]}`` of Basic Profile attributes present and non-empty in one header,
    plus ``"uids"``. Values are never returned. Raises pydicom's error for a file that is not DICOM."""
    import pydicom  # deferred: heavy optional import, only when a manifest points at DICOM

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    out: Dict[str, List[str]] = {}
    for cat, keywords in BASIC_PROFILE.items():
        hits = [k for k in keywords if k in ds and _non_empty(ds.get(k))]
        if hits:
            out[cat] = hits
    uids = [k for k in UID_ATTRIBUTES if k in ds and _non_empty(ds.get(k))]
    if uids:
        out["uids"] = uids
    return out


def dicom_files(path: os.PathLike, limit: int = 2000) -> List[Path]:
    """The DICOM files one manifest cell names: the file itself, or the files of a series folder
    (``.dcm`` or no suffix; at most ``limit``), sorted. Files are told by the ``DICM`` preamble."""
    p = Path(path)
    cands = [p] if p.is_file() else sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else []
    out = []
    for q in cands[:limit]:
        try:
            with open(q, "rb") as fh:
                head = fh.read(132)
        except OSError:
            continue
        if len(head) == 132 and head[128:132] == b"DICM":
            out.append(q)
    return out
