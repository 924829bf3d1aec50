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
#: The score's meaning as DICOM names it (SNOMED's fully specified name adds "(attribute)").
SCORE = Code("246262008", "SCT", "Score")
#: How a finding's group names the viewer tool that draws it, before its own identifier
#: ("Cornerstone3DTools@^0.1.0:Length:nodule-1"): OHIF lists and draws a TID 1500 group only
#: when its Tracking Identifier starts with the Cornerstone tool's name, and reads the finding on
#: its image from the SCOORD of the group's first measurement.
VIEWER_TOOL_TAG = "Cornerstone3DTools@^0.1.0"
#: TID 1500's container of evaluations of the whole report (row 12).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
#: Labels of arrows on one image are at least this fraction of its rows apart.
LABEL_GAP = 1 / 12
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
    #: its outline on ``point_kji``'s image as closed (column, row) image coordinates; without a
    #: segment, the group's second image region beside its point. Pixelmed's validator reads a
    #: report with exactly one image region as a TID 1410 planar ROI report and then checks the
    #: segment groups against 1410; two regions per finding keep it on TID 1411.
    outline: tuple[tuple[float, float], ...] | None = None
    #: the earlier finding it continues and its size change, or why no prior was compared
    #: (``writers.prior``); None: priors were not asked for
    prior: PriorComparison | None = None


@dataclass(frozen=True)
class CaseQuality:
    """How far the model agreed with itself on this case: its score, whether it meets the
    pipeline's threshold, and why in words (which give the score), evaluations of the whole report."""

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

    ``procedure``: the procedure and body region reported (default: the modality's, no region).
    ``coverage`` (what the model can and cannot find) follows a "none detected", so it is read
    with its limits; ``not_measured`` replaces that statement with why nothing was measured.
    ``case_quality`` adds the case's self-consistency and verdict as qualitative evaluations.
    """
    sources = [copyable(ds) for ds in {ds.SOPInstanceUID: ds for ds in volume.sources}.values()]
    places = label_places(volume, findings)
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = [
        _finding_group(volume, f, algorithm, identity, segmentation, places.get(f.tracking_id)) for f in findings
    ]
    if not groups and not_measured:
        groups = [_not_measured_group(looked_for, algorithm, identity, not_measured)]
    elif not groups:
        groups = [_absence_group(looked_for, algorithm, identity, absence_statement(volume, looked_for, coverage))]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm, identity),
        procedure_reported=procedure.code if procedure else PROCEDURE_BY_MODALITY.get(volume.modality, IMAGING_PROCEDURE),
        imaging_measurements=groups,
    )
    if case_quality is not None:
        report[0].ContentSequence.append(_quality_evaluations(case_quality))
    evidence = sources + ([segmentation] if segmentation is not None else [])
    summary = f"{len(findings)} {looked_for.label.lower()}(s)" if findings else (
        "not measured" if not_measured else "none detected")
    document = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        **identity.new_object(series_number or result_series_number(volume.sources[0], ResultKind.REPORT)),
        series_description=(series_description or f"{algorithm.name} report: {summary}")[:64],
        is_complete=True,
        # An empty value in the source (seen in the wild) would be copied and is invalid.
        specific_character_set=volume.sources[0].get("SpecificCharacterSet") or None,
        contributing_equipment=[identity.processing_equipment(algorithm)],
    )
    # highdicom describes library entries from top-level PixelSpacing etc., which enhanced
    # multi-frame images keep in functional groups; those are referenced as evidence only.
    if not volume.is_multiframe:
        _add_image_library(document, _image_library(sources, procedure.region if procedure else None))
    return document


def _add_image_library(document: hd.sr.Comprehensive3DSR, library: hd.sr.ContainerContentItem) -> None:
    """TID 1600 before the Imaging Measurements, in the document's dataset and in its typed content.

    Added to the built document: highdicom's constructor deep-copies the content tree and walks it
    twice for references, and a library of every source image (all of them evidence already)
    would be most of that tree."""
    for root in (document.ContentSequence, document.content[0].ContentSequence):
        measurements = next(n for n, item in enumerate(root) if item.name == codes.DCM.ImagingMeasurements)
        root.insert(measurements, library)


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
    label_place: tuple[float, float] | None,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 on its SEG segment, else on its point on its image (a 3D surface would leave OHIF
    without the image to draw it on), else on a 3D surface. Without a segment, the finding site
    goes on the measurements: OHIF prints a group's site as its code ("363698007: ...") when the
    group has coordinates at its top level."""
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
    elif finding.point_kji is not None:
        region = {"referenced_regions": _image_regions(volume, finding.point_kji, finding.outline)}
    elif finding.center_lps is not None:
        region = {"referenced_volume_surface": _surface(volume, finding, source_series)}
    else:
        raise ValueError(
            f"finding {finding.tracking_id!r} has neither a segment in a SEG nor a center: give "
            "it a segment_number and pass the SEG, or a center_lps"
        )
    tool = _viewer_tool(finding)
    sites = _finding_sites(structure, finding.location)
    on_group = "referenced_segment" in region
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid or identity.new_uid(),
            identifier=f"{VIEWER_TOOL_TAG}:{tool}:{finding.tracking_id}" if tool else finding.tracking_id,
        ),
        finding_type=structure.type,
        finding_category=structure.category,
        finding_sites=sites if on_group else None,
        algorithm_id=algorithm.for_report(),
        measurements=_measurements(volume, finding, algorithm, None if on_group else sites),
        **region,
    )
    _place_on_image(group, volume, finding, label_place)
    group[0].ContentSequence.extend(_comments(volume, finding))
    if finding.prior is not None:
        group[0].ContentSequence.extend(prior_items(finding.prior))
    return group


