"""No tumor along the dura (issue #65: on TCGA-FG-6692 a 6.8 mL "tumor" along the right transverse
sinus and 6.5 mL of "edema" beside the falx): a thin, long lesion at the brain's surface or midline
goes; a mass there, and a thin lesion deep in the brain, stay."""

from __future__ import annotations

import numpy as np

from pipelines.tumor.brain_mask import BrainMask
from pipelines.tumor.dura import clear_dura

SPACING = (2.0, 2.0, 2.0)


def _brain() -> np.ndarray:
    """A 2 mm ellipsoid brain, 112 x 152 x 128 mm, its midline at column 32."""
    z, y, x = np.ogrid[:60, :80, :70]
    return np.asarray(((z - 30) / 28) ** 2 + ((y - 40) / 38) ** 2 + ((x - 32) / 32) ** 2 <= 1)


def test_a_sheet_along_the_falx_goes_and_a_mass_beside_it_stays():
    brain = _brain()
    labels = np.zeros(brain.shape, dtype=np.uint8)
    labels[20:40, 20:60, 31:33] = 2          # 4 mm thick, 80 x 40 mm: edema "along the falx", 6.4 mL
    labels[22:30, 30:38, 10:18] = 4          # a 16 mm enhancing mass 30 mm off the midline, 4.1 mL
    kept = clear_dura(labels, BrainMask(brain, SPACING))
    assert not kept[:, :, 31:33].any()
    assert (kept[22:30, 30:38, 10:18] == 4).all()


def test_a_vein_along_the_surface_goes_but_a_nodule_at_the_surface_stays():
    brain = _brain()
    labels = np.zeros(brain.shape, dtype=np.uint8)
    labels[18:42, 38:41, 2:5] = 4       # 6 mm across, 48 mm long, on the right convexity: a vein, 1.7 mL
    labels[26:33, 2:9, 28:35] = 4       # a 14 mm nodule at the frontal pole's surface, 2.7 mL
    labels[~brain] = 0
    kept = clear_dura(labels, BrainMask(brain, SPACING))
    assert not kept[18:42, 38:41, 2:5].any()
    assert (kept[26:33, 2:9, 28:35] == labels[26:33, 2:9, 28:35]).all() and kept[26:33, 2:9, 28:35].any()


def test_a_thin_lesion_deep_in_the_brain_is_not_dura():
    brain = _brain()
    labels = np.zeros(brain.shape, dtype=np.uint8)
    labels[26:34, 25:55, 16:18] = 2          # a 4 mm sheet 30 mm off the midline, 40 mm deep
    assert (clear_dura(labels, BrainMask(brain, SPACING)) == labels).all()
