"""``nnunet-segmentation``: a series or study through a site's nnU-Net v2 folder; SEG, SR, key images.

Steps, each timed in the job summary: load the series of each ``options.channels`` role (the first
is the reference; another grid of its frame of reference is resampled onto it, linear, as nnU-Net
wants one grid; another frame of reference is not applicable: neither registers); inference with
nnU-Net's own predictor (``runner``); writing one SEG segment and SR group per ``dataset.json``
label (a region-based label as the exported voxels making it up), summary, key images and a
presentation state. The model is required: ``radnode serve`` loads it before it listens, so a
channel without a role or a missing fold stops the start with the key named.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import SimpleITK as sitk
from pydicom import Dataset
from pydicom.sr.coding import Code

from pipelines.base import InputSpec, JobInput, JobResult, NotApplicable, PipelineSettings
from pipelines.model_pipeline import ModelPipeline
from pipelines.nnunet import contract
from pipelines.nnunet.contract import NnUNetSummary
from pipelines.nnunet.folder import Label, NnUNetFolder
from pipelines.nnunet.runner import NnUNetRunner
from pipelines.timing import StageClock
from pipelines.volume import Volume, VolumeError, load_series
from pipelines.writers.codes import Structure
from pipelines.writers.identity import MANUFACTURER, Algorithm
from pipelines.writers.key_images import CYAN, GREEN, MEDIASTINAL_WINDOW, RED, YELLOW, KeyFinding, Page, Region, make_key_images
from pipelines.writers.key_objects import with_key_objects
from pipelines.writers.output import write_datasets
from pipelines.writers.presentation_state import make_presentation_state
from pipelines.writers.seg import Segment, make_segmentation
from pipelines.writers.sr import Finding, absence_statement, make_measurement_report

NAME = "nnunet-segmentation"
#: Outline colours of the labels on key images, in label order (repeating after four).
PALETTE = (YELLOW, RED, GREEN, CYAN)
#: What a report without findings says was looked for: any of the folder's labels.
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
ANY_FINDING = Structure("Segmented structure", ANATOMICAL_STRUCTURE, ANATOMICAL_STRUCTURE)


class NnUNetSegmentation(ModelPipeline):
    """A site's nnU-Net v2 results folder, run by nnunetv2 itself."""

    name: ClassVar[str] = NAME
    Options = contract.Options
    options: contract.Options

    def __init__(self, settings: PipelineSettings) -> None:
        super().__init__(settings)  # no shipped model: ``model`` is required
        self.folder = NnUNetFolder.read(self.model_dir, self.options)
        self.runner = NnUNetRunner(self.folder, self.options, self.device)
        self.algorithm = Algorithm(self.model_dir.name, f"model sha256 {self.model_digest[:16]}", parameters=(
            ("nnU-Net folds", ", ".join(map(str, self.folder.folds))),
            ("channels", ", ".join(f"{name} <- {role}" for name, role in zip(self.folder.channel_names, self.folder.roles))),
        ))

    def input_specs(self) -> tuple[InputSpec, ...]:
        return contract.inputs_for(self.options)

    def run(self, job: JobInput) -> JobResult:
        clock = StageClock()
        volumes = [_volume(job, role, name) for role, name in zip(self.folder.roles, self.folder.channel_names)]
        reference = volumes[0]
        images = [_on_grid(volume, reference, name) for volume, name in zip(volumes, self.folder.channel_names)]
        clock.lap("load")
        exported = self.runner.segment(images)
        labels = sitk.GetArrayFromImage(sitk.Resample(exported, images[0], sitk.Transform(),
                                                      sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16))
        clock.lap("inference")
        masks = {label.name: np.isin(labels, label.values) for label in self.folder.labels}
        voxel_ml = float(np.prod(reference.spacing)) / 1000.0
        volumes_ml = {name: round(float(mask.sum()) * voxel_ml, 2) for name, mask in masks.items()}
        outputs = write_datasets(self._results(reference, masks, volumes_ml), job.output_dir)
        clock.lap("writing")
        return JobResult.written(outputs, summary=NnUNetSummary(
            folds=[str(f) for f in self.folder.folds],
            channels=dict(zip(self.folder.channel_names, self.folder.roles)),
            volumes_ml=volumes_ml,
            model=self.model_dir.name,
            device=self.device,
            model_sha256=self.model_digest,
            seconds=clock.laps,
        ))

    def _results(self, reference: Volume, masks: dict[str, np.ndarray], volumes_ml: dict[str, float]) -> list[Dataset]:
        """SEG + SR (+ presentation state) when something was found, the SR alone otherwise; key images."""
        found = [label for label in self.folder.labels if volumes_ml[label.name] > 0]
        shown = [_key_finding(label, masks[label.name], volumes_ml[label.name], n) for n, label in enumerate(found)]
        page = Page(self.algorithm, f"radnode {NAME}", f"{self.model_dir.name}: {len(found) or 'nothing'} found",
                    tuple(finding.summary_line(reference) for finding in shown)
                    or (absence_statement(reference, ANY_FINDING, ""),),
                    body_part=str(reference.sources[0].get("BodyPartExamined") or "") or "OTHER",
                    window=MEDIASTINAL_WINDOW if reference.modality == "CT" else None)
        pictures: list[Dataset] = [*make_key_images(reference, shown, page, self.identity)]
        if not found:
            return with_key_objects(reference, [make_measurement_report(
                reference, [], self.algorithm, self.identity, looked_for=ANY_FINDING), *pictures], self.algorithm,
                self.identity)
        stacked = np.stack([masks[label.name] for label in self.folder.labels], axis=-1)
        seg = make_segmentation(reference, stacked, [Segment(label.structure, label.name) for label in self.folder.labels],
                                self.algorithm, self.identity, series_description=f"{self.model_dir.name} (nnU-Net)"[:64],
                                keep_empty_frames=len(found) < len(self.folder.labels))
        findings = [Finding(label.name, label.structure, volume_ml=volumes_ml[label.name], segment_number=number)
                    for number, label in enumerate(self.folder.labels, start=1)]
        report = make_measurement_report(reference, findings, self.algorithm, self.identity,
                                         looked_for=ANY_FINDING, segmentation=seg)
        return with_key_objects(reference, [seg, report, *pictures, make_presentation_state(reference, shown, page,
                                                                                            self.identity)],
                                self.algorithm, self.identity)


