"""Which DICOM attributes the index holds, at which query level.

This is the contract between the sources (what they are asked to return), the index
(its tables) and the query API (which keys it accepts).  Attributes are DICOM keywords.
"""

from __future__ import annotations

from typing import Final, Literal

Level = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
LEVELS: Final[tuple[Level, ...]] = ("PATIENT", "STUDY", "SERIES", "IMAGE")

#: The attribute that identifies an entity at each level.
UNIQUE_KEY: Final[dict[Level, str]] = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

#: Attributes held per level (the unique key first).  Multi-valued attributes
#: (ImageType, PixelSpacing, ...) are stored as DICOM strings with ``\\`` separators.
ATTRIBUTES: Final[dict[Level, tuple[str, ...]]] = {
    "PATIENT": (
        "PatientID",
        "IssuerOfPatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "OtherPatientIDs",
    ),
    "STUDY": (
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
        "ReferringPhysicianName",
        "PatientAge",
    ),
    "SERIES": (
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "SeriesDate",
        "SeriesTime",
        "Manufacturer",
        "ManufacturerModelName",
        "InstitutionName",
        "StationName",
        "ProtocolName",
        "FrameOfReferenceUID",
    ),
    "IMAGE": (
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "Rows",
        "Columns",
        "NumberOfFrames",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "PixelRepresentation",
        "RescaleSlope",
        "RescaleIntercept",
        "ImageType",
        "AcquisitionNumber",
        "EchoNumbers",
        "EchoTime",
        "TemporalPositionIdentifier",
        "TriggerTime",
        "DiffusionBValue",
        "GantryDetectorTilt",
    ),
}

#: Attributes computed by the index, queryable like the others.
DERIVED: Final[dict[Level, tuple[str, ...]]] = {
    "PATIENT": ("NumberOfPatientRelatedStudies",),
    "STUDY": ("ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    "SERIES": ("NumberOfSeriesRelatedInstances",),
    "IMAGE": (),
}

#: Numeric attributes held as integers (DICOM IS, US and the derived counts).
INTEGER: Final[frozenset[str]] = frozenset(
    {
        "SeriesNumber",
        "InstanceNumber",
        "Rows",
        "Columns",
        "NumberOfFrames",
        "SamplesPerPixel",
        "BitsAllocated",
        "BitsStored",
        "PixelRepresentation",
        "AcquisitionNumber",
        "EchoNumbers",
        "TemporalPositionIdentifier",
        "NumberOfPatientRelatedStudies",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "NumberOfSeriesRelatedInstances",
    }
)

#: Attributes matched as integers or decimals (single values and ``lo-hi`` ranges).
NUMERIC: Final[frozenset[str]] = INTEGER | {
    "SliceThickness",
    "RescaleSlope",
    "RescaleIntercept",
    "EchoTime",
    "TriggerTime",
    "DiffusionBValue",
    "GantryDetectorTilt",
}


def level_of(keyword: str) -> Level | None:
    """The level whose table holds ``keyword``, or None when the index does not hold it."""
    for level in LEVELS:
        if keyword in ATTRIBUTES[level] or keyword in DERIVED[level]:
            return level
    return None
