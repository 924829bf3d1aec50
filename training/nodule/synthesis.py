"""Synthetic lung nodules inserted into real CT: the labels no public download gives us here.

A nodule is a shape (sphere, ellipsoid or lobulated) with a density profile (solid, part-solid
or ground-glass), optionally attached to a vessel stub or placed against the pleura. It is
rendered with partial volume: each voxel takes the fraction of it the surface covers, computed
from the signed distance to the surface and the voxel's extent across it, so a 4 mm nodule on
8 mm slices is as faint as a scanner would make it. The same code inserts into a detector grid
(training) and into a source series (evaluation and tests); its mask (coverage >= 0.5) is the label.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi

KINDS = ("solid", "part-solid", "ground-glass")
#: Vessel blood and solid nodule density (HU), before texture noise.
VESSEL_HU = 40.0
#: A fissure (two layers of visceral pleura) is a sheet of tissue this thick (mm), drawn at
#: ``VESSEL_HU`` with partial volume, out to this far (mm) beyond a perifissural nodule's surface.
FISSURE_MM = 0.5
FISSURE_REACH_MM = 20.0


@dataclass(frozen=True)
class NoduleSpec:
    """What to insert: size, shape, density and attachment, independent of any grid."""

    diameter_mm: float
    kind: str = "solid"
    solid_hu: float = 30.0
    ground_glass_hu: float = -600.0
    core_fraction: float = 0.5          # part-solid: core radius / nodule radius
    axes: tuple[float, float, float] = (1.0, 1.0, 1.0)
    lobes: tuple[tuple[float, float, float, float, float], ...] = ()  # (amp, freq, nx, ny, nz)
    texture_hu: float = 20.0
    vessel: tuple[float, float, float, float] | None = None  # (radius mm, length mm, direction seed)
    attachment: str = "none"            # "none", "vessel", "pleura" or "mediastinum" (masses only)
    fissure: float | None = None        # perifissural: seed of the direction of a fissure through the centre


@dataclass(frozen=True)
class Inserted:
    """A nodule as inserted: where, how big, and its label box in the grid's indices."""

    spec: NoduleSpec
    center_index: tuple[float, float, float]
    box: tuple[float, float, float, float, float, float]  # min and max corners, voxel-centre indices
    volume_mm3: float                                      # coverage-weighted, the true volume


#: Share of nodules drawn from the 4-12, 12-30 and 30-60 mm bands (log-uniform within a band).
SIZE_BANDS = (0.65, 0.23, 0.12)
#: Upper edges of the size bands; the last band given to ``sample_spec`` ends at its ``max_mm``.
#: A fourth weight selects the mass band (60 mm to ``max_mm``), drawn by ``_mass_spec``.
BAND_EDGES_MM = (12.0, 30.0, 60.0)
#: Where a mass grows: in aerated lung, against the pleura (any lung border), or against the
#: mediastinum and hilum (the medial border only). Weights in this order; see ``_mass_spec``.
MASS_SITES = ("none", "pleura", "mediastinum")
MASS_SITE_WEIGHTS = (0.4, 0.6, 0.0)


def sample_spec(
    rng: np.random.Generator, min_mm: float = 4.0, max_mm: float = 60.0, bands: Sequence[float] = SIZE_BANDS,
    mass_sites: Sequence[float] = MASS_SITE_WEIGHTS,
) -> NoduleSpec:
    """A random nodule, weighted toward the small ones a screening reader hunts for.

    With three ``bands`` the draws are those of the original 4-60 mm generator, so the seeded
    evaluation and calibration nodules do not change when training adds the mass band.
    """
    band = int(rng.choice(len(bands), p=list(bands)))
    low = max(min_mm if band == 0 else BAND_EDGES_MM[band - 1], min_mm)
    high = min(BAND_EDGES_MM[band] if band < len(bands) - 1 else max_mm, max_mm)
    diameter = float(np.exp(rng.uniform(np.log(low), np.log(max(high, low + 0.1)))))
    if band == len(BAND_EDGES_MM):
        return _mass_spec(rng, diameter, mass_sites)
    kind = str(rng.choice(KINDS, p=[0.6, 0.2, 0.2]))
    lobulated = rng.random() < 0.5
    lobes = tuple(
        (float(rng.uniform(0.05, 0.2)), float(rng.integers(2, 6)), *(rng.normal(size=3) / 1.7).tolist())
        for _ in range(int(rng.integers(2, 5)))
    ) if lobulated else ()
    attachment = str(rng.choice(["none", "vessel", "pleura"], p=[0.65, 0.2, 0.15]))
    vessel = _vessel(rng) if attachment == "vessel" else None
    return _appearance(rng, diameter, kind, vessel, attachment, lobes)


