"""Synthetic T1c-bright normal structures (``normal_structures``), the negatives of training.

On a phantom brain (uniform tissue around CSF-filled ventricles) with a labelled tumor and a
keep-out region: what is painted must look like enhancing normal tissue (bright on T1c, not
bright on FLAIR, the case a T1c-only network confuses with tumor core), and must leave the
labels, the tumor, the keep-out region and everything outside the brain untouched.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from training.tumor.fit import thick_slices
from training.tumor.normal_structures import MARGIN_MM, find_anatomy, paint_normal_structures

SPACING = (2.0, 2.0, 2.0)
#: Median brain intensity of each phantom contrast (arbitrary scanner units).
TISSUE = {"t1c": 1000.0, "t1": 800.0, "t2": 500.0, "flair": 900.0}
#: CSF relative to tissue: dark on T1 and FLAIR, bright on T2.
CSF = {"t1c": 0.3, "t1": 0.3, "t2": 3.0, "flair": 0.3}


def _ball(shape: tuple[int, ...], centre: tuple[float, ...], radius_vox: float) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius_vox**2


def _phantom() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Contrasts, brain mask, labels (a tumor on the left) and a keep-out region (on the right)."""
    shape = (48, 64, 64)
    brain = _ball(shape, (24, 32, 32), 22)
    ventricles = _ball(shape, (24, 32, 32), 4)
    rng = np.random.default_rng(1)
    images = {}
    for role, level in TISSUE.items():
        image = level * (1.0 + 0.02 * rng.standard_normal(shape))
        image[ventricles] = level * CSF[role]
        images[role] = (image * brain).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[_ball(shape, (24, 32, 16), 6)] = 2
    labels[_ball(shape, (24, 32, 16), 3)] = 4
    keep_out = _ball(shape, (24, 32, 48), 6)
    return images, brain, labels, keep_out


def test_normal_structures_are_t1c_bright_not_flair_bright_and_leave_labels_alone():
    images, brain, labels, keep_out = _phantom()
    before = {role: image.copy() for role, image in images.items()}
    labels_before = labels.copy()
    anatomy = find_anatomy(images, brain, SPACING)
    assert len(anatomy.ventricles) > 0  # the phantom's CSF is found as ventricles

    kinds = paint_normal_structures(images, labels, anatomy, np.random.default_rng(0), 40, keep_out=keep_out)

    assert set(kinds) == {"vessel", "choroid", "dura"}
    np.testing.assert_array_equal(labels, labels_before)
    changed = np.any([images[role] != before[role] for role in images], axis=0)
    assert changed.sum() > 200
    protected_mm = ndimage.distance_transform_edt(~((labels > 0) | keep_out), sampling=SPACING)
    assert not (changed & (protected_mm < MARGIN_MM)).any(), "a structure reached a tumor or the keep-out region"
    assert not (changed & ~brain).any(), "a structure was painted outside the brain"

    structure = (images["t1c"] - before["t1c"]) > 0.5 * TISSUE["t1c"]  # well inside a structure
    assert structure.sum() > 50
    t1c = images["t1c"][structure] / TISSUE["t1c"]
    flair = images["flair"][structure] / TISSUE["flair"]
    assert np.median(t1c) >= 1.6, "normal structures must be as bright on T1c as an enhancing rim"
    assert np.median(flair) <= 1.1 and np.percentile(flair, 99) <= 1.35, "and not bright on FLAIR (no edema)"


def test_thick_slice_augmentation_keeps_uniform_tissue_and_blurs_an_edge_over_the_slice_thickness():
    """A 5.5 mm series reaches the 2 mm grid blurred through-plane only: uniform tissue keeps its
    value, an axial edge spreads over about one slice thickness, and nothing moves in-plane."""
    uniform = torch.full((2, 64, 3, 3), 1.7)
    assert torch.allclose(thick_slices(uniform, 5.5, 0.3), uniform, atol=1e-5)
    edge = torch.zeros((1, 64, 3, 3))
    edge[:, 32:] = 1.0
    profile = thick_slices(edge, 5.5, 0.0)[0, :, 1, 1]
    ramp = ((profile > 0.05) & (profile < 0.95)).sum().item() * 2.0  # mm of the 2 mm grid
    assert 6.0 <= ramp <= 16.0, f"edge spread over {ramp} mm for 5.5 mm slices"  # measured 12 mm (5-95 %)
    assert profile[:24].abs().max() < 0.01 and (profile[40:] - 1).abs().max() < 0.01
    # in-plane untouched: every in-plane position gets the same profile (to float rounding, 1.2e-7
    # on an AMD EPYC whose vector lanes round differently by position; bit-equal on Intel)
    assert torch.allclose(thick_slices(edge, 5.5, 0.0)[0, :, 0, 0], profile, rtol=0.0, atol=1e-6)
