"""``nodule-detection``: a chest CT series in, a SEG of the nodules and a TID 1500 SR out.

Stages, each timed in the job summary: load the series in HU; preprocess (soften a sharp kernel,
the detector's grid, the lungs); detect (the shipped scorer folder, or a RetinaNet folder);
postprocess (boxes near the lungs at the reporting threshold, measured on the source slices,
touching ones merged, those in the parenchyma kept); write one SEG segment and SR group per
nodule. A MONAI bundle runs as published instead (``bundle_detection``). Options: ``contract``;
the stages at length: docs/nodule-pipeline.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from monai.data.box_utils import box_area, box_iou
from scipy import ndimage as ndi

from pipelines.base import (
    SERIES_ROLE,
    InputSpec,
    JobInput,
    JobResult,
    NotApplicable,
    PipelineSettings,
)
from pipelines.model_folder import is_monai_bundle
from pipelines.model_pipeline import ModelPipeline
from pipelines.nodule import contract, masses
from pipelines.nodule.bundle_detection import BundleDetector, box_mask
from pipelines.nodule.candidate_detector import DEFAULT_SCORER_DIR, CandidateDetector, is_scorer_folder
from pipelines.nodule.contract import BundleNoduleSummary, FoundBox, FoundNodule, NoduleSummary
from pipelines.nodule.detector import Detection, Detector, NoduleDetector
from pipelines.nodule.grid import ModelGrid
from pipelines.nodule.harmonize import Harmonized, harmonize
from pipelines.nodule.lesions import in_lung, merge_touching, not_calcified, not_skeletal
from pipelines.nodule.location import lung_sides
from pipelines.nodule.lungs import lung_mask, lung_volume_ml
from pipelines.nodule.measure import Measurement, as_point, measure, source_box, touch
from pipelines.nodule.parenchyma import Parenchyma, parenchyma
from pipelines.priors import PriorComparison, Priors, match, study_date, tracking_ids
from pipelines.scanner_input import scanner_ct_volume
from pipelines.timing import StageClock
from pipelines.volume import Volume
from pipelines.writers.codes import CT_CHEST, LUNG_NODULE, AnatomicLocation
from pipelines.writers.identity import Algorithm
from pipelines.writers.key_images import LUNG_WINDOW, YELLOW, KeyFinding, Page, Region, make_key_images
from pipelines.writers.key_objects import with_key_objects
from pipelines.writers.output import write_datasets
from pipelines.writers.presentation_state import make_presentation_state
from pipelines.writers.seg import Segment, make_segmentation
from pipelines.writers.sr import Finding, absence_statement, make_measurement_report

ALGORITHM_NAME = "radnode nodule-detection"
#: A box with this fraction of its volume inside a larger box is a piece of the same lesion
#: (``fuse_nested``), when the larger box scores at least ``FUSE_SCORE_RATIO`` of it.
NESTED_FRACTION = 0.7
FUSE_SCORE_RATIO = 0.5
#: "None detected" needs both lungs in the series: at least this much lung (mL) on each side.
MIN_SIDE_ML = 100.0


@dataclass(frozen=True)
class Search:
    """What the detector found in a series, before anything is written."""

    seen: Harmonized
    lung_ml: float
    #: boxes the detector scored
    candidates: int
    #: reported lesions, best score first
    nodules: list[tuple[Detection, Measurement]]
    outside_lung: int
    #: the volume (mL) of each lung as found: both must be there for "none detected"
    sides_ml: tuple[float, float] = (0.0, 0.0)


class NoduleDetection(ModelPipeline):
    """3D lung nodule detection, segmentation and measurement on chest CT."""

    name: ClassVar[str] = "nodule-detection"
    inputs: ClassVar[tuple[InputSpec, ...]] = contract.INPUTS
    Options = contract.Options
    options: contract.Options
    shipped_model = DEFAULT_SCORER_DIR

    def __init__(self, settings: PipelineSettings) -> None:
        super().__init__(settings)
        threshold = self.options.report_threshold
        self.bundle: BundleDetector | None = None
        if is_monai_bundle(self.model_dir):
            self.bundle = BundleDetector.load(self.model_dir, self.device, threshold)
            runner = self.bundle.runner
            self.algorithm = Algorithm(runner.bundle.name, runner.bundle.version, parameters=(
                ("MONAI bundle", runner.label), ("model sha256", self.model_digest[:16]),
                ("report threshold", f"{self.bundle.report_threshold:g}"),
            ))
        else:
            loader = CandidateDetector if is_scorer_folder(self.model_dir) else NoduleDetector
            self.detector: Detector = loader.load(self.model_dir, self.device, threshold)
            self.algorithm = Algorithm(ALGORITHM_NAME, f"model sha256 {self.model_digest[:16]}")
        self.empty_seg = self.options.empty_seg
        self.min_lung_ml = self.options.min_lung_ml
        self.min_extent_mm = self.options.min_extent_mm
        self.max_slice_mm = self.options.max_slice_mm
        self.lung_margin_mm = self.options.lung_margin_mm

    def run(self, job: JobInput) -> JobResult:
        clock = StageClock()
        volume = _ct_volume(list(job.series.get(SERIES_ROLE, ())), self.min_extent_mm)
        clock.lap("load")
        if self.bundle is not None:
            return self.run_bundle(job, volume, clock)
        _validated_slices(volume, self.max_slice_mm)
        found = self.search(volume, clock)
        nodules = found.nodules
        if not nodules and min(found.sides_ml) < MIN_SIDE_ML:
            raise NotApplicable(
                f"lung found on each side: {found.sides_ml[0]:.0f} and {found.sides_ml[1]:.0f} mL; 'none detected' "
                f"is only reported when both lungs are in the series (at least {MIN_SIDE_ML:.0f} mL each)"
            )
        outputs = write_datasets(self.results(volume, nodules, examined=examined(found), priors=job.priors),
                                 job.output_dir)
        clock.lap("write")
        return JobResult.written(
            outputs,
            summary=NoduleSummary(
                nodules=[
                    FoundNodule(score=round(d.score, 3), diameter_mm=round(m.diameter_mm, 1),
                                volume_mm3=_rounded(m.volume_mm3), mass=d.mass,
                                solid_diameter_mm=_rounded(m.solid_diameter_mm))
                    for d, m in nodules
                ],
                candidates=found.candidates,
                outside_lung=found.outside_lung,
                lung_ml=round(found.lung_ml),
                noise_hu=round(found.seen.noise_hu, 1),
                softened_mm=found.seen.sigma_mm,
                device=self.device,
                model_sha256=self.model_digest,
                seconds=clock.laps,
            ),
        )

    def run_bundle(self, job: JobInput, volume: Volume, clock: StageClock) -> JobResult:
        """The bundle's boxes at or above the reporting threshold, as SEG and SR on the source series."""
        assert self.bundle is not None
        boxes = self.bundle.detect(volume)
        clock.lap("inference")
        nodules = []
        for box in boxes:
            if box.score < self.bundle.report_threshold:
                break
            region = box_mask(volume, box)
            if region is not None:
                nodules.append((_box_detection(box), _box_measurement(volume, box, *region)))
        clock.lap("postprocess")
        outputs = write_datasets(self.results(volume, nodules, box_regions=True), job.output_dir)
        clock.lap("write")
        return JobResult.written(outputs, summary=BundleNoduleSummary(
            nodules=[FoundBox(score=round(d.score, 3), center_lps=[round(v, 1) for v in m.center_lps],
                              box_mm=[round(float(v), 1) for v in d.lps_corners[-1] - d.lps_corners[0]])
                     for d, m in nodules],
            candidates=len(boxes),
            bundle=self.bundle.label,
            device=self.device,
            model_sha256=self.model_digest,
            seconds=clock.laps,
        ))

    def search(self, volume: Volume, clock: StageClock | None = None) -> Search:
        """The reported lesions of a chest CT, and what the summary says of the search.

        Everything is found and measured on the series as ``harmonize`` softens it; the results
        are written on the series as acquired."""
        clock = clock if clock is not None else StageClock()
        seen = harmonize(volume)
        grid = self.detector.grid(seen.volume)
        lungs = lung_mask(grid.hu, slice_axis=2)
        lung_ml = lung_volume_ml(lungs, grid.spacing)
        if lung_ml < self.min_lung_ml:
            raise NotApplicable(
                f"only {lung_ml:.0f} mL of aerated lung in the series (at least {self.min_lung_ml:.0f} mL "
                "needed): not a chest CT, or the lungs are outside its field of view"
            )
        clock.lap("preprocess")
        candidates = self.detector.detect(grid, lungs)
        clock.lap("inference")
        nodules, outside_lung, sides_ml = self.lesions(seen.volume, grid, lungs, candidates)
        clock.lap("postprocess")
        return Search(seen, lung_ml, len(candidates), nodules, outside_lung, sides_ml)

    def lesions(
        self, volume: Volume, grid: ModelGrid, lungs: np.ndarray, candidates: list[Detection]
    ) -> tuple[list[tuple[Detection, Measurement]], int, tuple[float, float]]:
        """Reported lesions, measured on the source slices, best score first: detections at the
        threshold and the masses of the safety net (``masses``), one per lesion, in the lung
        (``lesions``); how many lesions were left out as outside the lung; and the volume of each
        lung examined."""
        threshold = self.detector.settings.report_threshold
        near = fuse_nested(near_lungs(grid, lungs, candidates, self.lung_margin_mm))
        measured_detections = []
        for detection in near:
            if detection.score < threshold:
                break
            measured = measure(volume, *source_box(volume, detection.lps_corners))
            if measured is not None:
                measured_detections.append((detection, measured))
        parenchyma_ = parenchyma(volume)
        found_masses, around = masses.find(volume, parenchyma_)
        kept, outside = reported(volume, parenchyma_, found_masses, near, measured_detections)
        return kept, outside, around.sides_ml

    def results(self, volume: Volume, nodules: list[tuple[Detection, Measurement]],
                box_regions: bool = False, examined: str = "", priors: Priors | None = None) -> list[Any]:
        """Every format a destination may ask for: the SEG (when there is something to segment,
        or empty_seg), the SR, the key images, the presentation state and their KOS.
        ``box_regions``: the segments are a bundle's boxes, named so; ``examined``: what the
        search covered; ``priors``: the earlier report each nodule is compared with."""
        datasets: list[Any] = []
        segmentation = None
        labels = _label_map(volume, nodules)
        locations = _locations(volume, [m for _, m in nodules])
        shown = [
            KeyFinding(_caption(n, detection, measured, location), (_segmented(labels, n, measured),))
            for n, ((detection, measured), location) in enumerate(zip(nodules, locations), start=1)
        ]
        history = _history(volume, nodules, shown, priors)
        names = tracking_ids(history, "nodule")
        if nodules or self.empty_seg:
            segmentation = self._segmentation(volume, labels, list(zip(names, history)), box_regions)
            datasets.append(segmentation)
        findings = [
            Finding(
                tracking_id=name,
                tracking_uid=None if prior is None or prior.prior is None else prior.prior.tracking_uid,
                prior=prior,
                structure=LUNG_NODULE,
                center_lps=measured.center_lps,
                diameter_mm=_rounded(measured.diameter_mm),
                volume_mm3=_rounded(measured.volume_mm3),
                mean_hu=_rounded(measured.mean_hu),
                score=round(detection.score, 3),
                segment_number=n,
                location=location,
                point_kji=key.center_point(volume.array.shape),
            )
            for n, ((detection, measured), location, key, prior, name)
            in enumerate(zip(nodules, locations, shown, history, names), start=1)
        ]
        coverage = contract.BUNDLE_COVERAGE if self.bundle is not None else f"{examined} {contract.COVERAGE}".strip()
        datasets.append(make_measurement_report(
            volume, findings, self.algorithm, self.identity,
            looked_for=LUNG_NODULE, segmentation=segmentation, procedure=CT_CHEST, coverage=coverage,
        ))
        page = Page(
            self.algorithm, "radnode nodule-detection",
            f"Lung nodules: {len(nodules) or 'none'} found",
            tuple(key.summary_line(volume) for key in shown)
            or (absence_statement(volume, LUNG_NODULE, coverage),),
            body_part="CHEST", window=LUNG_WINDOW,
        )
        datasets += make_key_images(volume, shown, page, self.identity)
        if shown:  # a presentation state shows outlines: with none it would show nothing
            datasets.append(make_presentation_state(volume, shown, page, self.identity))
        return with_key_objects(volume, datasets, self.algorithm, self.identity)

    def _segmentation(self, volume: Volume, labels: np.ndarray, tracked: list[tuple[str, PriorComparison | None]],
                      box_regions: bool) -> Any:
        """The SEG; ``tracked``: each nodule's tracking identifier and its prior, whose Tracking UID
        the segment keeps (the SR's group then has it too)."""
        kind = " (detection box)" if box_regions else ""
        count = len(tracked)
        segments = [
            Segment(LUNG_NODULE, name, label=f"Lung nodule {n}{kind}",
                    tracking_uid=None if prior is None or prior.prior is None else prior.prior.tracking_uid)
            for n, (name, prior) in enumerate(tracked, start=1)
        ] or [Segment(LUNG_NODULE, "no nodule detected", label="Lung nodule (none detected)")]
        return make_segmentation(
            volume, labels, segments, self.algorithm, self.identity,
            series_description=f"{self.algorithm.name}: {count} nodule(s)",
        )