def _vessel(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A vessel from the nodule outward: radius (mm), length past the surface (mm), its direction's seed, unused."""
    return (float(rng.uniform(0.8, 2.0)), float(rng.uniform(10.0, 30.0)), float(rng.integers(1 << 30)), 0.0)


def _appearance(rng: np.random.Generator, diameter: float, kind: str, vessel: tuple[float, float, float, float] | None,
                attachment: str, lobes: tuple[tuple[float, float, float, float, float], ...] = ()) -> NoduleSpec:
    """The rest of a nodule, drawn in this order (the training data's streams depend on it): solid and
    ground-glass HU, the core's share, the axes (round when lobulated), the texture."""
    return NoduleSpec(
        diameter_mm=diameter,
        kind=kind,
        solid_hu=float(rng.normal(30.0, 25.0)),
        ground_glass_hu=float(rng.uniform(-720.0, -450.0)),
        core_fraction=float(rng.uniform(0.3, 0.6)),
        axes=_three_floats(rng.uniform(0.8, 1.2, size=3)) if not lobes else (1.0, 1.0, 1.0),
        lobes=lobes,
        texture_hu=float(rng.uniform(10.0, 35.0)),
        vessel=vessel,
        attachment=attachment,
    )


#: The small nodules a screening reader must not miss (``sample_small_spec``; training/nodule/LOG.md,
#: "Small solid nodules against vessels"): diameters drawn uniformly in this range (mm), kinds
#: weighted as ``KINDS``, and where they sit, weighted as ``SMALL_SITES``.
SMALL_MM = (4.0, 12.0)
SMALL_KIND_WEIGHTS = (0.7, 0.15, 0.15)
SMALL_SITES = ("none", "vessel", "pleura", "fissure")
SMALL_SITE_WEIGHTS = (0.3, 0.35, 0.2, 0.15)


def sample_small_spec(rng: np.random.Generator) -> NoduleSpec:
    """A 4-12 mm nodule, mostly solid, as often beside a vessel, the pleura or a fissure as free:
    the nodules the scorer ranked below vessel candidates (training/nodule/LOG.md)."""
    diameter = float(rng.uniform(*SMALL_MM))
    kind = str(rng.choice(KINDS, p=list(SMALL_KIND_WEIGHTS)))
    site = str(rng.choice(SMALL_SITES, p=list(SMALL_SITE_WEIGHTS)))
    vessel = _vessel(rng) if site == "vessel" else None
    spec = _appearance(rng, diameter, kind, vessel, site if site in ("vessel", "pleura") else "none")
    return replace(spec, fissure=float(rng.integers(1 << 30)) if site == "fissure" else None)


def _three_floats(values: Iterable[float]) -> tuple[float, float, float]:
    """Three numbers (an array's, say) as a tuple of Python floats."""
    x, y, z = (float(v) for v in values)
    return x, y, z


def _mass_spec(rng: np.random.Generator, diameter: float, sites: Sequence[float]) -> NoduleSpec:
    """A lung cancer of 60 mm or more, as such masses present: solid or with a large solid core,
    always lobulated, and mostly grown against a lung border; ``sites`` weighs ``MASS_SITES``.

    The default weights are those of stages 4-5 (60 % against any border, which is mostly chest
    wall); a mediastinal site needs the caller's ``pick_center`` to be given the medial border.
    """
    lobes = tuple(
        (float(rng.uniform(0.05, 0.15)), float(rng.integers(2, 6)), *(rng.normal(size=3) / 1.7).tolist())
        for _ in range(int(rng.integers(2, 5)))
    )
    return NoduleSpec(
        diameter_mm=diameter,
        kind=str(rng.choice(["solid", "part-solid"], p=[0.85, 0.15])),
        solid_hu=float(rng.normal(35.0, 15.0)),
        ground_glass_hu=float(rng.uniform(-600.0, -400.0)),
        core_fraction=float(rng.uniform(0.6, 0.85)),
        lobes=lobes,
        texture_hu=float(rng.uniform(15.0, 35.0)),
        attachment=str(rng.choice(MASS_SITES, p=list(sites))),
    )


#: How ground glass is rendered (``insert``): a smooth plateau at its density that replaces the lung
#: (the original generator), or the scan's own lung lifted to that density, its noise, fine
#: vessels and fissures kept, as partly filled air spaces look (training/nodule/LOG.md,
#: "Synthetic ground glass keeps the scan's own lung").
GROUND_GLASS_RENDERINGS = ("plateau", "lifted")


def insert(
    hu: np.ndarray,
    spacing: np.ndarray | Sequence[float],
    center: np.ndarray | Sequence[float],
    spec: NoduleSpec,
    rng: np.random.Generator,
    ground_glass: str = "plateau",
) -> Inserted:
    """Render ``spec`` into ``hu`` (in place) around ``center`` (continuous indices, any axis order).

    ``spacing`` gives each array axis's voxel size in mm, in the array's own axis order;
    ``ground_glass`` is one of ``GROUND_GLASS_RENDERINGS``. Either draws the same random numbers.
    """
    if ground_glass not in GROUND_GLASS_RENDERINGS:
        raise ValueError(f"ground_glass is {ground_glass!r}; use {' or '.join(GROUND_GLASS_RENDERINGS)}")
    spacing_mm = np.asarray(spacing, dtype=np.float64)
    center_index = np.asarray(center, dtype=np.float64)
    radius = spec.diameter_mm / 2.0
    reach = radius * 1.5 + max(spec.vessel[1] if spec.vessel else 0.0,
                               FISSURE_REACH_MM if spec.fissure is not None else 0.0)
    low = np.maximum(np.floor(center_index - reach / spacing_mm).astype(int) - 1, 0)
    high = np.minimum(np.ceil(center_index + reach / spacing_mm).astype(int) + 2, hu.shape)
    window = tuple(slice(a, b) for a, b in zip(low, high))
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(low, high)], indexing="ij")
    offset = np.stack([(g - c) * s for g, c, s in zip(grids, center_index, spacing_mm)], axis=-1)

    outer = _coverage(offset, spacing_mm, radius, spec)
    background = hu[window].copy()
    texture = ndi.gaussian_filter(rng.normal(0.0, 1.0, outer.shape), 0.7) * spec.texture_hu * 2.0
    if spec.kind == "solid":
        value = background * (1 - outer) + (spec.solid_hu + texture) * outer
    elif ground_glass == "lifted":
        value = _lifted(background, outer, spec.ground_glass_hu, texture)
    else:
        value = background * (1 - outer) + (spec.ground_glass_hu + texture) * outer
        value = np.maximum(value, background)  # vessels stay visible through ground glass
    if spec.kind == "part-solid":
        core = _coverage(offset, spacing_mm, radius * spec.core_fraction, spec)
        value = value * (1 - core) + (spec.solid_hu + texture) * core
    for sheet in _attached(offset, spacing_mm, radius, spec):
        value = np.where(VESSEL_HU > value, value + sheet * (VESSEL_HU - value), value)
    hu[window] = value.astype(hu.dtype)

    label = outer >= 0.5
    if not label.any():
        label = outer >= outer.max() * 0.5
    where = np.argwhere(label) + low
    box = (*_three_floats(where.min(axis=0) - 0.5), *_three_floats(where.max(axis=0) + 0.5))
    return Inserted(
        spec=spec,
        center_index=_three_floats(center_index),
        box=box,
        volume_mm3=float(outer.sum() * np.prod(spacing_mm)),
    )


