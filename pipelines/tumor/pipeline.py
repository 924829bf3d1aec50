"""``tumor-segmentation``: a brain MR study in, tumor sub-regions (SEG) and their volumes (SR) out.

Steps, each timed in the job summary: load each contrast in one storage order (``orientation``)
and pick the reference (``options.reference``); extract the brain; register the other contrasts
onto the reference, leaving out one that fails the check; preprocess onto the model grid;
infer (SegResNet, or a MONAI bundle as published); write the BraTS sub-regions back on the
reference grid with their volumes, and the case's self-consistency. Each kind of model runs
through the ``TumorSegmenter`` protocol (``segmented``); the steps at length: docs/tumor-pipeline.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import SimpleITK as sitk
from pydicom import Dataset
from scipy import ndimage

from pipelines.base import (
    InputSpec,
    JobInput,
    JobResult,
    NotApplicable,
    PipelineSettings,
)
from pipelines.components import component_sizes
from pipelines.model_pipeline import ModelPipeline
from pipelines.processes import usable_cores
from pipelines.scanner_input import scanner_volume
from pipelines.timing import StageClock
from pipelines.tumor import contract
from pipelines.tumor.anatomy import check_brain_series, check_brain_volume
from pipelines.tumor.brain_extraction import extract_brain
from pipelines.tumor.brain_mask import BrainMask
from pipelines.tumor.contract import MIN_TUMOR_ML, TumorSummary
from pipelines.tumor.contrasts import ANCHORS, CHANNELS, choose_reference
from pipelines.tumor.dura import clear_dura
from pipelines.tumor.inference import DEFAULT_MODEL_DIR, Segmenter
from pipelines.tumor.isolated_edema import Cleared, clear_isolated_edema
from pipelines.tumor.location import brain_location
from pipelines.tumor.model_set import ModelSet
from pipelines.tumor.orientation import canonical, same_grid, to_source
from pipelines.tumor.preprocess import (
    drop_small_tumors,
    drop_tumors_without_core,
    fill_enclosed_core,
    labels_from_regions,
    model_grid,
    resample,
    zscore_channels,
)
from pipelines.tumor.quality import LOW_CONFIDENCE, Quality, assess
from pipelines.tumor.registration import Alignment, RegistrationError, align
from pipelines.tumor.segmented import AlignedStudy, Segmented
from pipelines.tumor.validation import DISPLAY, UNVALIDATED, choose_inputs
from pipelines.tumor.ventricles import clear_ventricles, ventricle_mask
from pipelines.volume import Volume
from pipelines.writers import codes
from pipelines.writers.identity import Algorithm
from pipelines.writers.key_images import GREEN, RED, RGB, YELLOW, KeyFinding, Page, Region, make_key_images
from pipelines.writers.key_objects import with_key_objects
from pipelines.writers.output import write_datasets
from pipelines.writers.presentation_state import largest_outline, make_presentation_state
from pipelines.writers.seg import Segment, make_segmentation
from pipelines.writers.sr import CaseQuality, Finding, absence_statement, make_measurement_report

#: The first words of the key images' banner and series description.
PIPELINE_LABEL = "radnode tumor-segmentation"


@dataclass(frozen=True)
class SubRegion:
    """One BraTS label written as one SEG segment and one SR measurement group."""

    label: int
    tracking_id: str
    structure: codes.Structure
    #: its outline on the key images and in the presentation state
    color: RGB
    #: how a caption names it
    short: str


SUB_REGIONS: tuple[SubRegion, ...] = (
    SubRegion(1, "necrosis", replace(codes.NECROSIS, label="Necrosis / non-enhancing tumor core", site=codes.BRAIN),
              YELLOW, "necrosis"),
    SubRegion(2, "edema", replace(codes.EDEMA, label="Peritumoral edema", site=codes.BRAIN), GREEN, "edema"),
    SubRegion(4, "enhancing-tumor", replace(codes.ENHANCING_TUMOR, site=codes.BRAIN), RED, "enhancing tumor"),
)
BRAIN_TUMOR = replace(codes.NEOPLASM, label="Brain tumor", site=codes.BRAIN)
#: Lesions shown on a key image each, largest first; the summary image counts the rest.
MAX_KEY_LESIONS = 5
#: Cores for each registration run at once: fewer machines run them one after the other, which
#: saves the memory of the others' gradient images (0.7 GiB for three 1 mm series).
CORES_PER_REGISTRATION = 4


@dataclass(frozen=True)
class Alignments:
    """How each contrast was put on the reference, and the contrasts that could not be."""

    #: reference point -> contrast point, for every contrast used (identity for the reference)
    transforms: dict[str, sitk.Transform]
    #: per contrast: the measured quality of its registration, or that it shares the grid
    registration: dict[str, dict[str, bool | float | str]]
    #: per contrast left out: the failed checks, for the report's reader
    left_out: dict[str, str]


class TumorSegmentation(ModelPipeline):
    """Multi-contrast brain tumor sub-region segmentation with volumes."""

    name: ClassVar[str] = "tumor-segmentation"
    shipped_model = DEFAULT_MODEL_DIR
    inputs: ClassVar[tuple[InputSpec, ...]] = contract.INPUTS
    Options = contract.Options
    options: contract.Options

    def __init__(self, settings: PipelineSettings) -> None:
        super().__init__(settings)
        self.models = ModelSet.load(self.model_dir, self.device)
        self.reference_order = self.options.reference
        self.min_tumor_ml = self.options.min_tumor_ml

    def run(self, job: JobInput) -> JobResult:
        clock = StageClock()
        volumes = _contrast_volumes(job)
        present = [role for role in CHANNELS if role in volumes]
        reference_role = choose_reference(present, self.reference_order)
        reference = volumes[reference_role]
        images = {role: canonical(volumes[role].to_sitk()) for role in present}  # one storage order for all
        clock.lap("load")

        self.models.main.require_contrasts(present)  # before any work: a study it cannot run

        brain = extract_brain(images[reference_role])
        brain_ml = check_brain_volume(brain, DISPLAY[reference_role])
        clock.lap("brain extraction")

        alignments = _align_contrasts(volumes, images, present, reference_role)
        transforms = alignments.transforms
        present = [role for role in present if role in transforms]
        images = {role: images[role] for role in present}
        clock.lap("registration")

        choice = choose_inputs(present, self.models.validated, self.options.min_validated_dice,
                               self.options.deliver_unvalidated)
        reasons = {**alignments.left_out, **(choice.left_out or {})}
        left_out = {role: reasons[role] for role in CHANNELS if role in reasons}  # in channel order
        present = list(choice.roles)
        images = {role: images[role] for role in present}
        model_name, segmenter = self.models.for_contrasts(present)
        segmenter.require_contrasts(present, alignments.left_out)
        used = ", ".join(DISPLAY[role] for role in present)
        parameters = (("contrasts used", used), *_left_out_parameter(left_out),
                      ("reference contrast", DISPLAY[reference_role]), ("brain volume used", f"{brain_ml:.0f} mL"),
                      *choice.parameter())
        summary = partial(TumorSummary, contrasts_used=[DISPLAY[role] for role in present],
                          left_out={DISPLAY[role]: reason for role, reason in left_out.items()},
                          reference=DISPLAY[reference_role], brain_ml=round(brain_ml, 1),
                          registration=alignments.registration, validation=choice.status,
                          validation_note=choice.statement, device=self.device, model_sha256=self.model_digest)
        if choice.status == "not-measured":  # no model runs: nothing it said would be sent
            algorithm = Algorithm(name="radnode tumor-segmentation", version=self.model_digest[:16],
                                  parameters=(*parameters, ("model", model_name)))
            outputs = write_datasets(self._not_measured(reference, algorithm, _described(used, left_out),
                                                        choice.statement), job.output_dir)
            clock.lap("writing")
            return JobResult.written(outputs, summary=summary(model=model_name, volumes_ml={}, tumor_found=False,
                                                              seconds=clock.laps))
        study = AlignedStudy(images, transforms, reference_role, brain, clock, parameters, model_name,
                             self.model_digest)
        done = segmenter.segmentation(study, partial(segment_network, min_tumor_ml=self.min_tumor_ml))
        model_name, algorithm, quality = done.model_name, done.algorithm, done.quality
        labels, brain = _in_source_order(done.labels, brain, images[reference_role], reference)
        voxel_ml = float(np.prod(reference.spacing)) / 1000.0
        volumes_ml = {region.tracking_id: round(float((labels == region.label).sum()) * voxel_ml, 2)
                      for region in SUB_REGIONS}
        datasets = self._results(reference, labels, volumes_ml, algorithm, _described(used, left_out), brain,
                                 marking=f"{UNVALIDATED} " if choice.status == "unvalidated" else "",
                                 statement=choice.statement, quality=quality)
        outputs = write_datasets(datasets, job.output_dir)
        clock.lap("writing")
        return JobResult.written(outputs, summary=summary(
            model=model_name, volumes_ml=volumes_ml, tumor_found=any(volumes_ml.values()), seconds=clock.laps,
            self_consistency=quality.score if quality else None, low_confidence=bool(quality and quality.low_confidence),
            isolated_edema_ml=list(done.isolated_edema_ml)))

    def _not_measured(self, reference: Volume, algorithm: Algorithm, used: str, statement: str) -> list[Dataset]:
        """The SR saying why nothing was measured and what to send, and the summary image saying
        the same: no SEG, no volume, no outline."""
        page = Page(algorithm, PIPELINE_LABEL, f"Brain tumor: not measured ({used})", (statement,), body_part="HEAD")
        report = make_measurement_report(
            reference, [], algorithm, self.identity, looked_for=BRAIN_TUMOR,
            series_description=f"Brain tumor: not measured ({used})", procedure=codes.MR_BRAIN,
            not_measured=statement,
        )
        return with_key_objects(reference, [report, *make_key_images(reference, [], page, self.identity)],
                                algorithm, self.identity)

    def _results(self, reference: Volume, labels: np.ndarray, volumes_ml: dict[str, float],
                 algorithm: Algorithm, used: str, brain: sitk.Image, marking: str = "",
                 statement: str = "", quality: Quality | None = None) -> list[Dataset]:
        """SEG + SR when a tumor was found (the SR alone saying "none detected" otherwise), the
        key images, the presentation state and their KOS: every format a destination may ask for.
        ``marking`` ("UNVALIDATED ") opens every object's series description and the key-image
        banner; ``statement`` heads the summary image. ``quality`` goes into the SR, and a
        low-confidence case is marked ``LOW_CONFIDENCE`` as ``marking`` is, its reason on the summary image."""
        coverage = contract.COVERAGE.format(min_ml=self.min_tumor_ml)
        case_quality = _case_quality(quality)
        if case_quality is not None and case_quality.low_confidence:
            marking += f"{LOW_CONFIDENCE} "
            statement = " ".join(part for part in (statement, case_quality.statement) if part)
        lesions = _key_lesions(reference, labels, brain)
        # from the voxels, as each lesion's volume is (a sum of rounded sub-regions may read 0.1 mL off)
        total = round(float((labels > 0).sum()) * float(np.prod(reference.spacing)) / 1000.0, 2)
        page = Page(
            algorithm, f"{marking}{PIPELINE_LABEL}",
            f"Brain tumor: {total:.1f} mL ({used})" if total else f"Brain tumor: none found ({used})",
            ((statement,) if statement else ()) + (tuple(lesion.summary_line(reference) for lesion in lesions)
                                                   or (absence_statement(reference, BRAIN_TUMOR, coverage),)),
            body_part="HEAD",
        )
        pictures: list[Dataset] = [*make_key_images(reference, lesions, page, self.identity)]
        if lesions:  # a presentation state shows outlines: with none it would show nothing
            pictures.append(make_presentation_state(reference, lesions, page, self.identity))
        if not any(volumes_ml.values()):
            report = make_measurement_report(
                reference, [], algorithm, self.identity, looked_for=BRAIN_TUMOR,
                series_description=f"{marking}Brain tumor: none detected ({used})", procedure=codes.MR_BRAIN,
                coverage=coverage, case_quality=case_quality,
            )
            return with_key_objects(reference, [report, *pictures], algorithm, self.identity,
                                    f"{marking}{PIPELINE_LABEL} key objects")
        segment_map = np.zeros(labels.shape, dtype=np.uint8)
        for number, region in enumerate(SUB_REGIONS, start=1):
            segment_map[labels == region.label] = number
        segments = [Segment(region.structure, region.tracking_id) for region in SUB_REGIONS]
        seg = make_segmentation(
            reference, segment_map, segments, algorithm, self.identity,
            series_description=f"{marking}Brain tumor sub-regions (radnode)",
            # a segment with no voxels still needs frames to be a valid segment
            keep_empty_frames=not all(volumes_ml.values()),
        )
        findings = [
            *(_sub_region_finding(number, region, volumes_ml[region.tracking_id], reference, labels, brain)
              for number, region in enumerate(SUB_REGIONS, start=1)),
            *_lesion_findings(reference, labels, brain),
        ]
        report = make_measurement_report(
            reference, findings, algorithm, self.identity, looked_for=BRAIN_TUMOR, segmentation=seg,
            series_description=f"{marking}Brain tumor {total:.1f} mL ({used})", procedure=codes.MR_BRAIN,
            coverage=coverage, case_quality=case_quality,
        )
        return with_key_objects(reference, [seg, report, *pictures], algorithm, self.identity,
                                f"{marking}{PIPELINE_LABEL} key objects")


def _case_quality(quality: Quality | None) -> CaseQuality | None:
    """The SR's group of the case's self-consistency, with the sentence a reader needs."""
    if quality is None:
        return None
    if quality.low_confidence:
        return CaseQuality(quality.score, True, f"{LOW_CONFIDENCE}: {quality.explanation}")
    return CaseQuality(quality.score, False, quality.explanation)


def _sub_region_finding(number: int, region: SubRegion, volume_ml: float, reference: Volume,
                        labels: np.ndarray, brain: sitk.Image) -> Finding:
    """A sub-region's SR group: its volume and, when it has voxels, where it lies."""
    mask = labels == region.label
    if not mask.any():
        return Finding(region.tracking_id, region.structure, volume_ml=volume_ml, segment_number=number)
    whole = (slice(0, mask.shape[0]), slice(0, mask.shape[1]), slice(0, mask.shape[2]))
    shown = KeyFinding("", (Region(whole, mask, region.color),))
    return Finding(region.tracking_id, region.structure, volume_ml=volume_ml, segment_number=number,
                   location=brain_location(brain, mask),
                   point_kji=shown.center_point(reference.array.shape))