def _history(volume: Volume, nodules: list[tuple[Detection, Measurement]], shown: list[KeyFinding],
             priors: Priors | None) -> list[PriorComparison | None]:
    """Each nodule's comparison with the earlier report, by the SR's Center point (the same point
    the earlier SR holds); None for each when priors were not asked for."""
    if priors is None:
        return [None] * len(nodules)
    centers = [as_point(volume.kji_to_lps(np.array(key.center_point(volume.array.shape)))) for key in shown]
    return list(match(centers, [_rounded(m.diameter_mm) for _, m in nodules],
                      [_rounded(m.volume_mm3) for _, m in nodules], priors, study_date(volume.sources[0])))


def _label_map(volume: Volume, nodules: list[tuple[Detection, Measurement]]) -> np.ndarray:
    """The SEG's labels: nodule n's voxels are n, where no better-scored nodule took them first."""
    labels = np.zeros(volume.array.shape, dtype=np.uint8 if len(nodules) < 255 else np.uint16)
    for number, (_, measured) in enumerate(nodules, start=1):
        region = labels[measured.window]
        region[measured.mask & (region == 0)] = number
    return labels


def _segmented(labels: np.ndarray, number: int, measured: Measurement) -> Region:
    """Nodule ``number`` as the SEG holds it, so that the key image, the presentation state and
    the SR's centre show the segment a viewer shows; its own mask when a better-scored nodule
    took every voxel of it."""
    mine = labels[measured.window] == number
    return Region(measured.window, mine if mine.any() else measured.mask, YELLOW)


