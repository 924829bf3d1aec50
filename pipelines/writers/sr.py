"""TID 1500 Measurement Report (Comprehensive 3D SR) of a pipeline's findings.

One measurement group per finding, each tied to its segment in the SEG or to a 3D region in the
frame of reference, so that a viewer can jump from a number to the voxels it was measured on.
A report without findings still says what was looked for and that it was absent: an empty
report would be indistinguishable from a pipeline that never ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pipelines.priors import PriorComparison
from pipelines.volume import Volume
from pipelines.writers.codes import IMAGING_PROCEDURE, PROCEDURE_BY_MODALITY, AnatomicLocation, Procedure, Structure
from pipelines.writers.identity import Algorithm, Identity
from pipelines.writers.prior import prior_items
from pipelines.writers.series import ResultKind, result_series_number
from pipelines.writers.source import copyable, series_label

#: pydicom's UCUM dictionary has no millilitre; this is the UCUM code DICOM uses for it.
MILLILITER = Code("mL", "UCUM", "milliliter")
_POSITION_CONCEPTS = (
    codes.DCM.ImagePositionPatientX,
    codes.DCM.ImagePositionPatientY,
    codes.DCM.ImagePositionPatientZ,
)


@dataclass(frozen=True)
class Finding:
    """One thing a model found, with what was measured on it.

    It needs a ``segment_number`` (its segment in the SEG passed to the writer) or a
    ``center_lps`` (a point, or a sphere of ``diameter_mm`` around it); with both, the segment is
    the region and the center is only used when there is no SEG.
    """

    tracking_id: str
    structure: Structure
    center_lps: tuple[float, float, float] | None = None
    diameter_mm: float | None = None
    volume_mm3: float | None = None
    #: Volume in millilitres, for findings read as organ or lesion volumes (brain tumor regions).
    volume_ml: float | None = None
    mean_hu: float | None = None
    score: float | None = None
    segment_number: int | None = None
    tracking_uid: str | None = None
    #: where it lies (side and zone or lobe); coded as its Finding Site
    location: AnatomicLocation | None = None
    #: (k, j, i) of a voxel of the finding on the slice where it is largest, nearest its centre:
    #: the SR's "Center" point on that source image (SCOORD) and in the patient (SCOORD3D), a
    #: point a viewer can jump to that lies in the finding even when its centre of mass does not
    point_kji: tuple[int, int, int] | None = None
    #: the earlier finding it continues and its size change, or why no prior was compared
    #: (``writers.prior``); None: priors were not asked for
    prior: PriorComparison | None = None


@dataclass(frozen=True)
class CaseQuality:
    """How far the model agreed with itself on this case: one group of the report, its score
    (Analysis Quality Rating), whether it meets the pipeline's threshold, and why in words."""

    score: float
    low_confidence: bool
    statement: str


def make_measurement_report(
    volume: Volume,
    findings: Sequence[Finding],
    algorithm: Algorithm,
    identity: Identity,
    *,
    looked_for: Structure,
    segmentation: Dataset | None = None,
    series_number: int | None = None,
    series_description: str | None = None,
    procedure: Procedure | None = None,
    coverage: str = "",
    not_measured: str = "",
    case_quality: CaseQuality | None = None,
) -> hd.sr.Comprehensive3DSR:
    """A Comprehensive 3D SR over ``volume``'s series; ``looked_for`` names the absent finding.

    ``procedure`` is the imaging procedure reported and the body region it covered (default: the
    modality's unspecified body region, no region). ``coverage`` says what the model can and
    cannot find; with no finding, the report states that nothing was found in the series it
    names, followed by it, so that "none detected" is read with its limits. ``not_measured`` (with no findings) replaces that
    statement: the series was not measured, and why; neither presence nor absence is claimed.
    ``case_quality`` adds a group with the case's self-consistency score and its verdict.
    """
    sources = [copyable(ds) for ds in {ds.SOPInstanceUID: ds for ds in volume.sources}.values()]
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = [
        _finding_group(volume, f, algorithm, identity, segmentation) for f in findings
    ]
    if not groups and not_measured:
        groups = [_not_measured_group(looked_for, algorithm, identity, not_measured)]
    elif not groups:
        groups = [_absence_group(looked_for, algorithm, identity, absence_statement(volume, looked_for, coverage))]
    if case_quality is not None:
        groups.append(_quality_group(looked_for, algorithm, identity, case_quality))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm, identity),
        procedure_reported=procedure.code if procedure else PROCEDURE_BY_MODALITY.get(volume.modality, IMAGING_PROCEDURE),
        imaging_measurements=groups,
    )
    # highdicom describes library entries from top-level PixelSpacing etc., which enhanced
    # multi-frame images keep in functional groups; those are referenced as evidence only.
    if not volume.is_multiframe:
        root = report[0].ContentSequence
        measurements = next(
            n for n, item in enumerate(root) if item.name == codes.DCM.ImagingMeasurements
        )
        root.insert(measurements, _image_library(sources, procedure.region if procedure else None))
    evidence = sources + ([segmentation] if segmentation is not None else [])
    summary = f"{len(findings)} {looked_for.label.lower()}(s)" if findings else (
        "not measured" if not_measured else "none detected")
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        **identity.new_object(series_number or result_series_number(volume.sources[0], ResultKind.REPORT)),
        series_description=(series_description or f"{algorithm.name} report: {summary}")[:64],
        is_complete=True,
        # An empty value in the source (seen in the wild) would be copied and is invalid.
        specific_character_set=volume.sources[0].get("SpecificCharacterSet") or None,
        contributing_equipment=[identity.processing_equipment(algorithm)],
    )


