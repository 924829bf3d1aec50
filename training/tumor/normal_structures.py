"""Paint T1c-bright normal structures into training brains, as negatives (label 0).

After gadolinium not only tumor enhances: vessels and venous sinuses, the choroid plexus and
the dura are as bright on T1c as an enhancing rim. A network trained on one brain sees few of
them, and with T1c alone it calls those of another brain tumor core. These structures are drawn
once in the patient frame and painted into all four contrasts with the appearance each has there,
so that the other contrasts (when present) agree, and never any edema:

===============  ==================  ===============  ==================  ===============
structure         T1c                 T1               T2                  FLAIR
===============  ==================  ===============  ==================  ===============
vessel / sinus   very bright          iso / a bit      dark (flow void)    dark to iso
                                      bright           to iso
choroid plexus   very bright          iso              iso to bright       iso
dura             bright               iso              a bit dark to iso   iso
===============  ==================  ===============  ==================  ===============

Shapes: vessels are thin curved tubes (radius 1-4 mm, tapering, 20-80 mm long) started mostly
near the brain surface (cortical veins, sinuses) and otherwise anywhere (deep veins, arteries);
choroid plexus is a lobulated blob in the ventricles; dura is a thin sheet along a patch of the
brain surface. Intensities are multiples of the median brain intensity of each contrast, as in
``synthesis``, with partial-volume edges and mild texture. Structures stay inside the brain mask
(outside it a skull-stripped image is zero, and the mask is what inference normalizes over) and
out of tumors and of a keep-out region (a training brain's own lesion): labels are not changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from training.tumor.synthesis import smooth_noise

#: Intensity ranges per structure and contrast, as multiples of the contrast's median brain intensity.
APPEARANCE: dict[str, dict[str, tuple[float, float]]] = {
    "vessel": {"t1c": (1.7, 3.0), "t1": (0.95, 1.3), "t2": (0.3, 1.0), "flair": (0.3, 1.0)},
    "choroid": {"t1c": (1.7, 3.0), "t1": (0.85, 1.1), "t2": (1.0, 1.8), "flair": (0.7, 1.1)},
    "dura": {"t1c": (1.6, 2.6), "t1": (0.85, 1.1), "t2": (0.6, 1.1), "flair": (0.7, 1.1)},
}
#: How often each structure is drawn.
KIND_SHARE: dict[str, float] = {"vessel": 0.6, "choroid": 0.15, "dura": 0.25}
#: Vessel radius and length ranges (mm), and the share started near the brain surface.
VESSEL_RADIUS_MM = (1.0, 4.0)
VESSEL_LENGTH_MM = (20.0, 80.0)
SURFACE_VESSEL_SHARE = 0.6
#: Overall radius of a choroid-plexus blob (mm).
CHOROID_RADIUS_MM = (4.0, 10.0)
#: Dura: sheet thickness and the radius of the surface patch it covers (mm).
DURA_THICKNESS_MM = (1.0, 2.5)
DURA_PATCH_MM = (15.0, 40.0)
#: Distance kept from tumors and the keep-out region (mm).
MARGIN_MM = 4.0
#: Depth below the brain surface (mm) that counts as "near the surface", and as "deep".
SURFACE_DEPTH_MM = 10.0
DEEP_DEPTH_MM = 15.0


@dataclass(frozen=True)
class NormalAnatomy:
    """Where normal structures go in one brain: its depth map and candidate voxels per site.

    Computed once per training brain. ``depth_mm``: distance below the brain surface. Candidate
    voxels (N x 3 indices): ``outer`` the outermost brain layer (dura), ``surface`` within
    ``SURFACE_DEPTH_MM`` (cortical veins, sinuses), ``inner`` any brain voxel (deep veins,
    arteries), ``ventricles`` deep CSF, dark on T1 and FLAIR and bright on T2 (choroid plexus;
    deep brain when none is found).
    """

    brain: np.ndarray
    depth_mm: np.ndarray
    spacing: np.ndarray
    outer: np.ndarray
    surface: np.ndarray
    inner: np.ndarray
    ventricles: np.ndarray


def find_anatomy(images: Mapping[str, np.ndarray], brain: np.ndarray,
                 spacing_zyx: tuple[float, float, float]) -> NormalAnatomy:
    """Depth map and candidate sites of a four-contrast brain (arrays z, y, x; ``brain`` mask)."""
    depth = ndimage.distance_transform_edt(brain, sampling=spacing_zyx).astype(np.float32)
    relative = {role: images[role] / max(float(np.median(images[role][brain])), 1e-6) for role in ("t1", "t2", "flair")}
    deep = brain & (depth > DEEP_DEPTH_MM)
    ventricles = deep & (relative["t1"] < 0.6) & (relative["t2"] > 1.5) & (relative["flair"] < 0.7)
    return NormalAnatomy(
        brain=brain, depth_mm=depth, spacing=np.asarray(spacing_zyx, dtype=np.float64),
        outer=np.argwhere(brain & (depth <= min(spacing_zyx))),
        surface=np.argwhere(brain & (depth <= SURFACE_DEPTH_MM)),
        inner=np.argwhere(brain),
        ventricles=np.argwhere(ventricles if ventricles.any() else deep),
    )


def _random_voxel(candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    return candidates[rng.integers(len(candidates))] if len(candidates) else None


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Structuring element: the voxels within ``radius_mm`` of the centre (at least one voxel out)."""
    reach = np.maximum(np.floor(radius_mm / spacing).astype(int), 1)
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in reach)]
    ball: np.ndarray = sum((g * d) ** 2 for g, d in zip(grids, spacing)) <= max(radius_mm, float(spacing.max())) ** 2
    return ball


