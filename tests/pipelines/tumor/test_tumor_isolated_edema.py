"""No "edema" far from every tumor (issue #65: on TCGA-FG-6692 a 1.89 mL edema-only region 59 mm
from the tumor): an edema-only lesion more than 10 mm from every lesion with a core is not reported
and its volume is listed; edema split off near the tumor, and an all-edema tumor with no core
anywhere, stay."""

from __future__ import annotations

import numpy as np

from pipelines.tumor.isolated_edema import clear_isolated_edema

SPACING = (2.0, 2.0, 2.0)


def _tumor() -> np.ndarray:
    """A 2 mm grid with a 16 mm enhancing tumor in 8 mm of edema (a 32 mm cube, 32.8 mL)."""
    labels = np.zeros((60, 80, 70), dtype=np.uint8)
    labels[20:36, 20:36, 10:26] = 2
    labels[24:32, 24:32, 14:22] = 4
    return labels


def test_an_edema_only_blob_far_from_the_tumor_goes_and_its_volume_is_listed():
    labels = _tumor()
    labels[24:30, 50:56, 50:56] = 2          # 12 mm cube of edema, 1.73 mL, 48 mm from the tumor
    cleared = clear_isolated_edema(labels, SPACING)
    assert not cleared.labels[24:30, 50:56, 50:56].any()
    assert (cleared.labels[20:36, 20:36, 10:26] == labels[20:36, 20:36, 10:26]).all()
    assert cleared.dropped_ml == (1.73,)


def test_edema_split_off_beside_the_tumor_stays():
    labels = _tumor()
    labels[20:36, 20:36, 29:33] = 2          # a 8 mm slab of edema 6 mm (3 voxels) beside the tumor, 8.2 mL
    cleared = clear_isolated_edema(labels, SPACING)
    assert (cleared.labels == labels).all() and cleared.dropped_ml == ()


def test_with_no_core_anywhere_an_all_edema_tumor_stays():
    labels = np.zeros((60, 80, 70), dtype=np.uint8)
    labels[20:36, 20:36, 10:26] = 2          # a non-enhancing tumor the model calls edema, 32.8 mL
    labels[24:30, 50:56, 50:56] = 2          # and a second edema-only region far from it
    cleared = clear_isolated_edema(labels, SPACING)
    assert (cleared.labels == labels).all() and cleared.dropped_ml == ()