def _image_library(sources: Sequence[Dataset], region: Code | None) -> hd.sr.ContainerContentItem:
    """TID 1600 with what all slices share described once for the group, as dcmqi writes it.

    highdicom's ImageLibrary repeats ~17 descriptors for every image, which makes the SR of a
    300-slice series take seconds to build; a loaded Volume guarantees that size, spacing and
    orientation are common, so only each image's position stays per entry. ``region``, the body
    region the procedure covered, is the group's Target Region (TID 1602).
    """
    shared = [
        item for item in hd.sr.ImageLibraryEntryDescriptors(sources[0])
        if item.name not in _POSITION_CONCEPTS
    ]
    if region is not None:
        shared.insert(1, hd.sr.CodeContentItem(
            name=codes.DCM.TargetRegion, value=region, relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
        ))
    group = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    group.ContentSequence = hd.sr.ContentSequence(shared)
    for ds in sources:
        entry = hd.sr.ImageContentItem(
            name=codes.SCT.Source,
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        entry.ContentSequence = hd.sr.ContentSequence([
            hd.sr.NumContentItem(
                name=concept,
                value=float(value),
                unit=codes.UCUM.Millimeter,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT,
            )
            for concept, value in zip(_POSITION_CONCEPTS, ds.ImagePositionPatient)
        ])
        group.ContentSequence.append(entry)
    library = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibrary, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


def _observation_context(algorithm: Algorithm, identity: Identity) -> hd.sr.ObservationContext:
    return hd.sr.ObservationContext(observer_device_context=device_observer(algorithm, identity))


def device_observer(algorithm: Algorithm, identity: Identity) -> hd.sr.ObserverContext:
    """The node running ``algorithm`` as the observer of a report or a key object selection."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=identity.device_uid,
        name=f"{algorithm.name} {algorithm.version}"[:64],
        manufacturer_name=identity.manufacturer,
        model_name=identity.model_name,
        serial_number=identity.station_name,
    )
    return hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)


def _finding_group(
    volume: Volume,
    finding: Finding,
    algorithm: Algorithm,
    identity: Identity,
    segmentation: Dataset | None,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    structure = finding.structure
    source_series = hd.sr.SourceSeriesForSegmentation(str(volume.sources[0].SeriesInstanceUID))
    region: dict[str, Any]  # the one keyword that places the finding: a segment or a surface
    tracking_uid = finding.tracking_uid
    if finding.segment_number is not None and segmentation is not None:
        region = {
            "referenced_segment": hd.sr.ReferencedSegment(
                sop_class_uid=segmentation.SOPClassUID,
                sop_instance_uid=segmentation.SOPInstanceUID,
                segment_number=finding.segment_number,
                source_series=source_series,
            )
        }
        tracking_uid = tracking_uid or _segment_tracking_uid(segmentation, finding.segment_number)
    elif finding.center_lps is not None:
        region = {"referenced_volume_surface": _surface(volume, finding, source_series)}
    else:
        raise ValueError(
            f"finding {finding.tracking_id!r} has neither a segment in a SEG nor a center: give "
            "it a segment_number and pass the SEG, or a center_lps"
        )
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid or identity.new_uid(), identifier=finding.tracking_id
        ),
        finding_type=structure.type,
        finding_category=structure.category,
        finding_sites=_finding_sites(structure, finding.location),
        algorithm_id=algorithm.for_report(),
        measurements=_measurements(volume, finding, algorithm),
        **region,
    )
    if finding.point_kji is not None:
        group[0].ContentSequence.extend(_center_items(volume, finding.point_kji))
    if finding.prior is not None:
        group[0].ContentSequence.extend(prior_items(finding.prior))
    return group


def _finding_sites(structure: Structure, location: AnatomicLocation | None) -> list[hd.sr.FindingSite] | None:
    """The finding's site with its laterality (a lung zone, a brain lobe), else the organ."""
    if location is not None:
        return [hd.sr.FindingSite(location.site, laterality=location.laterality)]
    return [hd.sr.FindingSite(structure.site)] if structure.site is not None else None


def _center_items(volume: Volume, point_kji: tuple[int, int, int]) -> list[hd.sr.ContentItem]:
    """"Center" twice: a POINT on the source image it was measured on (SCOORD, with that image
    as SELECTED FROM) and the same point in the patient (SCOORD3D), plus the words a reader of
    the plain-text rendering needs to find that image."""
    k, j, i = point_kji
    source = volume.sources[k]
    image = hd.sr.ImageContentItem(
        name=codes.DCM.SourceImage,
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        referenced_frame_numbers=volume.frames[k] if volume.is_multiframe else None,
        relationship_type=hd.sr.RelationshipTypeValues.SELECTED_FROM,
    )
    # SCOORD pixel coordinates: column\row, (0, 0) the top left corner of the top left pixel
    on_image = hd.sr.ScoordContentItem(
        name=codes.DCM.Center,
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[i + 0.5, j + 0.5]]),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    on_image.ContentSequence = hd.sr.ContentSequence([image])
    items: list[hd.sr.ContentItem] = [on_image]
    if volume.frame_of_reference_uid is not None:
        items.append(hd.sr.Scoord3DContentItem(
            name=codes.DCM.Center,
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=volume.kji_to_lps(point_kji)[np.newaxis],
            frame_of_reference_uid=volume.frame_of_reference_uid,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ))
    instance = source.get("InstanceNumber")
    items.append(hd.sr.TextContentItem(
        name=codes.DCM.Comment,
        value=f"Measured on {series_label(volume)}, image {instance if instance is not None else k + 1}"[:1024],
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    ))
    return items


