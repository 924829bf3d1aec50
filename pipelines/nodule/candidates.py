"""A candidate stage that should not miss a lesion of 4-80 mm, solid or ground glass: the detector's first stage.

A learned model with few real examples misses what it has not seen, so the first stage is
classical and generous and a small learned scorer (``scorer``) sorts its candidates, all on a 2 mm
RAS grid (``grid``). It looks in each lung closed per slice by its convex hull (notches a lesion
bites out come back), and finds blobs (scale-normalised LoG maxima), large solid components after
an opening (so a mass is boxed whole, vessels cut off) and ground-glass components (too faint for
the LoG at their size), within a per-scan budget. Nearly concentric candidates are merged
(``merge``). The sizes and reasons of each rule: docs/nodule.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import ball, convex_hull_object
from skimage.segmentation import watershed

from pipelines.components import component_sizes
from pipelines.nodule.grid import ModelGrid, to_model_grid
from pipelines.nodule.lungs import lung_mask
from pipelines.threads import map_on_cores
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
#: The candidate budget per scan: the ``MAX_SOLIDS`` largest solid components and pieces, then
#: the strongest blobs up to ``MAX_CANDIDATES`` in all. The weakest blobs, dropped first, are
#: mostly 4 mm vessel cross-sections and noise.
MAX_CANDIDATES = 300
MAX_SOLIDS = 100
#: Hessian eigenvalue ratio (smallest / largest magnitude) a blob must reach at its centre.
BLOBNESS = 0.25
SOLID_HU = -400.0
OPENING_MM = 6.0
SOLID_DIAMETER_MM = (6.0, 90.0)
#: Ground glass: denser than aerated lung (about -850 HU), less dense than solid tissue; on HU
#: smoothed with a Gaussian of ``SUBSOLID_SMOOTHING_MM`` (sigma) and averaged over 4 mm blocks.
SUBSOLID_HU = (-800.0, -400.0)
SUBSOLID_SMOOTHING_MM = 3.0
#: One 4 mm block: cuts the partial-volume shells of vessels and of the lung border.
SUBSOLID_OPENING_MM = 4.0
SUBSOLID_DIAMETER_MM = (8.0, 60.0)
MAX_SUBSOLIDS = 50
#: Intensity range the LoG sees: lung to soft tissue; bone and contrast would dominate otherwise.
LOG_RANGE_HU = (-1000.0, 150.0)


@dataclass(frozen=True)
class Candidate:
    """A place to score: centre and box in grid indices (x, y, z), a size, and how it was found."""

    center: np.ndarray   # (3,) grid index
    box: np.ndarray      # (6,) x0 y0 z0 x1 y1 z1, voxel edges
    diameter_mm: float
    source: str          # "blob", "solid" or "subsolid"
    response: float      # LoG response (blob) or mean HU (solid, subsolid)


@dataclass
class CandidateScan:
    """A scan on the candidate grid, its lung region, and its candidates."""

    grid: ModelGrid
    lungs: np.ndarray
    region: np.ndarray
    candidates: list[Candidate]

    def center_lps(self, candidate: Candidate) -> np.ndarray:
        return self.grid.xyz_to_lps(candidate.center)

    def box_lps(self, candidate: Candidate) -> np.ndarray:
        """The candidate's box as [[min], [max]] LPS corners."""
        low, high = candidate.box[:3], candidate.box[3:]
        corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
        lps = self.grid.xyz_to_lps(corners)
        return np.array([lps.min(axis=0), lps.max(axis=0)])

    def box_long_side_mm(self, candidate: Candidate) -> float:
        """The longest side of the candidate's box: how much of a lesion the candidate covers."""
        return float(np.max(np.diff(self.box_lps(candidate), axis=0)))


def find(volume: Volume, ground_glass: bool = True) -> CandidateScan:
    return find_on_grid(to_model_grid(volume, (GRID_MM,) * 3), ground_glass=ground_glass)


def find_on_grid(grid: ModelGrid, lungs: np.ndarray | None = None, ground_glass: bool = True) -> CandidateScan:
    """Candidates of a scan already on the 2 mm grid (training inserts nodules there); ``lungs``
    is its lung mask when the caller has found it already (the pipeline checks the lung volume).

    ``ground_glass`` adds the subsolid components: a scorer must see the candidates it was trained
    on, so a scorer folder says whether its training had them (``candidate_detector``).
    """
    if lungs is None:
        lungs = lung_mask(grid.hu, slice_axis=2)
    region = lung_region(lungs)
    where = np.argwhere(region)
    if len(where) == 0:
        return CandidateScan(grid, lungs, region, [])
    low, high = np.maximum(where.min(axis=0) - 4, 0), where.max(axis=0) + 5
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    hu, inside = grid.hu[crop], region[crop]
    solids = sorted(solid_candidates(hu, inside), key=lambda c: -c.diameter_mm)[:MAX_SOLIDS]
    subsolids = (sorted(subsolid_candidates(hu, lungs[crop]), key=lambda c: -c.diameter_mm)[:MAX_SUBSOLIDS]
                 if ground_glass else [])
    components = solids + subsolids
    found = components + blob_candidates(hu, inside)[: MAX_CANDIDATES - len(components)]
    shifted = [dataclasses.replace(c, center=c.center + low, box=c.box + np.concatenate([low, low])) for c in found]
    return CandidateScan(grid, lungs, region, merge(shifted))