def _lifted(background: np.ndarray, outer: np.ndarray, density_hu: float, texture: np.ndarray) -> np.ndarray:
    """Ground glass as partly filled air spaces: each aerated voxel (below ``density_hu``) keeps its
    own value, raised by the difference between ``density_hu`` and the window's median aerated
    lung, so the scan's noise, fine vessels and fissures stay; denser voxels (vessels) are left."""
    aerated = background < density_hu
    level = float(np.median(background[aerated])) if aerated.any() else density_hu
    lifted = background + (density_hu - level) + texture
    rendered: np.ndarray = np.where(aerated, background * (1 - outer) + lifted * outer, background)
    return rendered


def _coverage(offset: np.ndarray, spacing: np.ndarray, radius: float, spec: NoduleSpec) -> np.ndarray:
    """Fraction of each voxel inside the surface.

    Within a voxel the surface is taken as flat (a linear ramp across the voxel's extent); along
    a thick-slice axis that is no longer true, so the voxel is split into thin sub-slices there
    and their coverages averaged: a sphere's cap then fades over a slice as a scanner's does.
    """
    finest = float(spacing.min())
    thick = int(np.argmax(spacing))
    parts = int(min(8, np.ceil(spacing[thick] / finest))) if spacing[thick] > 1.5 * finest else 1
    if parts == 1:
        return _ramp_coverage(offset, spacing, radius, spec)
    sub = spacing.copy()
    sub[thick] = spacing[thick] / parts
    total: np.ndarray = np.zeros(offset.shape[:-1])
    for n in range(parts):
        shifted = offset.copy()
        shifted[..., thick] += (n + 0.5) * sub[thick] - spacing[thick] / 2.0
        total += _ramp_coverage(shifted, sub, radius, spec)
    return total / parts