def _locations(volume: Volume, measured: list[Measurement]) -> list[AnatomicLocation | None]:
    """Side and zone of each nodule, from the lungs of the source volume (found only when there
    is something to place); None for each when two lungs cannot be told apart."""
    lungs = lung_sides(volume) if measured else None
    return [None if lungs is None else lungs.locate(m.center_lps) for m in measured]


def _caption(number: int, detection: Detection, measured: Measurement, location: AnatomicLocation | None) -> str:
    """"Nodule 1: 12.4 mm, right lung, upper zone, score 0.93": a key image's label; a mass of the
    safety net says so, with its solid part: "Mass 1: 71.0 mm (solid 58.2 mm), ..., mass rule, score 0.12"."""
    where = f"{location.label}, " if location is not None else ""
    if detection.mass:
        solid = f" (solid {measured.solid_diameter_mm:.1f} mm)" if measured.solid_diameter_mm is not None else ""
        return f"Mass {number}: {measured.diameter_mm:.1f} mm{solid}, {where}mass rule, score {detection.score:.2f}"
    return f"Nodule {number}: {measured.diameter_mm:.1f} mm, {where}score {detection.score:.2f}"


def near_lungs(
    grid: ModelGrid, lungs: np.ndarray, candidates: list[Detection], margin_mm: float
) -> list[Detection]:
    """The candidates whose box centre is in the lungs or within ``margin_mm`` of them.

    A nodule is in the lung by definition; a box centred in the liver or the bowel is not one.
    """
    margin = np.maximum(np.round(margin_mm / grid.spacing).astype(int), 1)
    near = ndi.maximum_filter(lungs, size=tuple(2 * margin + 1))
    kept = []
    for detection in candidates:
        index = np.round(grid.lps_to_xyz(detection.center_lps)).astype(int)
        if np.all(index >= 0) and np.all(index < grid.hu.shape) and near[tuple(index)]:
            kept.append(detection)
    return kept