def lung_region(lungs: np.ndarray) -> np.ndarray:
    """The lungs with their notches closed: per axial slice, each lung's convex hull, grown."""
    hull = np.zeros_like(lungs)

    def close(z: int) -> None:  # slices are independent: each thread fills its own
        if lungs[:, :, z].any():
            hull[:, :, z] = convex_hull_object(lungs[:, :, z], connectivity=2)

    map_on_cores(close, range(lungs.shape[2]))
    grow = max(int(round(REGION_MARGIN_MM / GRID_MM)), 1)
    region: np.ndarray = ndi.binary_dilation(hull | lungs, structure=ball(grow).astype(bool))
    return region


def blob_candidates(hu: np.ndarray, region: np.ndarray) -> list[Candidate]:
    """Scale-space maxima of the normalised LoG inside the region that are blobs, not tubes.

    At each maximum the Hessian of the image smoothed at that scale must have three negative
    eigenvalues, the smallest in magnitude at least ``BLOBNESS`` of the largest (a sphere: 1, a
    vessel: about 0, a plate such as a fissure: two about 0): Li et al.'s dot filter.
    """
    image = np.clip(hu, *LOG_RANGE_HU).astype(np.float32)

    def scale_space(sigma_mm: float) -> tuple[np.ndarray, np.ndarray]:
        """The image smoothed at one scale and its normalised LoG response."""
        smoothed = ndi.gaussian_filter(image, sigma_mm / GRID_MM)
        return smoothed, -(sigma_mm / GRID_MM) ** 2 * ndi.laplace(smoothed)

    smoothed, responses = zip(*map_on_cores(scale_space, LOG_SIGMAS_MM), strict=True)
    stack = np.stack(responses)
    peaks = (stack >= LOG_MIN_RESPONSE) & region[None] & (smoothed[0] >= MIN_CENTRE_HU)[None]
    peaks &= stack == ndi.maximum_filter(stack, size=(3, 3, 3, 3))
    found: list[Candidate] = []
    points = np.argwhere(peaks)
    points = points[np.argsort(-stack[tuple(points.T)])]
    for scale, x, y, z in points:
        if len(found) == MAX_CANDIDATES:
            break
        if not _is_blob(smoothed[scale], x, y, z):
            continue
        radius = LOG_SIGMAS_MM[scale] * np.sqrt(3.0) / GRID_MM
        centre = np.array([x, y, z], dtype=np.float64)
        found.append(Candidate(centre, np.concatenate([centre - radius, centre + radius]),
                               2 * radius * GRID_MM, "blob", float(stack[scale, x, y, z])))
    return found


def _is_blob(smoothed: np.ndarray, x: int, y: int, z: int) -> bool:
    """Three negative Hessian eigenvalues of similar size at (x, y, z) (central differences)."""
    if min(x, y, z) < 1 or any(v >= n - 1 for v, n in zip((x, y, z), smoothed.shape)):
        return False
    p = smoothed[x - 1:x + 2, y - 1:y + 2, z - 1:z + 2].astype(np.float64)
    h = np.empty((3, 3))
    h[0, 0] = p[2, 1, 1] - 2 * p[1, 1, 1] + p[0, 1, 1]
    h[1, 1] = p[1, 2, 1] - 2 * p[1, 1, 1] + p[1, 0, 1]
    h[2, 2] = p[1, 1, 2] - 2 * p[1, 1, 1] + p[1, 1, 0]
    h[0, 1] = h[1, 0] = (p[2, 2, 1] - p[2, 0, 1] - p[0, 2, 1] + p[0, 0, 1]) / 4
    h[0, 2] = h[2, 0] = (p[2, 1, 2] - p[2, 1, 0] - p[0, 1, 2] + p[0, 1, 0]) / 4
    h[1, 2] = h[2, 1] = (p[1, 2, 2] - p[1, 2, 0] - p[1, 0, 2] + p[1, 0, 0]) / 4
    eigen = np.linalg.eigvalsh(h)  # ascending: eigen[0] most negative
    return bool(eigen[2] < 0 and eigen[2] / eigen[0] >= BLOBNESS)