def _lesion_findings(reference: Volume, labels: np.ndarray, brain: sitk.Image) -> list[Finding]:
    """One SR group per connected lesion, largest first ("lesion-1", ...): its volume, where it
    lies and a point on it in the source series with its outline there. The sub-region groups
    give the totals; a radiologist follows lesions one by one (a metastasis beside a glioma)."""
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
    if count == 0:
        return []
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    voxel_ml = float(np.prod(reference.spacing)) / 1000.0
    whole = (slice(0, labels.shape[0]), slice(0, labels.shape[1]), slice(0, labels.shape[2]))
    findings = []
    for rank, component in enumerate(np.argsort(-sizes, kind="stable") + 1, start=1):
        mask = components == component
        point = KeyFinding("", (Region(whole, mask, SUB_REGIONS[0].color),)).center_point(reference.array.shape)
        findings.append(Finding(
            f"lesion-{rank}", BRAIN_TUMOR, center_lps=_as_point(reference.kji_to_lps(point)),
            volume_ml=round(float(sizes[component - 1]) * voxel_ml, 2), location=brain_location(brain, mask),
            point_kji=point, outline=largest_outline(mask[point[0]]),
        ))
    return findings


def _as_point(values: np.ndarray) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])


def _key_lesions(reference: Volume, labels: np.ndarray, brain: sitk.Image) -> list[KeyFinding]:
    """The connected tumors, largest first (up to ``MAX_KEY_LESIONS``), each with its sub-regions
    outlined in their colours and a caption of its volumes and place."""
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
    if count == 0:
        return []
    sizes = component_sizes(components, count)
    order = np.argsort(-sizes)[:MAX_KEY_LESIONS] + 1
    boxes = ndimage.find_objects(components)
    voxel_ml = float(np.prod(reference.spacing)) / 1000.0
    lesions = []
    for rank, component in enumerate(order, start=1):
        window = boxes[component - 1]
        assert window is not None
        inside = components[window] == component
        regions = tuple(Region(window, inside & (labels[window] == r.label), r.color, r.short)
                        for r in SUB_REGIONS if (inside & (labels[window] == r.label)).any())
        # a part of a lesion under 0.05 mL is outlined but not listed: "necrosis 0.0 mL" says nothing
        parts = ", ".join(f"{r.name} {float(r.mask.sum()) * voxel_ml:.1f} mL" for r in regions
                          if float(r.mask.sum()) * voxel_ml >= 0.05)
        whole = np.zeros(labels.shape, dtype=bool)
        whole[window] = inside
        place = brain_location(brain, whole).label
        caption = f"Lesion {rank} of {count}: {float(inside.sum()) * voxel_ml:.1f} mL ({parts}), {place}"
        lesions.append(KeyFinding(caption, regions))
    return lesions