def _surface(
    volume: Volume, finding: Finding, source_series: hd.sr.SourceSeriesForSegmentation
) -> hd.sr.VolumeSurface:
    """A point, or the sphere of the finding's diameter as an ellipsoid (three axes' endpoints)."""
    if volume.frame_of_reference_uid is None:
        raise ValueError(
            "the source series has no FrameOfReferenceUID, so 3D coordinates in the report would "
            "be meaningless; reference a SEG segment instead"
        )
    center = np.asarray(finding.center_lps, dtype=np.float64)
    if finding.diameter_mm is None:
        graphic_type, data = hd.sr.GraphicTypeValues3D.POINT, center[np.newaxis]
    else:
        radius = finding.diameter_mm / 2.0
        axes = volume.direction.T * radius
        data = np.stack([center - axes[0], center + axes[0], center - axes[1],
                         center + axes[1], center - axes[2], center + axes[2]])
        graphic_type = hd.sr.GraphicTypeValues3D.ELLIPSOID
    return hd.sr.VolumeSurface(
        graphic_type=graphic_type,
        graphic_data=data,
        frame_of_reference_uid=volume.frame_of_reference_uid,
        source_series=source_series,
    )


def _measurements(
    volume: Volume, finding: Finding, algorithm: Algorithm
) -> list[hd.sr.Measurement]:
    from_segment = finding.segment_number is not None
    measurements = []
    if finding.diameter_mm is not None:
        measurements.append(hd.sr.Measurement(
            name=codes.SCT.LongAxis, value=finding.diameter_mm, unit=codes.UCUM.Millimeter
        ))
    if finding.volume_mm3 is not None:
        measurements.append(hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=finding.volume_mm3,
            unit=codes.UCUM.CubicMillimeter,
            method=codes.DCM.SumOfSegmentedVoxelMethodForVolume if from_segment else None,
        ))
    if finding.volume_ml is not None:
        measurements.append(hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=finding.volume_ml,
            unit=MILLILITER,
            method=codes.DCM.SumOfSegmentedVoxelMethodForVolume if from_segment else None,
        ))
    if finding.mean_hu is not None:
        if volume.modality != "CT":
            raise ValueError(
                f"finding {finding.tracking_id!r} has mean_hu but the source is "
                f"{volume.modality or 'not CT'}: Hounsfield units exist only for CT"
            )
        measurements.append(hd.sr.Measurement(
            name=codes.DCM.AttenuationCoefficient,
            value=finding.mean_hu,
            unit=codes.UCUM.HounsfieldUnit,
            derivation=codes.SCT.Mean,
        ))
    if finding.score is not None:
        measurements.append(hd.sr.Measurement(
            name=codes.SCT.Score,
            value=finding.score,
            unit=codes.UCUM.NoUnits,
            algorithm_id=algorithm.for_report(),
        ))
    return measurements


