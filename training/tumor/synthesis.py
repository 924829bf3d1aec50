"""Insert synthetic gliomas into real brain MR, with labels that come from the insertion.

No labelled tumor data is available here, so training images are made: a tumor is a set of
nested irregular blobs (necrotic core inside an enhancing rim inside edema), drawn once in the
patient frame and painted into all four contrasts so that they agree, with the appearance a
glioblastoma has on each contrast:

===========  ===========  ==================  ==================  =================
tissue        T1           T1c                  T2                   FLAIR
===========  ===========  ==================  ==================  =================
edema        a bit dark    a bit dark           bright               bright
enhancing    a bit dark    very bright (gad)    bright               bright
necrosis     dark          very dark            very bright (fluid)  grey (suppressed)
===========  ===========  ==================  ==================  =================

Most cores (``NECROSIS_SHARE``) have a necrotic centre inside an enhancing rim a few millimetres
thick, as in glioblastoma, so larger cores are mostly necrotic; a network that only ever sees
small or absent necrosis learns to call the whole core enhancing.

Intensities are set relative to the median brain intensity of each contrast, with random levels
per tumor, texture noise, soft (partial-volume) edges, and edema that lets some of the anatomy
underneath show through. Shapes are ellipsoids whose radius is modulated by smooth random noise;
mass effect is not simulated. Labels use the BraTS convention (1 necrosis / non-enhancing core,
2 edema, 4 enhancing tumor). Sizes are in millimetres, so the same call works at any spacing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Intensity ranges per tissue and contrast, as multiples of the contrast's median brain intensity.
APPEARANCE: dict[str, dict[str, tuple[float, float]]] = {
    "edema": {"t1": (0.65, 0.85), "t1c": (0.65, 0.85), "t2": (1.8, 3.0), "flair": (1.5, 2.3)},
    "enhancing": {"t1": (0.65, 0.9), "t1c": (1.7, 3.0), "t2": (1.3, 1.9), "flair": (1.3, 1.9)},
    "necrosis": {"t1": (0.35, 0.6), "t1c": (0.2, 0.45), "t2": (2.4, 3.6), "flair": (0.8, 1.4)},
}
#: Whole-tumor (edema) radius range in mm, and the core radius as a fraction of it.
EDEMA_RADIUS_MM = (12.0, 34.0)
CORE_FRACTION = (0.35, 0.75)
#: Thickness of the enhancing rim around a necrotic centre, in mm.
RIM_THICKNESS_MM = (2.5, 6.0)
#: Share of tumors with a necrotic centre (the rest have a solid enhancing core).
NECROSIS_SHARE = 0.85
#: How much of the underlying anatomy edema keeps (1 - opacity).
EDEMA_OPACITY = (0.6, 0.95)


@dataclass(frozen=True)
class Insertion:
    """Where one synthetic tumor went: its centre (array index z, y, x) and edema radius (mm)."""

    center: tuple[int, int, int]
    radius_mm: float


def smooth_noise(shape: tuple[int, ...], sigma_vox: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    noise: np.ndarray = field / (field.std() + 1e-6)
    return noise


def _blob(offsets_mm: np.ndarray, radius: float, axes: np.ndarray, rotation: np.ndarray,
          noise: np.ndarray, roughness: float) -> np.ndarray:
    """Normalized distance (<1 inside) of an irregular ellipsoid around the origin."""
    local = np.einsum("ij,j...->i...", rotation, offsets_mm) / axes[:, None, None, None]
    distance = np.sqrt((local**2).sum(axis=0)) / radius
    normalized: np.ndarray = distance / np.clip(1.0 + roughness * noise, 0.3, None)
    return normalized


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def pick_center(brain: np.ndarray, rng: np.random.Generator, avoid: np.ndarray | None = None,
                margin_vox: int = 4) -> tuple[int, int, int] | None:
    """A random voxel deep enough in the brain (and outside ``avoid``), or None if there is none."""
    allowed = ndimage.binary_erosion(brain, iterations=margin_vox)
    if avoid is not None:
        allowed &= ~avoid
    candidates = np.argwhere(allowed)
    if len(candidates) == 0:
        return None
    z, y, x = (int(v) for v in candidates[rng.integers(len(candidates))])
    return z, y, x


def insert_tumor(images: Mapping[str, np.ndarray], labels: np.ndarray, brain: np.ndarray,
                 spacing_zyx: tuple[float, float, float], center: tuple[int, int, int],
                 rng: np.random.Generator, radius_mm: float | None = None) -> Insertion:
    """Paint one tumor into ``images`` (dict of contrast -> array, changed in place) and ``labels``.

    ``brain`` limits the tumor to brain tissue; ``spacing_zyx`` is the voxel size in array order.
    """
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    radius = float(radius_mm if radius_mm is not None else rng.uniform(*EDEMA_RADIUS_MM))
    reach = np.ceil(radius * 1.8 / spacing).astype(int)
    lo = np.maximum(np.asarray(center) - reach, 0)
    hi = np.minimum(np.asarray(center) + reach + 1, labels.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    shape = tuple(hi - lo)
    grids = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, center, spacing)], indexing="ij")
    offsets = np.stack(grids).astype(np.float32)
    rotation = _random_rotation(rng)
    axes = rng.uniform(0.75, 1.3, size=3)
    sigma = 6.0 / spacing
    edema_d = _blob(offsets, radius, axes, rotation, smooth_noise(shape, sigma, rng), rng.uniform(0.25, 0.45))
    core_r = radius * rng.uniform(*CORE_FRACTION)
    core_d = _blob(offsets, core_r, axes, rotation, smooth_noise(shape, sigma * 0.7, rng), rng.uniform(0.1, 0.3))
    nec_r = core_r - rng.uniform(*RIM_THICKNESS_MM) if rng.random() < NECROSIS_SHARE else 0.0
    nec_d = _blob(offsets, max(nec_r, 1e-3), axes, rotation, smooth_noise(shape, sigma * 0.7, rng), 0.15)

    inside = brain[box]
    tumor = (edema_d < 1) & inside
    core = (core_d < 1) & inside
    necrosis = (nec_d < 1) & core if nec_r > 2 * spacing.min() else np.zeros_like(core)
    enhancing = core & ~necrosis
    edema = tumor & ~core

    box_labels = labels[box]
    box_labels[edema & (box_labels == 0)] = 2
    box_labels[enhancing] = 4
    box_labels[necrosis] = 1

    soft = 0.7 / spacing  # partial-volume edge of about a millimetre
    opacity = rng.uniform(*EDEMA_OPACITY)
    weights = {
        "edema": ndimage.gaussian_filter(edema.astype(np.float32), soft) * opacity,
        "enhancing": ndimage.gaussian_filter(enhancing.astype(np.float32), soft),
        "necrosis": ndimage.gaussian_filter(necrosis.astype(np.float32), soft),
    }
    total = np.clip(sum(weights.values()), 0.0, 1.0) * inside
    texture = smooth_noise(shape, 1.5 / spacing, rng)
    for role, image in images.items():
        reference = float(np.median(image[brain])) if brain.any() else 1.0
        region = image[box]
        painted = region * (1.0 - total)
        for tissue, weight in weights.items():
            level = rng.uniform(*APPEARANCE[tissue][role]) * reference
            painted += weight * inside * level * (1.0 + 0.08 * texture)
        region[...] = painted
    z, y, x = center
    return Insertion(center=(int(z), int(y), int(x)), radius_mm=radius)


def rough_lesion_mask(flair: np.ndarray, brain: np.ndarray, spacing_zyx: tuple[float, float, float],
                      margin_mm: float = 12.0) -> np.ndarray:
    """Where a real, unlabelled lesion probably is: the largest FLAIR-bright blob, widened.

    Training leaves this region out of the loss (the real tumor of a training brain has no
    label, and calling it background would teach the model to miss real tumors).
    """
    values = flair[brain]
    bright = (flair > values.mean() + 1.5 * values.std()) & brain
    bright = ndimage.binary_opening(bright, iterations=1)
    components, count = ndimage.label(bright)
    if count == 0:
        return np.zeros_like(brain)
    sizes = ndimage.sum(bright, components, index=range(1, count + 1))
    largest = components == (int(np.argmax(sizes)) + 1)
    distance: np.ndarray = ndimage.distance_transform_edt(~largest, sampling=spacing_zyx)
    return distance <= margin_mm