def fuse_nested(candidates: list[Detection]) -> list[Detection]:
    """One detection per lesion, best first: a box mostly inside a larger one scoring at least
    ``FUSE_SCORE_RATIO`` of it is folded in, and the larger takes the best score it holds.

    The detector boxes a mass both whole and in higher-scoring pieces, which NMS (by IoU) cannot
    merge; the score ratio keeps a faint box around the hilum from swallowing a nodule in it.
    """
    if len(candidates) < 2:
        return list(candidates)
    boxes = torch.as_tensor(np.stack([c.grid_box for c in candidates]), dtype=torch.float64)
    scores = np.array([c.score for c in candidates])
    area = box_area(boxes)
    iou = box_iou(boxes, boxes)
    # Intersection from IoU: I = IoU (A + B) / (1 + IoU); inside[r, c] is the part of box r in box c.
    inside = np.asarray(iou * (area[:, None] + area[None, :]) / (1.0 + iou) / area[:, None])
    area = np.asarray(area)
    holds = ((inside >= NESTED_FRACTION) & (area[None, :] > area[:, None])
             & (scores[None, :] >= FUSE_SCORE_RATIO * scores[:, None]))
    best = scores.copy()
    for piece in np.flatnonzero(holds.any(axis=1)):
        whole = int(piece)
        while holds[whole].any():  # up to the outermost box; each step is to a larger one
            whole = int(np.flatnonzero(holds[whole])[np.argmax(area[holds[whole]])])
        best[whole] = max(best[whole], scores[piece])
    kept = [dataclasses.replace(c, score=float(best[n])) for n, c in enumerate(candidates) if not holds[n].any()]
    return sorted(kept, key=lambda c: -c.score)