def _image_regions(volume: Volume, point_kji: tuple[int, int, int],
                   outline: tuple[tuple[float, float], ...] | None) -> list[hd.sr.ImageRegion]:
    """The finding's point on its image (first: OHIF draws a group's first region), then its
    outline there, a closed polyline."""
    k, j, i = point_kji
    regions = [hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POINT, graphic_data=np.array([[i + 0.5, j + 0.5]]),
                                 source_image=_source_image(volume, k))]
    if outline is not None:
        regions.append(hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=np.array(outline),
                                         source_image=_source_image(volume, k)))
    return regions


def _viewer_tool(finding: Finding) -> str | None:
    """The Cornerstone tool a viewer draws the finding with: its diameter as a line on its image,
    else an arrow to it; none when it has no point on an image (nothing to draw or jump to)."""
    if finding.point_kji is None:
        return None
    return "Length" if finding.diameter_mm is not None else "ArrowAnnotate"


def _finding_sites(structure: Structure, location: AnatomicLocation | None) -> list[hd.sr.FindingSite] | None:
    """The finding's site with its laterality (a lung zone, a brain lobe), else the organ."""
    if location is not None:
        return [hd.sr.FindingSite(location.site, laterality=location.laterality)]
    return [hd.sr.FindingSite(structure.site)] if structure.site is not None else None


def finding_label(finding: Finding) -> str:
    """"nodule-1: Lung nodule, left lung, middle zone": the words a viewer shows beside the
    finding (its first Comment). A finding drawn as an arrow has no measured length beside it,
    so its volume is part of the words."""
    size = f" {finding.volume_ml:.1f} mL" if finding.diameter_mm is None and finding.volume_ml is not None else ""
    place = f", {finding.location.label}" if finding.location is not None else ""
    return f"{finding.tracking_id}: {finding.structure.label}{size}{place}"


def _comments(volume: Volume, finding: Finding) -> list[hd.sr.ContentItem]:
    """The label, then the words a reader of the plain-text rendering needs to find the image."""
    items = [finding_label(finding)]
    if finding.point_kji is not None:
        k = finding.point_kji[0]
        instance = volume.sources[k].get("InstanceNumber")
        items.append(f"Measured on {series_label(volume)}, image {instance if instance is not None else k + 1}")
    return [
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=text[:1024],
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for text in items
    ]


def _source_image(volume: Volume, k: int) -> hd.sr.SourceImageForRegion:
    source = volume.sources[k]
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        referenced_frame_numbers=[volume.frames[k]] if volume.is_multiframe else None,
    )


def _on_image(volume: Volume, finding: Finding, label_place: tuple[float, float] | None
              ) -> hd.sr.CoordinatesForMeasurement:
    """The finding on its image: its diameter as a line across its point along the rows, or an
    arrow from its point (first vertex) to where its label goes (second)."""
    assert finding.point_kji is not None
    k, j, i = finding.point_kji
    column, row = i + 0.5, j + 0.5  # SCOORD: (0, 0) is the top left corner of the top left pixel
    if finding.diameter_mm is not None:
        half = finding.diameter_mm / 2.0 / volume.spacing[0]
        points = [[column - half, row], [column + half, row]]
    else:
        assert label_place is not None
        points = [[column, row], list(label_place)]
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array(points),
        source_image=_source_image(volume, k),
    )


def _center_3d(volume: Volume, finding: Finding) -> hd.sr.CoordinatesForMeasurement3D | None:
    """The finding's point in the patient, for readers that place findings in 3D."""
    if finding.point_kji is None or volume.frame_of_reference_uid is None:
        return None
    return hd.sr.CoordinatesForMeasurement3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=volume.kji_to_lps(finding.point_kji)[np.newaxis],
        frame_of_reference_uid=volume.frame_of_reference_uid,
        purpose=codes.DCM.Center,
    )


