"""The multithreaded distance map and the component sizes the lung and brain rules use give scipy's results."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipelines.components import component_sizes
from pipelines.distance import inside_distance


def _blobby_mask() -> np.ndarray:
    """An ellipsoid with holes that runs off one face of the array, as a cropped lung or brain would."""
    rng = np.random.default_rng(7)
    z, y, x = np.ogrid[:40, :64, :56]
    mask = ((z - 25) / 22.0) ** 2 + ((y - 32) / 26.0) ** 2 + ((x - 28) / 20.0) ** 2 < 1
    return mask & ~ndimage.binary_dilation(rng.random(mask.shape) < 0.002, iterations=1)


def test_inside_distance_is_scipys_exact_map_to_a_micrometre_with_anisotropic_spacing_and_the_mask_at_the_edge() -> None:
    mask = _blobby_mask()
    assert mask[-1].any(), "the mask must touch the array's edge for this test"
    spacing = (2.5, 0.703125, 0.9)
    exact = ndimage.distance_transform_edt(mask, sampling=spacing)
    found = inside_distance(mask, spacing)
    assert found.shape == mask.shape
    assert np.abs(found - exact).max() < 1e-3  # measured: 5e-7 mm (float32)
    assert (found[~mask] == 0).all()


def test_inside_distance_of_a_mask_filling_the_array_is_infinite_and_of_an_empty_mask_zero() -> None:
    assert np.isinf(inside_distance(np.ones((4, 5, 6), dtype=bool), (1.0, 1.0, 1.0))).all()
    assert (inside_distance(np.zeros((4, 5, 6), dtype=bool), (1.0, 1.0, 1.0)) == 0).all()


def test_component_sizes_are_scipys_sums_over_each_label_plain_and_weighted() -> None:
    holes = ~_blobby_mask()  # the outside and the holes: many components of different sizes
    components, count = ndimage.label(holes)
    assert count > 3
    index = np.arange(1, count + 1)
    np.testing.assert_array_equal(component_sizes(components, count), ndimage.sum(holes, components, index=index))
    core = np.zeros(holes.shape, dtype=bool)
    core[10:30] = True
    np.testing.assert_array_equal(component_sizes(components, count, core), ndimage.sum(core, components, index=index))