def _box_around(points_mm: np.ndarray, reach_mm: float, anatomy: NormalAnatomy) -> tuple[slice, ...]:
    lo = np.floor((points_mm.min(axis=0) - reach_mm) / anatomy.spacing).astype(int)
    hi = np.ceil((points_mm.max(axis=0) + reach_mm) / anatomy.spacing).astype(int) + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, anatomy.brain.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _voxel_centres_mm(box: tuple[slice, ...], spacing: np.ndarray) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(s.start, s.stop) * d for s, d in zip(box, spacing)], indexing="ij")
    return np.stack(grids, axis=-1)


def _occupancy(distance_inside_mm: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Share of a voxel inside a surface, from the signed depth of its centre (> 0 inside).

    A linear ramp one voxel wide: a 1 mm vessel on a 2 mm grid fills its voxel about half to
    fully, as resampling a 1 mm image onto the model grid would show it.
    """
    return np.clip(0.5 + distance_inside_mm / float(spacing.mean()), 0.0, 1.0).astype(np.float32)


def _depth_gradient(anatomy: NormalAnatomy, voxel: np.ndarray) -> np.ndarray:
    """Unit vector into the brain at ``voxel`` (central differences of the depth map), or zero."""
    gradient = np.zeros(3)
    for axis in range(3):
        ahead, behind = voxel.copy(), voxel.copy()
        ahead[axis] = min(voxel[axis] + 1, anatomy.depth_mm.shape[axis] - 1)
        behind[axis] = max(voxel[axis] - 1, 0)
        gradient[axis] = anatomy.depth_mm[tuple(ahead)] - anatomy.depth_mm[tuple(behind)]
    norm = np.linalg.norm(gradient)
    return gradient / norm if norm > 0 else gradient


def _vessel(anatomy: NormalAnatomy, rng: np.random.Generator) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """A tapering tube along a smooth random path, started near the surface or anywhere.

    Near the surface the path starts parallel to it, as cortical veins and sinuses run; a random
    direction there would mostly leave the brain within a few millimetres.
    """
    on_surface = rng.random() < SURFACE_VESSEL_SHARE
    start = _random_voxel(anatomy.surface if on_surface else anatomy.inner, rng)
    if start is None:
        return None
    step = 0.5
    steps = int(rng.uniform(*VESSEL_LENGTH_MM) / step)
    direction = rng.standard_normal(3)
    if on_surface:
        inward = _depth_gradient(anatomy, start)
        direction -= direction.dot(inward) * inward
    points = [start * anatomy.spacing]
    for _ in range(steps):
        direction = direction / np.linalg.norm(direction) + rng.normal(0.0, 0.06, 3)
        points.append(points[-1] + step * direction / np.linalg.norm(direction))
    path = np.asarray(points)
    first, last = rng.uniform(*VESSEL_RADIUS_MM, size=2)
    radius = np.linspace(first, last, len(path))
    box = _box_around(path, VESSEL_RADIUS_MM[1] + 2 * anatomy.spacing.max(), anatomy)
    distance, nearest = cKDTree(path).query(_voxel_centres_mm(box, anatomy.spacing))
    return box, _occupancy(radius[nearest] - distance, anatomy.spacing)


def _choroid(anatomy: NormalAnatomy, rng: np.random.Generator) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """A cluster of small overlapping spheres (lobules) in the ventricles, else deep in the brain."""
    centre = _random_voxel(anatomy.ventricles, rng)
    if centre is None:
        return None
    size = rng.uniform(*CHOROID_RADIUS_MM)
    lobes = int(rng.integers(3, 7))
    offsets = rng.normal(0.0, 0.3 * size, (lobes, 3))
    radii = rng.uniform(0.35, 0.6, lobes) * size
    lobe_centres = centre * anatomy.spacing + offsets
    box = _box_around(lobe_centres, radii.max() + anatomy.spacing.max(), anatomy)
    voxels = _voxel_centres_mm(box, anatomy.spacing)
    inside = np.max([r - np.linalg.norm(voxels - c, axis=-1) for c, r in zip(lobe_centres, radii)], axis=0)
    return box, _occupancy(inside, anatomy.spacing)


def _dura(anatomy: NormalAnatomy, rng: np.random.Generator) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """A thin shell under the brain surface over a round patch, fading out at the patch edge."""
    voxel = float(anatomy.spacing.min())
    centre = _random_voxel(anatomy.outer, rng)
    if centre is None:
        return None
    patch = rng.uniform(*DURA_PATCH_MM)
    thickness = rng.uniform(*DURA_THICKNESS_MM)
    centre_mm = centre * anatomy.spacing
    box = _box_around(centre_mm[None], patch, anatomy)
    from_centre = np.linalg.norm(_voxel_centres_mm(box, anatomy.spacing) - centre_mm, axis=-1)
    below_surface = anatomy.depth_mm[box] - voxel  # 0 in the outermost brain voxels
    taper = np.clip((patch - from_centre) / 5.0, 0.0, 1.0)
    return box, _occupancy(thickness - below_surface, anatomy.spacing) * taper * anatomy.brain[box]


SHAPES = {"vessel": _vessel, "choroid": _choroid, "dura": _dura}


def paint_normal_structures(images: Mapping[str, np.ndarray], labels: np.ndarray, anatomy: NormalAnatomy,
                            rng: np.random.Generator, count: int, keep_out: np.ndarray | None = None) -> list[str]:
    """Paint ``count`` random structures into ``images`` (changed in place); return their kinds.

    ``labels`` (tumors already inserted) is only read: structures keep ``MARGIN_MM`` away from
    any labelled voxel and from ``keep_out``, so a label never covers one and one never hides a
    tumor. Each contrast present in ``images`` gets the structure's appearance there.
    """
    blocked = labels > 0 if keep_out is None else (labels > 0) | keep_out
    allowed = anatomy.brain & ~ndimage.binary_dilation(blocked, structure=_ball(MARGIN_MM, anatomy.spacing))
    references = {role: float(np.median(image[anatomy.brain])) for role, image in images.items()}
    soft = 0.7 / anatomy.spacing  # partial-volume edge of about a millimetre, as for tumors
    kinds = list(KIND_SHARE)
    painted = []
    for kind in rng.choice(kinds, size=count, p=[KIND_SHARE[k] for k in kinds]):
        drawn = SHAPES[str(kind)](anatomy, rng)
        if drawn is None:
            continue
        box, occupancy = drawn
        weight = np.clip(ndimage.gaussian_filter(occupancy, soft), 0.0, 1.0) * allowed[box]
        if not weight.any():
            continue
        texture = 1.0 + 0.05 * smooth_noise(weight.shape, 1.0 / anatomy.spacing, rng)
        for role, image in images.items():
            level = rng.uniform(*APPEARANCE[str(kind)][role]) * references[role]
            region = image[box]
            region[...] = region * (1.0 - weight) + weight * level * texture
        painted.append(str(kind))
    return painted