def _align_contrasts(volumes: Mapping[str, Volume], images: Mapping[str, sitk.Image], present: Sequence[str],
                     reference_role: str) -> Alignments:
    """Every contrast onto the reference: unregistered on a shared grid, registered otherwise,
    and left out (with the failed checks) when its registration fails the quality check."""
    transforms: dict[str, sitk.Transform] = {reference_role: sitk.Transform()}
    registration: dict[str, dict[str, bool | float | str]] = {}
    left_out: dict[str, str] = {}
    others = [role for role in present if role != reference_role]
    moved = [role for role in others
             if not _shares_grid(volumes[reference_role], volumes[role], images[reference_role], images[role])]
    outcomes = _registered(images, moved, reference_role)
    for role in others:
        outcome = outcomes.get(role)
        if outcome is None:
            transforms[role] = sitk.Transform()
            registration[role] = {"registered": False, "why": "same frame of reference and grid as the reference"}
        elif isinstance(outcome, RegistrationError):
            left_out[role] = f"not aligned to {DISPLAY[reference_role]}: {'; '.join(outcome.problems)}"
        else:
            transforms[role] = outcome.transform
            registration[role] = {"rotation_deg": round(outcome.rotation_deg, 2),
                                  "shift_mm": round(outcome.translation_mm, 2),
                                  "head_overlap": round(outcome.overlap, 3),
                                  "edge_alignment": round(outcome.edge_alignment, 3)}
    return Alignments(transforms, registration, left_out)


