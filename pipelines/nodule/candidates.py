"""A candidate stage that should not miss a solid lesion of 4-80 mm: the detector's first stage.

A learned model with few real examples misses what it has not seen (the RetinaNet never boxed the
real A0002 mass whole). So the first stage is classical and generous, and a small learned scorer
(``scorer``) sorts its candidates. Everything runs on a 2 mm isotropic RAS grid (``grid``).

- **Where to look.** The aerated lung (``lungs.lung_mask``) misses what a lesion displaces: a
  juxta-pleural nodule is a notch in its border, a central mass a bite out of its medial side.
  Each lung's outline is closed per axial slice by its convex hull (``convex_hull_object``),
  which takes such notches back, and grown by ``REGION_MARGIN_MM``. The hull of the left lung
  also takes in part of the heart, which gives false candidates, not missed ones.
- **Small and mid-sized blobs** (about 4-30 mm): maxima of the scale-normalised Laplacian of
  Gaussian over space and ``LOG_SIGMAS_MM`` (a sphere of diameter d answers most at
  sigma = d / (2 sqrt 3)), stronger than ``LOG_MIN_RESPONSE`` and at least ``MIN_CENTRE_HU`` at
  their centre; ground glass answers too, more weakly.
- **Large solid lesions** (about 8-80 mm, blob filters do not box them whole): connected
  components of dense tissue (> ``SOLID_HU``) inside the lung region after an opening with a
  ball of radius ``OPENING_MM`` (each), which cuts the vessels thinner than the ball off them.
  Components with an equivalent diameter in ``SOLID_DIAMETER_MM`` are candidates with their
  own box, so a mass is boxed whole.

Nearly concentric candidates are merged (the larger box is kept, ``merge``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import ball, convex_hull_object

from pipelines.nodule.grid import ModelGrid, to_model_grid
from pipelines.nodule.lungs import lung_mask
from pipelines.volume import Volume

GRID_MM = 2.0
REGION_MARGIN_MM = 4.0
#: Sigmas (mm) of the LoG scales: spheres of about 4-30 mm.
LOG_SIGMAS_MM = (1.2, 1.7, 2.4, 3.4, 4.8, 6.8, 8.6)
#: Scale-normalised LoG response (HU) a blob must reach; a 4 mm solid nodule on 2 mm voxels
#: answers with a few hundred, ground glass with about a third of a solid nodule's answer.
LOG_MIN_RESPONSE = 60.0
#: Smoothed HU at a blob's centre: faint ground glass is about -700, aerated lung about -850.
MIN_CENTRE_HU = -750.0
SOLID_HU = -400.0
OPENING_MM = (3.0, 6.0, 10.0)
SOLID_DIAMETER_MM = (6.0, 90.0)
#: Intensity range the LoG sees: lung to soft tissue; bone and contrast would dominate otherwise.
LOG_RANGE_HU = (-1000.0, 150.0)


@dataclass(frozen=True)
class Candidate:
    """A place to score: centre and box in grid indices (x, y, z), a size, and how it was found."""

    center: np.ndarray   # (3,) grid index
    box: np.ndarray      # (6,) x0 y0 z0 x1 y1 z1, voxel edges
    diameter_mm: float
    source: str          # "blob" or "solid"
    response: float      # LoG response (blob) or mean HU (solid)


@dataclass
class CandidateScan:
    """A scan on the candidate grid, its lung region, and its candidates."""

    grid: ModelGrid
    lungs: np.ndarray
    region: np.ndarray
    candidates: list[Candidate]

    def center_lps(self, candidate: Candidate) -> np.ndarray:
        return self.grid.index_to_lps(candidate.center)

    def box_lps(self, candidate: Candidate) -> np.ndarray:
        """The candidate's box as [[min], [max]] LPS corners."""
        low, high = candidate.box[:3], candidate.box[3:]
        corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
        lps = self.grid.index_to_lps(corners)
        return np.array([lps.min(axis=0), lps.max(axis=0)])