def _volume(job: JobInput, role: str, channel: str) -> Volume:
    """The series of ``role`` as a volume a scanner made, or NotApplicable saying what is wrong."""
    paths: Sequence[Path] = list(job.series.get(role, ()))
    if not paths:
        raise NotApplicable(f"no series for role {role!r}, which feeds nnU-Net channel {channel!r}")
    try:
        volume = load_series(paths)
    except VolumeError as error:
        raise NotApplicable(f"the {role} series is not a volume {NAME} can analyse: {error}") from error
    if str(volume.sources[0].get("Manufacturer", "")) == MANUFACTURER:
        raise NotApplicable(f"the {role} series was made by radnode, not by a scanner")
    return volume


def _on_grid(volume: Volume, reference: Volume, channel: str) -> sitk.Image:
    """``volume`` as an image on the reference's grid: itself when it shares it, else resampled
    (linear) within their common frame of reference."""
    image = volume.to_sitk()
    if volume is reference or reference.shares_grid(volume):
        grid = reference.to_sitk()
        image.CopyInformation(grid)  # the same grid to DICOM's precision: nnU-Net wants it exact
        return image
    if volume.frame_of_reference_uid is None or volume.frame_of_reference_uid != reference.frame_of_reference_uid:
        raise NotApplicable(f"the series of channel {channel!r} is in another frame of reference than the first "
                            "channel's: nnU-Net takes co-registered channels, and radnode does not register them")
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), reference.to_sitk(), sitk.Transform(),
                         sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _key_finding(label: Label, mask: np.ndarray, volume_ml: float, number: int) -> KeyFinding:
    whole = (slice(0, mask.shape[0]), slice(0, mask.shape[1]), slice(0, mask.shape[2]))
    return KeyFinding(f"{label.name}: {volume_ml:.1f} mL", (Region(whole, mask, PALETTE[number % len(PALETTE)]),))