def label_places(volume: Volume, findings: Sequence[Finding]) -> dict[str, tuple[float, float]]:
    """Where each arrow's label goes (column, row), by tracking identifier: right of its point
    and, on an image with several arrows, ``LABEL_GAP`` of the rows or more apart, so that no
    two labels on one image overlap (a viewer writes the text right of the arrow's bounding
    box, halfway down it)."""
    by_image: dict[int, list[tuple[int, int, str]]] = {}
    for f in findings:
        if _viewer_tool(f) == "ArrowAnnotate" and f.point_kji is not None:
            k, j, i = f.point_kji
            by_image.setdefault(k, []).append((j, i, f.tracking_id))
    rows, columns = volume.array.shape[1:]
    gap = rows * LABEL_GAP
    places: dict[str, tuple[float, float]] = {}
    for on_image in by_image.values():
        last = -np.inf
        for j, i, tracking_id in sorted(on_image):
            head = j + 0.5
            middle = max(head + gap / 2, last + gap)
            tail = float(np.clip(2 * middle - head, 0, rows))
            places[tracking_id] = (float(min(i + 0.5 + columns / 10, columns)), tail)
            last = (tail + head) / 2
    return places


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
    volume: Volume, finding: Finding, algorithm: Algorithm, sites: list[hd.sr.FindingSite] | None = None
) -> list[hd.sr.Measurement]:
    """The finding's measurements, each with ``sites`` when the group cannot carry them."""
    from_segment = finding.segment_number is not None
    measurements = []
    if finding.diameter_mm is not None:
        measurements.append(hd.sr.Measurement(
            name=codes.SCT.LongAxis, value=finding.diameter_mm, unit=codes.UCUM.Millimeter, finding_sites=sites,
        ))
    if finding.volume_mm3 is not None:
        measurements.append(hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=finding.volume_mm3,
            unit=codes.UCUM.CubicMillimeter,
            finding_sites=sites,
            method=codes.DCM.SumOfSegmentedVoxelMethodForVolume if from_segment else None,
        ))
    if finding.volume_ml is not None:
        measurements.append(hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=finding.volume_ml,
            unit=MILLILITER,
            finding_sites=sites,
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
            finding_sites=sites,
            derivation=codes.SCT.Mean,
        ))
    if finding.score is not None:
        measurements.append(hd.sr.Measurement(
            name=SCORE,
            value=round(finding.score * 100.0, 1),
            unit=codes.UCUM.Percent,
            finding_sites=sites,
            algorithm_id=algorithm.for_report(),
        ))
    return measurements


def _place_on_image(group: hd.sr.ContentSequence, volume: Volume, finding: Finding,
                    label_place: tuple[float, float] | None) -> None:
    """The first measurement carries the finding on its image (the line or arrow a viewer
    draws), the second its point in the patient. (TID 300 allows them; highdicom's TID 1411
    builder refuses coordinates in measurements, so they are added to the built group.)"""
    numbers = [item for item in group[0].ContentSequence if item.ValueType == "NUM"]
    if finding.point_kji is None or not numbers:
        return
    numbers[0].ContentSequence = hd.sr.ContentSequence(
        [*numbers[0].get("ContentSequence", []), _on_image(volume, finding, label_place)])
    center = _center_3d(volume, finding)
    if center is not None and len(numbers) > 1:
        numbers[1].ContentSequence = hd.sr.ContentSequence([*numbers[1].get("ContentSequence", []), center])


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


def _quality_evaluations(quality: CaseQuality) -> hd.sr.ContainerContentItem:
    """The case's self-consistency as an evaluation of the whole report (TID 1500 row 12): coded as
    meeting the quality standard or not, and in words with its score. Not a measurement group:
    Pixelmed checks every group of a report that references a segment against TID 1411, which a
    group without a region fails."""
    verdict = (codes.DCM.UsableDoesNotMeetTheQualityControlStandard if quality.low_confidence
               else codes.DCM.UsableMeetsTheQualityControlStandard)
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.CodeContentItem(name=codes.DCM.QualityAssessment, value=verdict,
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS),
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=quality.statement[:1024],
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS),
    ])
    return container


def _statement_group(
    looked_for: Structure, algorithm: Algorithm, identity: Identity, identifier: str, statement: str,
    evaluations: list[hd.sr.QualitativeEvaluation] | None = None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A group about ``looked_for`` with no region: its tracking identifier, any coded evaluation,
    and the statement in words."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=identity.new_uid(), identifier=identifier[:64]),
        finding_type=looked_for.type,
        finding_category=looked_for.category,
        finding_sites=[hd.sr.FindingSite(looked_for.site)] if looked_for.site is not None else None,
        algorithm_id=algorithm.for_report(),
        qualitative_evaluations=evaluations,
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
