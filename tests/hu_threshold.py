"""A small pipeline of the tests' own: voxels above a HU threshold, written as a DICOM SEG.

It exercises routing, workers and delivery end to end without a model. Options let tests make
it slow (job timeouts) or fail (failure reasons); node/ knows nothing about it: config.toml
names it with ``entry = "tests.hu_threshold:HUThreshold"`` like any site pipeline.
"""

from __future__ import annotations

import time

from pydicom.sr.codedict import codes

from pipelines.base import JobInput, JobResult, NotApplicable, Pipeline, SERIES_ROLE
from pipelines.volume import VolumeError, load_series
from pipelines.writers.codes import Structure
from pipelines.writers.identity import Algorithm, Identity
from pipelines.writers.output import write_datasets
from pipelines.writers.seg import Segment, make_segmentation

DENSE = Structure("Dense tissue", codes.SCT.Tissue, codes.SCT.Bone)


class HUThreshold(Pipeline):
    def run(self, job: JobInput) -> JobResult:
        options = self.settings.options
        time.sleep(float(options.get("sleep_seconds", 0)))
        if options.get("fail"):
            raise RuntimeError("the test pipeline was told to fail")
        try:
            volume = load_series(job.series[SERIES_ROLE], min_slices=1)
        except VolumeError as error:
            raise NotApplicable(str(error)) from None
        mask = volume.array > float(options.get("threshold_hu", 300))
        seg = make_segmentation(
            volume, mask, [Segment(DENSE, tracking_id="dense-1")],
            Algorithm("radnode-test-threshold", "1"), Identity(self.settings.uid_root),
        )
        return JobResult(outputs=write_datasets([seg], job.output_dir),
                         summary={"voxels": int(mask.sum())})
