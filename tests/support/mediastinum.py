"""A mediastinum mask for checking the nodule pipeline from outside it: on each axial slice, the
soft tissue between the two lungs, row by row from the medial edge of one lung to the medial edge
of the other. The trachea, oesophagus, heart and great vessels lie there; the lungs do not.

It shares nothing with the pipeline's own lung rule (``pipelines.nodule.parenchyma``), so a
finding the pipeline lets through in the mediastinum is caught here. Its picture for
cptac-luad-C3N-00247 (``tests/artefacts/c3n-00247-mediastinum.png``, checked by eye) is made by

    PYTHONPATH=$PWD python -m tests.support.mediastinum
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pipelines.nodule.lungs import lung_mask
from pipelines.volume import Volume

PICTURE = Path(__file__).parents[1] / "artefacts" / "c3n-00247-mediastinum.png"
#: The two lungs on a slice: the two largest pieces of its lung mask, each at least this many mm^2.
MIN_LUNG_MM2 = 500.0


def mediastinum_mask(volume: Volume) -> np.ndarray:
    """Boolean (k, j, i) on ``volume``'s grid: per slice, between the medial edges of the two lungs."""
    lungs = lung_mask(volume.array, slice_axis=0)
    pixel_mm2 = volume.spacing[0] * volume.spacing[1]
    mask = np.zeros(lungs.shape, dtype=bool)
    for k in range(lungs.shape[0]):
        pair = _two_lungs(lungs[k], pixel_mm2)
        if pair is not None:
            mask[k] = _between(*pair)
    return mask


def centred_in(mask: np.ndarray, volume: Volume, centre_lps) -> bool:
    """Whether a finding centred at ``centre_lps`` (mm) lies in ``mask`` (``mediastinum_mask``'s)."""
    return bool(mask[tuple(np.round(volume.lps_to_kji(np.asarray(centre_lps, dtype=float))).astype(int))])


def _two_lungs(plane: np.ndarray, pixel_mm2: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The two largest lung pieces of a slice, the one on the image's left first; None without two."""
    labels, count = ndi.label(plane)
    if count < 2:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    first, second = (int(n) + 1 for n in np.argsort(sizes)[::-1][:2])
    if sizes[second - 1] * pixel_mm2 < MIN_LUNG_MM2:
        return None
    one, other = labels == first, labels == second
    if np.argwhere(one)[:, 1].mean() > np.argwhere(other)[:, 1].mean():
        one, other = other, one
    return one, other


def _between(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Per row where both lungs are: the columns after ``left``'s last and before ``right``'s first."""
    between = np.zeros(left.shape, dtype=bool)
    for j in np.flatnonzero(left.any(axis=1) & right.any(axis=1)):
        start = int(np.flatnonzero(left[j])[-1]) + 1
        stop = int(np.flatnonzero(right[j])[0])
        between[j, start:stop] = True
    return between


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.data_folder import DATA_ROOT
    from training.nodule import data

    volume = data.load(DATA_ROOT, "ct-chest/cptac-luad-C3N-00247")
    mask = mediastinum_mask(volume)
    slices = np.linspace(10, volume.array.shape[0] - 10, 6).round().astype(int)
    figure, axes = plt.subplots(2, 3, figsize=(12, 8))
    for axis, k in zip(axes.ravel(), slices):
        axis.imshow(np.clip(volume.array[k], -1000, 400), cmap="gray")
        axis.contour(mask[k], [0.5], colors="orange", linewidths=1)
        axis.set_title(f"slice {k}: mediastinum (orange)")
        axis.axis("off")
    PICTURE.parent.mkdir(exist_ok=True)
    figure.savefig(PICTURE, dpi=60, bbox_inches="tight")
    print(PICTURE)


if __name__ == "__main__":
    main()