def _ramp_coverage(offset: np.ndarray, spacing: np.ndarray, radius: float, spec: NoduleSpec) -> np.ndarray:
    scaled = offset / np.asarray(spec.axes)
    distance = np.linalg.norm(scaled, axis=-1)
    unit = scaled / np.maximum(distance, 1e-6)[..., None]
    surface = np.full(distance.shape, radius)
    for amplitude, frequency, nx, ny, nz in spec.lobes:
        phase = unit @ np.array([nx, ny, nz])
        surface += radius * amplitude * np.cos(np.pi * frequency * phase)
    signed = distance - surface
    width = np.sqrt(((unit * spacing) ** 2).sum(axis=-1))
    coverage: np.ndarray = np.clip(0.5 - signed / width, 0.0, 1.0)
    return coverage


def _attached(offset: np.ndarray, spacing: np.ndarray, radius: float, spec: NoduleSpec) -> list[np.ndarray]:
    """The coverages of what the nodule is attached to: a vessel stub, a fissure."""
    attached = []
    if spec.vessel is not None:
        attached.append(_vessel_coverage(offset, spacing, radius, spec.vessel))
    if spec.fissure is not None:
        attached.append(_fissure_coverage(offset, spacing, radius, spec.fissure))
    return attached


def _fissure_coverage(offset: np.ndarray, spacing: np.ndarray, radius: float, seed: float) -> np.ndarray:
    """A flat fissure through the nodule's centre (a perifissural nodule lies on one), a disc out to
    ``FISSURE_REACH_MM`` beyond the nodule's surface, its normal drawn from ``seed``."""
    normal = np.random.default_rng(int(seed)).normal(size=3)
    normal /= np.linalg.norm(normal)
    across = offset @ normal
    within = np.linalg.norm(offset - across[..., None] * normal, axis=-1) <= radius + FISSURE_REACH_MM
    width = float(np.sqrt((spacing**2).mean()))
    coverage: np.ndarray = np.clip(0.5 - (np.abs(across) - FISSURE_MM / 2) / width, 0.0, 1.0) * within
    return coverage


def _vessel_coverage(
    offset: np.ndarray, spacing: np.ndarray, radius: float, vessel: tuple[float, float, float, float]
) -> np.ndarray:
    """A straight vessel from the nodule's centre outward, past its surface."""
    thickness, length, seed, _ = vessel
    direction = np.random.default_rng(int(seed)).normal(size=3)
    direction /= np.linalg.norm(direction)
    along = np.clip(offset @ direction, 0.0, radius + length)
    distance = np.linalg.norm(offset - along[..., None] * direction, axis=-1)
    width = float(np.sqrt((spacing**2).mean()))
    coverage: np.ndarray = np.clip(0.5 - (distance - thickness) / width, 0.0, 1.0)
    return coverage


def pick_center(
    lungs: np.ndarray,
    spacing: np.ndarray | Sequence[float],
    spec: NoduleSpec,
    rng: np.random.Generator,
    avoid: Sequence[tuple[np.ndarray, float]] = (),
    depth_mm: np.ndarray | None = None,
) -> np.ndarray | None:
    """A centre in the lungs deep enough for the nodule (or against the pleura), away from ``avoid``.

    ``avoid`` holds (centre index, radius mm) of nodules and real tumours already there.
    ``depth_mm`` (distance to the lung border) can be passed to reuse one distance transform;
    zero in it forbids a voxel. A mediastinal mass sits shallower than a pleural one, so that a
    third to half of it lies in the mediastinum and hilum, as a central cancer's does: the caller
    passes a ``depth_mm`` that is zero except along the medial border.
    """
    spacing_mm = np.asarray(spacing, dtype=np.float64)
    depth = depth_mm if depth_mm is not None else ndi.distance_transform_edt(lungs, sampling=spacing_mm)
    radius = spec.diameter_mm / 2.0
    deepest = float(depth.max())
    if spec.attachment == "pleura":
        low, high = 0.4 * radius, max(0.8 * radius, 0.4 * radius + spacing_mm.max())
    elif spec.attachment == "mediastinum":
        low, high = 0.1 * radius, max(0.5 * radius, 0.1 * radius + spacing_mm.max())
    else:
        low = min(radius * 0.9 + 1.0, deepest * 0.7)
        high = np.inf
    candidates = np.argwhere((depth >= low) & (depth <= high))
    if len(candidates) == 0:
        return None
    for _ in range(50):
        point: np.ndarray = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, size=3)
        clear = all(
            np.linalg.norm((point - c) * spacing_mm) > radius + r + 5.0 for c, r in avoid
        )
        if clear:
            return point
    return None
