"""A small pipeline of the tests' own: voxels above a HU threshold, written as a DICOM SEG.

It exercises routing, workers and delivery end to end without a model. Options let tests make
it slow (job timeouts), pause between writing its results and handing them to the worker (a
kill -9 at the result commit) or fail (failure reasons) or add a TID 1500 report of the dense volume
(``report = true``, for tests of superseded reports); node/ knows nothing about it: config.toml
names it with ``entry = "tests.support.hu_threshold:HUThreshold"`` like any site pipeline.
``StudyThreshold`` is the same for the tests' study routes: it declares their input roles.
"""

from __future__ import annotations

import time

import numpy as np
from pydicom.sr.codedict import codes

from pipelines.base import SERIES_ROLE, InputSpec, JobInput, JobResult, NotApplicable, Pipeline, PipelineOptions, PipelineSettings
from pipelines.model_folder import folder_digest
from pipelines.timing import StageClock
from pipelines.volume import VolumeError, load_series
from pipelines.writers.codes import Structure
from pipelines.writers.identity import Algorithm, identity_of
from pipelines.writers.output import write_datasets
from pipelines.writers.seg import Segment, make_segmentation
from pipelines.writers.sr import Finding, make_measurement_report

#: The algorithm identification its SEG carries, also named in the job summary (the web page's "model").
ALGORITHM, VERSION = "radnode-test-threshold", "1"
DENSE = Structure("Dense tissue", codes.SCT.Tissue, codes.SCT.Bone)


class ThresholdOptions(PipelineOptions):
    sleep_seconds: float = 0.0
    fail: bool = False
    threshold_hu: float = 300.0
    report: bool = False
    sleep_after_write_seconds: float = 0.0  # results on disk, job not yet done: kill -9 trials
    load_seconds: float = 0.0  # a slow model load (a large network): job timeouts count from after it


class HUThreshold(Pipeline):
    Options = ThresholdOptions
    options: ThresholdOptions

    def __init__(self, settings: PipelineSettings) -> None:
        super().__init__(settings)
        time.sleep(self.options.load_seconds)

    def run(self, job: JobInput) -> JobResult:
        options = self.options
        time.sleep(options.sleep_seconds)
        if options.fail:
            raise RuntimeError("the test pipeline was told to fail")
        clock = StageClock()
        try:
            # a study route's job has one series per role: the first role's series is thresholded
            volume = load_series(job.series.get(SERIES_ROLE) or next(iter(job.series.values())), min_slices=1)
        except VolumeError as error:
            raise NotApplicable(str(error)) from None
        clock.lap("load")
        mask = volume.array > options.threshold_hu
        clock.lap("threshold")
        algorithm, identity = Algorithm(ALGORITHM, VERSION), identity_of(self.settings)
        seg = make_segmentation(volume, mask, [Segment(DENSE, tracking_id="dense-1")], algorithm, identity)
        datasets = [seg]
        if options.report:
            volume_mm3 = float(mask.sum() * np.prod(volume.spacing))
            datasets.append(make_measurement_report(
                volume, [Finding("dense-1", DENSE, volume_mm3=volume_mm3, segment_number=1)], algorithm,
                identity, looked_for=DENSE, segmentation=seg))
        outputs = write_datasets(datasets, job.output_dir)
        clock.lap("write")
        time.sleep(options.sleep_after_write_seconds)  # results on disk, not committed
        summary = {"voxels": int(mask.sum()), "model": ALGORITHM, "model_version": VERSION, "seconds": clock.laps}
        if self.settings.model is not None:  # a model folder named in config.toml: its digest, as real pipelines give
            summary["model_sha256"] = folder_digest(self.settings.model)
        return JobResult.written(outputs, summary=summary)


class StudyThreshold(HUThreshold):
    """For study routes: the roles of the tests' brain MR (``tests.support.mr_dicom``) and CT kernel studies."""

    inputs = tuple(InputSpec(role, required=False) for role in ("t1c", "flair", "t2", "t1", "soft", "sharp"))
