"""Training on clinical tumor-core masks: what a core-only mask teaches, and the geometry it is put on.

The clinical T1c scans (``training.tumor.clinical_t1c``) carry a mask of the tumor core
only and headers whose spacing is not the real one. The loss must learn nothing about edema or
enhancement where such a mask is silent; folds must keep a patient's scans together; and the
recovered geometry must make the held-out scans adult heads with adult brains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pipelines.tumor.brain_extraction import extract_brain
from training.tumor import fit
from training.tumor.clinical_eval import at_floor, score
from training.tumor.clinical_t1c import (
    HEAD_BREADTH_MM,
    SLICE_SPACING_MM,
    ClinicalScan,
    folds,
    head_breadth_px,
    heldout_scans,
    load_scan,
)
from training.tumor.healthy import mirrored_healthy
from training.tumor.loss import loss_fn
from training.tumor.prepare import CLINICAL_MARGIN_MM

TC, WT, ET = 0, 1, 2


def _core_only_weights(core: torch.Tensor) -> torch.Tensor:
    """What ``prepare`` writes for a core mask: core known everywhere, WT inside it, ET outside it."""
    return torch.stack([torch.ones_like(core), core, 1.0 - core])[None]


def test_a_core_only_mask_teaches_nothing_about_edema_outside_the_core_or_enhancement_inside_it() -> None:
    torch.manual_seed(0)
    core = torch.zeros((8, 8, 8))
    core[2:5, 2:5, 2:5] = 1.0
    target = torch.stack([core, core, torch.zeros_like(core)])[None]
    logits = torch.randn((1, 3, 8, 8, 8), requires_grad=True)
    loss_fn(logits, target, _core_only_weights(core)).backward()
    grad = logits.grad
    assert grad is not None
    inside, outside = core > 0, core == 0
    assert float(grad[0, WT][outside].abs().max()) == 0.0, "whole tumor was pushed outside the core"
    assert float(grad[0, ET][inside].abs().max()) == 0.0, "enhancing tumor was pushed inside the core"
    assert float(grad[0, TC][outside].abs().min()) > 0.0 and float(grad[0, TC][inside].abs().min()) > 0.0
    assert float(grad[0, WT][inside].abs().min()) > 0.0 and float(grad[0, ET][outside].abs().min()) > 0.0


def test_one_weight_map_for_every_region_gives_the_loss_it_gave_before_regions_had_their_own() -> None:
    torch.manual_seed(1)
    target = (torch.rand((2, 3, 6, 6, 6)) > 0.7).float()
    logits = torch.randn((2, 3, 6, 6, 6))
    weight = (torch.rand((2, 6, 6, 6)) > 0.2).float()
    shared = loss_fn(logits, target, weight)
    per_region = loss_fn(logits, target, weight[:, None].expand(-1, 3, -1, -1, -1))
    assert torch.allclose(shared, per_region)


def test_a_prepared_clinical_brain_is_thick_and_weighs_each_region_where_its_mask_speaks(tmp_path: Path) -> None:
    shape = (24, 24, 24)
    core = np.zeros(shape, bool)
    core[10:14, 10:14, 10:14] = True
    np.savez_compressed(tmp_path / "clinical_case.npz", t1c=np.zeros(shape, np.float16),
                        flair=np.zeros(shape, np.float16), brain=np.ones(shape, np.uint8),
                        labels=core.astype(np.uint8), ignore=np.zeros(shape, np.uint8),
                        supervised=np.stack([np.ones(shape, bool), core, ~core]).astype(np.uint8),
                        slice_mm=np.float32(6.0))
    brain = fit.load_brain(fit.npz_path(tmp_path, "clinical_case"), 24, "cpu")
    assert not brain.thin, "6 mm slices must not be made thicker"
    assert float(brain.weight[WT][torch.from_numpy(~core)].max()) == 0.0
    assert float(brain.weight[ET][torch.from_numpy(core)].max()) == 0.0
    assert float(brain.weight[TC].min()) == 1.0


def _brain(name: str, fully_labelled: bool) -> fit.Brain:
    empty = torch.zeros((1,))
    return fit.Brain(name, empty, empty, empty, empty, empty, empty, False, fully_labelled)


def test_a_fully_labelled_share_draws_the_brats_brains_that_often_and_no_share_replays_the_old_stream() -> None:
    """4 BraTS brains among 25 labelled ones: drawn in proportion they teach enhancement inside the
    core in 16 % of labelled draws; the share makes it half of them."""
    labelled = [_brain(f"clinical_{i}", False) for i in range(21)] + [_brain(f"pat{i}", True) for i in range(4)]
    generator = torch.Generator().manual_seed(0)
    draws = [fit.labelled_pool(labelled, generator, 0.5) for _ in range(4000)]
    share = sum(pool[0].fully_labelled for pool in draws) / len(draws)
    assert 0.47 < share < 0.53, f"fully labelled share {share:.3f}"
    assert all(len({b.fully_labelled for b in pool}) == 1 for pool in draws)
    untouched = torch.Generator().manual_seed(0)
    assert fit.labelled_pool(labelled, untouched, None) is labelled
    assert torch.equal(untouched.get_state(), torch.Generator().manual_seed(0).get_state()), \
        "without the option no random number may be drawn"


def test_a_clinical_volumes_tumor_free_half_is_mirrored_only_when_its_core_keeps_the_wider_margin() -> None:
    """A core-only mask says nothing of the edema around the core: a half 10 mm from the core is
    tumor-free by the BraTS cases' 5 mm, not by the clinical volumes' margin."""
    head = np.zeros((6, 40, 60), np.float32)
    head[:, 5:35, 5:55] = np.arange(1, 51, dtype=np.float32)  # left-right ramp: the mirror is visible
    core = np.zeros(head.shape, np.uint8)
    core[2:4, 18:22, 38:42] = 1  # 8 mm right of the middle (column 30), 1 mm pixels
    image, mask = sitk.GetImageFromArray(head), sitk.GetImageFromArray(core)
    mirrored = mirrored_healthy({"t1c": image}, mask, margin_mm=5.0)
    assert mirrored is not None
    result = sitk.GetArrayFromImage(mirrored["t1c"])
    np.testing.assert_array_equal(result[:, :, 30:55], result[:, :, 29:4:-1])  # the left half, mirrored
    assert mirrored_healthy({"t1c": image}, mask, margin_mm=CLINICAL_MARGIN_MM) is None


def test_a_size_floor_drops_the_small_false_lesion_and_keeps_the_small_real_one_and_its_dice() -> None:
    """0.008 mL voxels: a 0.5 mL lesion found by a 0.4 mL component, a false 0.2 mL one, a 1 mL miss."""
    reference = np.zeros((20, 20, 20), bool)
    labels = np.zeros((20, 20, 20), np.uint8)
    reference[2:6, 2:6, 2:6] = True            # 64 voxels, 0.512 mL
    labels[2:6, 2:6, 2:5] = 4                  # 48 voxels on it, 0.384 mL
    labels[10:13, 10:13, 10:13] = 4            # 27 voxels, 0.216 mL, on nothing
    reference[14:19, 14:19, 14:19] = True      # 125 voxels, 1.0 mL, missed
    scored = score(labels, reference, 0.008)
    assert at_floor(scored, 0.1) == {"tc_dice": round(2 * 0.384 / (0.384 + 0.216 + 1.512), 4), "lesions_1ml": 1,
                                     "found_1ml": 0, "lesions": 2, "found": 1, "false_lesions": 1}
    assert at_floor(scored, 0.3) == {"tc_dice": round(2 * 0.384 / (0.384 + 1.512), 4), "lesions_1ml": 1,
                                     "found_1ml": 0, "lesions": 2, "found": 1, "false_lesions": 0}
    assert at_floor(scored, 1.0)["found"] == 0


def test_folds_keep_a_patients_scans_before_and_after_treatment_together() -> None:
    scans = [ClinicalScan(f"p{n:02d}-{when}", f"p{n:02d}", Path("scan"), Path("mask"))
             for n in range(21) for when in ("pre", "post")]
    split = folds(scans)
    assert sorted(p for fold in split for p in fold) == sorted({s.patient for s in scans})
    assert [len(fold) for fold in split] == [7, 7, 7]


@pytest.mark.slow
def test_the_recovered_geometry_makes_every_held_out_scan_an_adult_head_with_an_adult_brain(data_dir: Path) -> None:
    """Brains of 800-1,900 mL (two scans cover only part of the head) from a breadth of 169 mm and 6 mm slices."""
    measured = {}
    for scan in heldout_scans(data_dir):
        image, mask = load_scan(scan)
        pixels = sitk.GetArrayFromImage(image)
        assert pixels.reshape(len(pixels), -1).any(axis=1).all(), f"{scan.name}: a blank slice was kept"
        assert image.GetSpacing()[2] == SLICE_SPACING_MM
        breadth = head_breadth_px(pixels) * image.GetSpacing()[0]
        assert abs(breadth - HEAD_BREADTH_MM) < 1.0
        brain_ml = float((sitk.GetArrayFromImage(extract_brain(image)) >= 0.5).sum()) * float(np.prod(image.GetSpacing())) / 1000
        measured[scan.name] = round(brain_ml)
        assert sitk.GetArrayFromImage(mask).sum() > 0
    assert all(800 <= ml <= 1900 for ml in measured.values()), f"brain volumes (mL): {measured}"