def examined(found: Search) -> str:
    """What a search covered, in a reader's words: the lungs it found and their volumes."""
    first, second = found.sides_ml
    if min(first, second) < MIN_SIDE_ML:
        return f"Examined: one lung only ({max(first, second):.0f} mL); the other is not in the series."
    return f"Examined: both lungs ({first:.0f} mL and {second:.0f} mL)."


def reported(
    volume: Volume, parenchyma_: Parenchyma, found_masses: list[masses.Mass], near: list[Detection],
    measured_detections: list[tuple[Detection, Measurement]],
) -> tuple[list[tuple[Detection, Measurement]], int]:
    """What a radiologist is sent from the measured detections at the threshold (``near``: every
    fused detection near the lungs, best first) and the masses of the safety net: one finding per
    lesion, in the lung, neither calcified nor bone, best score first; and how many lesions were
    left out as outside the lung. The FROC bench runs it too, at many thresholds (``bench/nodule_froc.py``)."""
    found = [pair for pair in measured_detections if not _in_surroundings(pair[1], found_masses)]
    found += [(_mass_detection(volume, m.measured, near), m.measured) for m in found_masses]
    found.sort(key=lambda pair: -pair[0].score)
    lesions = merge_touching(volume, found)
    return in_lung(parenchyma_, not_skeletal(volume, not_calcified(lesions))) if lesions else ([], 0)