def absence_statement(volume: Volume, looked_for: Structure, coverage: str) -> str:
    """"No lung nodule found in series 3 "Chest" (300 images). <coverage>": what a report
    without findings says in words, naming the series examined and the model's limits."""
    return f"No {looked_for.label.lower()} found in {series_label(volume)}. {coverage}".strip()


def _absence_group(
    looked_for: Structure, algorithm: Algorithm, identity: Identity, statement: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """'No <structure> detected' as a coded statement (finding type plus Presence = Absent) and
    in words: which series was examined, and what the model covers."""
    absent = hd.sr.QualitativeEvaluation(name=codes.DCM.PresenceOfProperty, value=codes.SCT.Absent)
    return _statement_group(looked_for, algorithm, identity, f"no {looked_for.label.lower()} detected", statement,
                            [absent])


def _not_measured_group(
    looked_for: Structure, algorithm: Algorithm, identity: Identity, statement: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """What was looked for, with no measurement and no presence either way: only the reason."""
    return _statement_group(looked_for, algorithm, identity, f"{looked_for.label.lower()} not measured", statement)


def _quality_group(
    looked_for: Structure, algorithm: Algorithm, identity: Identity, quality: CaseQuality
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The case's self-consistency: the score, coded as meeting the quality standard or not, and in words."""
    verdict = hd.sr.QualitativeEvaluation(
        name=codes.DCM.QualityAssessment,
        value=(codes.DCM.UsableDoesNotMeetTheQualityControlStandard if quality.low_confidence
               else codes.DCM.UsableMeetsTheQualityControlStandard),
    )
    score = hd.sr.Measurement(name=codes.DCM.AnalysisQualityRating, value=quality.score, unit=codes.UCUM.NoUnits,
                              algorithm_id=algorithm.for_report())
    identifier = "low confidence" if quality.low_confidence else "self-consistency"
    return _statement_group(looked_for, algorithm, identity, identifier, quality.statement, [verdict], [score])


def _statement_group(
    looked_for: Structure, algorithm: Algorithm, identity: Identity, identifier: str, statement: str,
    evaluations: list[hd.sr.QualitativeEvaluation] | None = None,
    measurements: list[hd.sr.Measurement] | None = None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A group about ``looked_for`` with no region: its tracking identifier, any coded evaluation
    or measurement, and the statement in words."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=identity.new_uid(), identifier=identifier[:64]),
        finding_type=looked_for.type,
        finding_category=looked_for.category,
        finding_sites=[hd.sr.FindingSite(looked_for.site)] if looked_for.site is not None else None,
        algorithm_id=algorithm.for_report(),
        qualitative_evaluations=evaluations,
        measurements=measurements,
    )
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=codes.DCM.Comment, value=statement[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    ))
    return group


def _segment_tracking_uid(segmentation: Dataset, number: int) -> str | None:
    for item in segmentation.SegmentSequence:
        if int(item.SegmentNumber) == number:
            uid = item.get("TrackingUID")
            return None if uid is None else str(uid)
    raise ValueError(f"segment {number} is not in the SEG {segmentation.SOPInstanceUID}")