def find(volume: Volume) -> CandidateScan:
    grid = to_model_grid(volume, (GRID_MM,) * 3)
    lungs = lung_mask(grid.hu, slice_axis=2)
    region = lung_region(lungs)
    smooth = ndi.gaussian_filter(grid.hu, 1.0)
    found = blob_candidates(grid.hu, smooth, region) + solid_candidates(smooth, region)
    return CandidateScan(grid, lungs, region, merge(found))


def lung_region(lungs: np.ndarray) -> np.ndarray:
    """The lungs with their notches closed: per axial slice, each lung's convex hull, grown."""
    hull = np.zeros_like(lungs)
    for z in range(lungs.shape[2]):
        if lungs[:, :, z].any():
            hull[:, :, z] = convex_hull_object(lungs[:, :, z], connectivity=2)
    grow = max(int(round(REGION_MARGIN_MM / GRID_MM)), 1)
    return ndi.binary_dilation(hull | lungs, structure=ball(grow).astype(bool))


def blob_candidates(hu: np.ndarray, smooth: np.ndarray, region: np.ndarray) -> list[Candidate]:
    """Scale-space maxima of the normalised LoG inside the region."""
    image = np.clip(hu, *LOG_RANGE_HU).astype(np.float32)
    stack = np.stack([-(s / GRID_MM) ** 2 * ndi.gaussian_laplace(image, s / GRID_MM) for s in LOG_SIGMAS_MM])
    peaks = (stack == ndi.maximum_filter(stack, size=(3, 3, 3, 3))) & (stack >= LOG_MIN_RESPONSE)
    peaks &= region[None] & (smooth >= MIN_CENTRE_HU)[None]
    found = []
    for scale, x, y, z in np.argwhere(peaks):
        radius = LOG_SIGMAS_MM[scale] * np.sqrt(3.0) / GRID_MM
        centre = np.array([x, y, z], dtype=np.float64)
        found.append(Candidate(centre, np.concatenate([centre - radius, centre + radius]),
                               2 * radius * GRID_MM, "blob", float(stack[scale, x, y, z])))
    return found


def solid_candidates(smooth: np.ndarray, region: np.ndarray) -> list[Candidate]:
    """Dense components inside the region after openings that cut vessels off them."""
    dense = (smooth > SOLID_HU) & region
    found = []
    for radius_mm in OPENING_MM:
        opened = ndi.binary_opening(dense, structure=ball(max(int(round(radius_mm / GRID_MM)), 1)).astype(bool))
        labels, count = ndi.label(opened)
        if count == 0:
            continue
        sizes = ndi.sum_labels(opened, labels, index=np.arange(1, count + 1))
        for n, where in enumerate(ndi.find_objects(labels), start=1):
            diameter = 2 * (3 * sizes[n - 1] / (4 * np.pi)) ** (1 / 3) * GRID_MM
            if not SOLID_DIAMETER_MM[0] <= diameter <= SOLID_DIAMETER_MM[1]:
                continue
            part = labels[where] == n
            centre = np.array(ndi.center_of_mass(part)) + np.array([s.start for s in where])
            box = np.array([s.start - 0.5 for s in where] + [s.stop - 0.5 for s in where], dtype=np.float64)
            found.append(Candidate(centre, box, float(diameter), "solid", float(smooth[where][part].mean())))
    return found


def merge(candidates: list[Candidate]) -> list[Candidate]:
    """One candidate per place: of two nearly concentric candidates (centres closer than the
    smaller one's radius) the larger is kept, so a mass found by several openings and scales is
    one candidate. Blobs on parts of a mass, off its centre, stay: merging by the larger radius
    would let a false 80 mm component around the heart swallow a real nodule beside it."""
    order = sorted(candidates, key=lambda c: (-c.diameter_mm, -c.response))
    kept: list[Candidate] = []
    for c in order:
        if not any(np.linalg.norm((c.center - k.center) * GRID_MM) < 0.5 * c.diameter_mm for k in kept):
            kept.append(c)
    return kept
