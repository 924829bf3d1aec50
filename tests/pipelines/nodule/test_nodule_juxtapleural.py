"""A small solid nodule on the pleura gets a candidate and is reported (issue 64 item 4).

Juxtapleural nodules are the candidate stage's weak spot: of those the FROC bench inserts (all
sizes and kinds) 28 % get a candidate, against 59-73 % elsewhere; a hemisphere on a wall of its own
density answers the LoG weakly and can fail its blobness test (training/nodule/LOG.md,
"Juxtapleural candidates", where a source from the pleura's notches was tried and rejected). This
holds what works today: one 8 mm solid nodule inserted against the left anterior pleura of
lidc-idri-0001 (as acquired) is boxed by a blob, scored above the threshold and reported once.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipelines.base import PipelineSettings
from pipelines.nodule import candidates
from pipelines.nodule.candidate_detector import DEFAULT_SCORER_DIR, CandidateDetector, corners_lps
from pipelines.nodule.detector import Detection
from pipelines.nodule.harmonize import harmonize
from pipelines.nodule.pipeline import NoduleDetection
from training.nodule import evaluate, patients, sites, synthesis

LIDC = "ct-chest/lidc-idri-0001/ct"
NODULE_MM = 8.0
#: The seed of ``synthesis.pick_center`` that puts the nodule on the left anterior pleura.
SEED = 1


@pytest.fixture(scope="module")
def juxtapleural(data_dir):
    """lidc-idri-0001 as acquired with the nodule inserted, and the nodule's LPS box."""
    volume = patients.load(data_dir, "lidc-idri-0001", LIDC).volume
    lungs = sites.lungs_of(volume)
    spacing = np.asarray(volume.spacing[::-1])
    rng = np.random.default_rng(SEED)
    spec = synthesis.NoduleSpec(NODULE_MM, kind="solid", solid_hu=30.0, attachment="pleura")
    centre = synthesis.pick_center(lungs, spacing, spec, rng, depth_mm=ndi.distance_transform_edt(lungs, sampling=spacing))
    array = volume.array.copy()
    inserted = synthesis.insert(array, spacing, centre, spec, rng)
    corners = volume.kji_to_lps(np.array([[k, j, i] for k in inserted.box[0::3] for j in inserted.box[1::3]
                                          for i in inserted.box[2::3]]))
    box = np.array([corners.min(axis=0), corners.max(axis=0)])
    return dataclasses.replace(volume, array=array), box


@pytest.mark.slow
def test_an_8_mm_solid_nodule_on_the_pleura_gets_a_candidate_and_is_reported_once_at_its_size(juxtapleural):
    volume, box = juxtapleural
    detector = CandidateDetector.load(DEFAULT_SCORER_DIR, "cpu")
    grid = detector.grid(harmonize(volume).volume)
    scan = candidates.find_on_grid(grid)
    on = [c for c in scan.candidates if evaluate.hits(Detection(c.box, corners_lps(scan, c), 0.0), box)]
    assert on, "no candidate on the nodule"
    pipeline = NoduleDetection(PipelineSettings(name="nodule-detection", device="cpu", model=str(DEFAULT_SCORER_DIR)))
    found = [(d.score, m.diameter_mm) for d, m in pipeline.search(volume).nodules if evaluate.hits(d, box)]
    # Measured: one finding, score 0.95 against the shipped threshold 0.726, long axis 8.3 mm.
    assert len(found) == 1, f"findings on the nodule: {found}"
    assert abs(found[0][1] - NODULE_MM) <= 2.0, f"the nodule measures {found[0][1]:.1f} mm"