def solid_candidates(hu: np.ndarray, region: np.ndarray) -> list[Candidate]:
    """Dense components inside the region after an opening that cuts vessels off them, on a grid
    of twice the spacing (the large lesions; the blobs cover the small ones). A lesion against
    the mediastinum can stay joined to the heart or aorta the hull takes in, one component far
    larger than any lesion, so each is also split at its distance map's necks (a watershed);
    every piece and every whole component of lesion size is a candidate with its own box.
    """
    coarse = _block_mean(hu)
    inside = _block_mean(region.astype(np.float32)) >= 0.5
    dense = (coarse > SOLID_HU) & inside
    step = 2 * GRID_MM
    radius = OPENING_MM / step
    opened = ndi.distance_transform_edt(ndi.distance_transform_edt(dense) <= radius) <= radius
    depth = ndi.distance_transform_edt(opened)
    peaks = (depth == ndi.maximum_filter(depth, size=5)) & (depth >= radius)
    markers, _ = ndi.label(peaks)
    pieces = watershed(-depth, markers, mask=opened)
    return [c for labels in (ndi.label(opened)[0], pieces)
            for c in _component_candidates(labels, coarse, SOLID_DIAMETER_MM, "solid")]


def subsolid_candidates(hu: np.ndarray, lungs: np.ndarray) -> list[Candidate]:
    """Ground-glass components inside the aerated lung, on the solid components' 4 mm grid.

    Ground glass lies inside the lung mask (it is below ``lungs.AIR_HU``), so the mask, not the
    hull region, bounds it; the opening cuts the thin shells of intermediate HU that every vessel
    and the lung border have after smoothing.
    """
    smoothed = ndi.gaussian_filter(hu.astype(np.float32), SUBSOLID_SMOOTHING_MM / GRID_MM)
    coarse = _block_mean(smoothed)
    inside = _block_mean(lungs.astype(np.float32)) >= 0.5
    ground_glass = (coarse > SUBSOLID_HU[0]) & (coarse < SUBSOLID_HU[1]) & inside
    radius = SUBSOLID_OPENING_MM / (2 * GRID_MM)
    opened = ndi.distance_transform_edt(ndi.distance_transform_edt(ground_glass) <= radius) <= radius
    return _component_candidates(ndi.label(opened)[0], coarse, SUBSOLID_DIAMETER_MM, "subsolid")


def _component_candidates(labels: np.ndarray, coarse: np.ndarray, diameters_mm: tuple[float, float],
                          source: str) -> list[Candidate]:
    """A candidate per labelled component of the 4 mm grid with an equivalent diameter in
    ``diameters_mm``: its centre of mass and box on the 2 mm grid, its mean HU as the response."""
    count = int(labels.max())
    if count == 0:
        return []
    step = 2 * GRID_MM
    sizes = component_sizes(labels, count)
    found = []
    for n, where in enumerate(ndi.find_objects(labels), start=1):
        if where is None:
            continue
        diameter = 2 * (3 * sizes[n - 1] / (4 * np.pi)) ** (1 / 3) * step
        if not diameters_mm[0] <= diameter <= diameters_mm[1]:
            continue
        part = labels[where] == n
        centre = (np.array(ndi.center_of_mass(part)) + np.array([s.start for s in where])) * 2 + 0.5
        box = np.array([s.start * 2 - 0.5 for s in where] + [s.stop * 2 - 0.5 for s in where], dtype=np.float64)
        found.append(Candidate(centre, box, float(diameter), source, float(coarse[where][part].mean())))
    return found


def _block_mean(array: np.ndarray) -> np.ndarray:
    """Means of 2 x 2 x 2 blocks (the last odd row, column or slice is dropped)."""
    x, y, z = (n // 2 * 2 for n in array.shape)
    a = array[:x, :y, :z]
    means: np.ndarray = a.reshape(x // 2, 2, y // 2, 2, z // 2, 2).mean(axis=(1, 3, 5))
    return means


def merge(candidates: list[Candidate]) -> list[Candidate]:
    """One candidate per place: of two nearly concentric candidates (centres closer than the
    smaller one's radius) the larger is kept, so a mass found by several openings and scales is
    one candidate. Blobs on parts of a mass, off its centre, stay: merging by the larger radius
    would let a false 80 mm component around the heart swallow a real nodule beside it."""
    order = sorted(candidates, key=lambda c: (-c.diameter_mm, -c.response))
    kept: list[Candidate] = []
    centres = np.empty((0, 3))
    for c in order:
        if len(kept) == 0 or np.min(np.linalg.norm(centres - c.center, axis=1)) * GRID_MM >= 0.5 * c.diameter_mm:
            kept.append(c)
            centres = np.vstack([centres, c.center])
    return kept
