"""The coded concepts radnode's results use: what a segment or finding is, and where.

Viewers and PACS group and colour results by code, not by label text, so every structure a
pipeline reports is named here once with its DICOM/SNOMED CT codes (CID 7150 category, CID 7151
type) and reused by the SEG and SR writers.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code


@dataclass(frozen=True)
class Structure:
    """What a segment or a finding represents: a label for people, codes for machines."""

    label: str
    category: Code
    type: Code
    site: Code | None = None


MORPHOLOGICALLY_ABNORMAL = codes.SCT.MorphologicallyAbnormalStructure
LUNG = codes.SCT.Lung
BRAIN = codes.SCT.Brain

#: Structures without a site are organ-agnostic; give one with dataclasses.replace(s, site=BRAIN).
LUNG_NODULE = Structure("Lung nodule", MORPHOLOGICALLY_ABNORMAL, codes.SCT.Nodule, LUNG)
NEOPLASM = Structure("Neoplasm", MORPHOLOGICALLY_ABNORMAL, codes.SCT.Neoplasm)
NECROSIS = Structure("Necrosis", MORPHOLOGICALLY_ABNORMAL, codes.SCT.Necrosis)
EDEMA = Structure("Edema", MORPHOLOGICALLY_ABNORMAL, codes.SCT.Edema)
#: DICOM's SNOMED CT subset has no enhancing-tumour concept; NCIt's is the one RadElement uses.
ENHANCING_TUMOR = Structure(
    "Enhancing tumor", MORPHOLOGICALLY_ABNORMAL, Code("C113842", "NCIt", "Enhancing Lesion")
)
#: CID 100 procedure reported in a measurement report, by source modality.
PROCEDURE_BY_MODALITY: dict[str, Code] = {
    "CT": codes.cid100.CTUnspecifiedBodyRegion,
    "MR": codes.cid100.MRIUnspecifiedBodyRegion,
    "PT": codes.cid100.PETUnspecifiedBodyRegion,
}
IMAGING_PROCEDURE = codes.SCT.ImagingProcedure


@dataclass(frozen=True)
class Procedure:
    """The imaging procedure a report describes (IHE AI Results' "Procedure reported").

    CID 100 has no chest CT or brain MR, and Pixelmed's SR validator rejects codes outside it
    (the LOINC "CT Chest" 24627-2 was an error there), so the procedure is CID 100's code for the
    modality and the body region goes beside it as the image library's Target Region (CID 4031).
    """

    code: Code
    region: Code


#: CID 4031's Chest as Pixelmed's tables (2022) and PS3.16 before 2021 code it; pydicom's newer
#: 816094009 is an error in that validator, while 51185008 is still a valid SNOMED CT concept.
CHEST_REGION = Code("51185008", "SCT", "Chest")
CT_CHEST = Procedure(codes.cid100.CTUnspecifiedBodyRegion, CHEST_REGION)
MR_BRAIN = Procedure(codes.cid100.MRIUnspecifiedBodyRegion, codes.cid4031.Head)

#: Purpose of Reference of the Contributing Equipment item that names the algorithm (IHE AI
#: Results). AIR's trial text has the placeholder (Newcode1, 99IHE, "Processing Algorithm"); CID
#: 7005 has no such concept, and its "Processing Equipment" is the one that standard validators
#: and highdicom accept for equipment that computed a new object from the source.
PROCESSING_ALGORITHM = codes.cid7005.ProcessingEquipment

#: CID 7203 image derivation: the generic term for a model-processed image.
IMAGE_PROCESSING = codes.DCM.ImageProcessing


@dataclass(frozen=True)
class AnatomicLocation:
    """Where a finding lies, as people read it and as the SR codes it (TID 1501 Finding Site).

    ``site`` is the anatomic structure (a lung zone, a brain lobe), ``laterality`` its side
    (``codes.SCT.Right`` / ``codes.SCT.Left``) and ``label`` the words of the key image and the
    SR's text ("right lung, upper zone"). ``rule`` says how it was worked out, so that a reader
    knows an approximation from a segmentation ("by position in the lung: thirds of its height").
    """

    label: str
    site: Code
    laterality: Code | None = None
    rule: str = ""
