"""How big each connected component of a label array is, for the rules that keep or drop them."""

from __future__ import annotations

import numpy as np


def component_sizes(components: np.ndarray, count: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Voxels of each component 1..``count`` of ``components`` (or the sum of ``weights`` over
    each), float64: scipy's ``ndimage.sum(mask, components, index=range(1, count + 1))`` by one
    bincount, which on a whole volume takes a fraction of scipy's 0.1-0.2 s (docs/pipelines.md)."""
    flat_weights = None if weights is None else weights.ravel()
    sizes: np.ndarray = np.bincount(components.ravel(), weights=flat_weights, minlength=count + 1)[1:count + 1]
    return sizes.astype(np.float64)