def _registered(images: Mapping[str, sitk.Image], roles: Sequence[str],
                reference_role: str) -> dict[str, Alignment | RegistrationError]:
    """Each role registered to the reference, several at once where the machine has the cores
    (``CORES_PER_REGISTRATION`` each): ITK releases the GIL and one registration keeps few of a
    server's cores busy; each at once holds its own gradient image (docs/tumor-pipeline.md)."""
    def one(role: str) -> Alignment | RegistrationError:
        try:
            return align(images[reference_role], images[role], DISPLAY[role])
        except RegistrationError as error:
            return error

    with ThreadPoolExecutor(max(1, min(len(roles), usable_cores() // CORES_PER_REGISTRATION))) as pool:
        return dict(zip(roles, pool.map(one, roles)))


def _shares_grid(reference: Volume, other: Volume, reference_image: sitk.Image, other_image: sitk.Image) -> bool:
    """One frame of reference and, in one storage order, one voxel grid: ``Volume.shares_grid``
    whatever order each series was stored in."""
    return (reference.frame_of_reference_uid is not None
            and reference.frame_of_reference_uid == other.frame_of_reference_uid
            and same_grid(reference_image, other_image))


def _in_source_order(labels: np.ndarray, brain: sitk.Image, canonical_grid: sitk.Image,
                     reference: Volume) -> tuple[np.ndarray, sitk.Image]:
    """The labels and the brain mask, computed in one storage order, in the reference series' own:
    the SEG, the SR and the key images address its slices, rows and columns."""
    source = reference.to_sitk()
    brain_array = to_source(sitk.GetArrayFromImage(brain), canonical_grid, source)
    brain_image = sitk.GetImageFromArray(brain_array)
    brain_image.CopyInformation(source)
    return to_source(labels, canonical_grid, source), brain_image


def _left_out_parameter(left_out: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The algorithm parameter that tells the reader of the SEG and SR which contrast was not used and why."""
    if not left_out:
        return ()
    return (("contrasts left out", "; ".join(f"{DISPLAY[role]} ({why})" for role, why in left_out.items())),)


def _described(used: str, left_out: Mapping[str, str]) -> str:
    """The contrasts as the series description names them, the left-out ones included."""
    if not left_out:
        return used
    return f"{used}; {', '.join(DISPLAY[role] for role in left_out)} left out"


def _contrast_volumes(job: JobInput) -> dict[str, Volume]:
    """The MR volume of every role that arrived, or NotApplicable saying what is wrong."""
    volumes = {}
    for role in CHANNELS:
        paths: Sequence[Path] = list(job.series.get(role, ()))
        if not paths:
            continue
        volume = scanner_volume(paths, "MR", TumorSegmentation.name, f"the {DISPLAY[role]} series")
        check_brain_series(volume, DISPLAY[role])
        volumes[role] = volume
    if not any(role in volumes for role in ANCHORS):
        raise NotApplicable(
            f"the study has {', '.join(DISPLAY[r] for r in volumes) or 'no contrasts'}; "
            "the model needs T1c or FLAIR"
        )
    return volumes


@dataclass(frozen=True)
class Prediction:
    """The network's view of one study: its input and outputs on the model grid."""

    grid: sitk.Image
    #: (4, z, y, x) normalized channels, LPS order
    channels: np.ndarray
    #: the brain on the model grid
    inside: np.ndarray
    #: (3, z, y, x) sigmoid outputs (TC, WT, ET)
    probabilities: np.ndarray


def predict(segmenter: Segmenter, images: Mapping[str, sitk.Image], transforms: Mapping[str, sitk.Transform],
            reference_role: str, brain: sitk.Image, clock: StageClock | None = None) -> Prediction:
    """The contrasts on the model grid and the network's probabilities there.

    ``transforms[role]`` maps reference points to points of ``images[role]``; resampling to the
    model grid goes through it, so each contrast is interpolated once.
    """
    clock = clock or StageClock()
    grid = model_grid(images[reference_role], segmenter.format.spacing)
    channels = {role: sitk.GetArrayFromImage(resample(image, grid, transforms.get(role)))
                for role, image in images.items()}
    inside = sitk.GetArrayFromImage(resample(brain, grid)) >= 0.5
    network_input = zscore_channels(channels, inside)
    clock.lap("preprocessing")
    probabilities = segmenter.probabilities(network_input)
    clock.lap("inference")
    return Prediction(grid, network_input, inside, probabilities)


def segment_network(segmenter: Segmenter, study: AlignedStudy, min_tumor_ml: float = MIN_TUMOR_ML) -> Segmented:
    """radnode's steps for its own network: ``predict``, ``post_process`` and the case's
    self-consistency (``quality``), named as radnode's model."""
    prediction = predict(segmenter, study.images, study.transforms, study.reference_role, study.brain, study.clock)
    cleared = post_process(prediction, segmenter, study.images, study.reference_role, study.brain, study.clock,
                           min_tumor_ml)
    quality = assess(segmenter.format.threshold, prediction.probabilities, prediction.inside)
    study.clock.lap("self-consistency")
    algorithm = Algorithm(name="radnode tumor-segmentation", version=study.model_digest[:16],
                          parameters=(*study.parameters, ("model", study.model_name)))
    return Segmented(cleared.labels, algorithm, study.model_name, quality, tuple(cleared.dropped_ml))


def segment(segmenter: Segmenter, images: Mapping[str, sitk.Image], transforms: Mapping[str, sitk.Transform],
            reference_role: str, clock: StageClock | None = None, brain: sitk.Image | None = None,
            min_tumor_ml: float = MIN_TUMOR_ML) -> np.ndarray:
    """BraTS labels (1, 2, 4) on the reference image's grid from aligned contrasts (``predict``,
    then ``labels_from``). ``brain`` is the brain mask on the reference grid (``extract_brain``
    of the reference when not given)."""
    if brain is None:
        brain = extract_brain(images[reference_role])
    prediction = predict(segmenter, images, transforms, reference_role, brain, clock)
    return labels_from(prediction, segmenter, images, reference_role, brain, clock, min_tumor_ml)


def labels_from(prediction: Prediction, segmenter: Segmenter, images: Mapping[str, sitk.Image],
                reference_role: str, brain: sitk.Image, clock: StageClock | None = None,
                min_tumor_ml: float = MIN_TUMOR_ML) -> np.ndarray:
    """BraTS labels on the reference grid from a prediction (``post_process``)."""
    return post_process(prediction, segmenter, images, reference_role, brain, clock, min_tumor_ml).labels


def post_process(prediction: Prediction, segmenter: Segmenter, images: Mapping[str, sitk.Image],
                 reference_role: str, brain: sitk.Image, clock: StageClock | None = None,
                 min_tumor_ml: float = MIN_TUMOR_ML) -> Cleared:
    """BraTS labels on the reference grid from a prediction: zero outside the brain, none along the
    dura (thin, long lesions at the brain's surface or midline: ``dura``) and, on a T1c
    reference, none in or capping the ventricles without a core (``ventricles``); tumors smaller
    than ``min_tumor_ml`` are not reported (``preprocess.drop_small_tumors``), nor, with T1c,
    edema-only lesions far from every lesion with a core (``isolated_edema``: their volumes
    returned beside the labels)."""
    clock = clock or StageClock()
    reference = images[reference_role]
    labels = _labels_on_reference(prediction.probabilities, prediction.grid, reference, segmenter.format.threshold)
    if segmenter.format.fill_core:
        labels = fill_enclosed_core(labels)
    if segmenter.format.require_core and "t1c" in images:
        labels = drop_tumors_without_core(labels)
    mask = BrainMask(sitk.GetArrayFromImage(brain) > 0, reference.GetSpacing()[::-1])
    if reference_role == "t1c":  # CSF is dark on T1c; on a FLAIR reference sulci and cisterns pass for ventricles
        labels = clear_ventricles(labels, ventricle_mask(reference, mask), mask.spacing_kji)
    labels = clear_dura(labels, mask)
    labels[~mask.inside] = 0  # nothing outside the brain, ever
    labels = drop_small_tumors(labels, float(np.prod(reference.GetSpacing())) / 1000.0, min_tumor_ml)
    cleared = clear_isolated_edema(labels, reference.GetSpacing()[::-1]) if "t1c" in images else Cleared(labels, ())
    clock.lap("postprocessing")
    return cleared


def _labels_on_reference(probabilities: np.ndarray, grid: sitk.Image, reference: sitk.Image,
                         thresholds: Sequence[float]) -> np.ndarray:
    """BraTS labels on the reference series' grid, from model-grid probabilities (linear resampling)."""
    regions = []
    for channel, threshold in zip(probabilities, thresholds):
        image = sitk.GetImageFromArray(channel.astype(np.float32))
        image.CopyInformation(grid)
        regions.append(sitk.GetArrayFromImage(resample(image, reference)) >= threshold)
    return labels_from_regions(np.stack(regions))