def _in_surroundings(measured: Measurement, found_masses: list[masses.Mass]) -> bool:
    """Whether ``measured`` lies in a mass's ground glass without touching the mass as measured:
    a spicule or vessel of the mass, folded into it (``masses.Segment``)."""
    return any(touch(m.surroundings, measured) and not touch(m.measured, measured) for m in found_masses)


def _mass_detection(volume: Volume, measured: Measurement, scored: list[Detection]) -> Detection:
    """A mass of the safety net as a detection: the box of its segmentation, and the best score
    the detector gave a box centred in it (0 when none was)."""
    start = np.array([s.start for s in measured.window])
    voxels = np.argwhere(measured.mask) + start
    low, high = voxels.min(axis=0) - 0.5, voxels.max(axis=0) + 0.5
    corners = volume.kji_to_lps(np.array([[k, j, i] for k in (low[0], high[0]) for j in (low[1], high[1])
                                          for i in (low[2], high[2])]))
    lps_low, lps_high = corners.min(axis=0), corners.max(axis=0)
    inside = [d.score for d in scored if np.all(d.center_lps >= lps_low) and np.all(d.center_lps <= lps_high)]
    # grid_box as LPS low, high, as for a bundle's box: nothing after detection reads it as grid indices
    return Detection(np.concatenate([lps_low, lps_high]), corners, max(inside, default=0.0), mass=True)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _box_detection(box: Any) -> Detection:
    """A bundle box in the shape radnode's writers take (corners in LPS; grid_box = LPS low, high)."""
    corners = np.array([[x, y, z] for x in (box.low_lps[0], box.high_lps[0])
                        for y in (box.low_lps[1], box.high_lps[1]) for z in (box.low_lps[2], box.high_lps[2])])
    return Detection(np.concatenate([box.low_lps, box.high_lps]), corners, box.score)


def _box_measurement(volume: Volume, box: Any, window: tuple[slice, slice, slice], mask: np.ndarray) -> Measurement:
    """What the SR says of a bundle box: its centre and its longest in-plane side as long axis.

    No volume or mean HU: the segment is the box, not the nodule.
    """
    return Measurement(
        window=window, mask=mask, diameter_mm=float(max(box.size_mm[0], box.size_mm[1])),
        volume_mm3=None, mean_hu=None, center_lps=as_point(box.center_lps),
    )


def _validated_slices(volume: Volume, max_slice_mm: float) -> None:
    """Not applicable on slices thicker, or farther apart, than the detector was validated on:
    there "none detected" would be a claim nobody measured."""
    slices_mm = volume.slice_mm
    if slices_mm > max_slice_mm + 0.01:
        raise NotApplicable(
            f"slices of {slices_mm:g} mm: nodule detection is validated on slices of at most {max_slice_mm:g} mm "
            "(options.max_slice_mm); send a thinner reconstruction of the scan"
        )


def _ct_volume(paths: list[Path], min_extent_mm: float) -> Volume:
    volume = scanner_ct_volume(paths, "nodule-detection")
    extent = volume.array.shape[0] * volume.spacing[2]
    if extent < min_extent_mm:
        raise NotApplicable(
            f"the series covers {extent:.0f} mm across its {volume.array.shape[0]} slices; a chest CT "
            f"for nodule detection covers at least {min_extent_mm:.0f} mm"
        )
    return volume
