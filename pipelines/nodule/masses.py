"""The mass safety net: every solid lesion of ``MASS_MM`` or more in the lung envelope is reported,
whatever the learned scorer says of it.

A cancer against the chest wall or mediastinum is mostly surrounded by pleura and vessels, so the
lung-contact rule and a scorer trained on five patients both let it go (issue 64: "none detected"
on a 7 cm cancer). So large lesions are found by anatomy: the lung envelope (``envelope``: the
lungs closed in 3-D, back bays taken back, liver, spleen and mediastinum kept out), then a compact
solid component in it (``find``) touching enough lung and little mediastinum (tried in pieces cut
at its necks), measured as one lesion with its ground-glass halo on the source slices. The rules
step by step: docs/nodule.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image
from skimage.segmentation import watershed

from pipelines.components import component_sizes
from pipelines.distance import inside_distance
from pipelines.nodule.measure import Measurement, long_axis_mm, measure_mask, voxel_window
from pipelines.nodule.parenchyma import SHELL_MM, Parenchyma, shell
from pipelines.threads import map_on_cores
from pipelines.volume import Volume

#: The size from which a solid lesion is reported whatever the scorer says (mm, long axis of the
#: solid part on the source slices): a mass (>= 30 mm) by the Fleischner Society's glossary.
MASS_MM = 30.0
#: Solid tissue (HU, on the series smoothed by ``SMOOTHING_MM``): above ground glass and lung.
SOLID_HU = -300.0
#: Aerated lung and soft tissue (HU): a slab is solid by ``SOLID_HU`` where at least
#: (SOLID_HU - LUNG_HU) / (TISSUE_HU - LUNG_HU) = 0.62 of it is tissue (``mass_gate_mm``).
LUNG_HU = -850.0
TISSUE_HU = 40.0
SMOOTHING_MM = 1.0
#: Vessels and the pleura's thin partial-volume rims are cut off a mass by an opening this size.
OPENING_MM = 12.0
#: A component smaller than a sphere of this diameter cannot have a 30 mm long axis as a mass has
#: (a 30 mm half-sphere against the wall is a 24 mm sphere's volume); checked before measuring.
MIN_EQUIVALENT_MM = 20.0
#: A mass arises in the lung: at least this share of its shell is aerated lung (a hemisphere
#: against the chest wall: about half; a mass filling a lobe against the wall: a quarter).
MIN_LUNG_CONTACT = 0.35
#: At most this share of its shell is mediastinum (the part of the heart or aortic arch the
#: closing takes in lies against the mediastinum).
MAX_MEDIASTINAL_CONTACT = 0.3
#: A mass is compact: its volume is at least this share of the ball whose diameter is its largest
#: extent (a ball 1, a half-ball against the wall 0.5); the hilar vessels, which the closing takes
#: in, branch (0.03-0.24 on the shared scans).
MIN_FILL = 0.3
#: A mass is a lump: it holds a ball of this share of the mass gate's diameter (the smallest mass, a
#: 30 mm ball at least half in its lung, holds one of 15 mm); the rim of the mediastinum that the
#: closing takes into a lung where the mediastinum's outline is concave holds 13 mm (LOG, "A mass is a lump").
MIN_BALL_SHARE = 0.5
#: A component that fails the rule whole is tried in pieces split at its necks, from distance
#: maxima at least this far apart (mm): a mass joined to the mediastinum is a piece of its own.
PIECE_MM = 20.0
#: A component that passes whole is still reported as its main piece when that piece holds this
#: share of it and is this many times as compact (fill): a strip beside a mass adds extent, not volume.
MAIN_SHARE = 0.5
MAIN_COMPACTNESS = 1.5
#: A piece is cut out of a larger solid structure (the hilum, the arch): like any finding
#: (``parenchyma.MIN_LUNG_CONTACT``), most of what surrounds it outside that structure must be lung.
MIN_PIECE_LUNG_CONTACT = 0.5
#: A component whose median (smoothed) is above this (HU) is contrast-filled blood (a lung cancer
#: enhances to about 100-150 HU at most; iodinated arterial blood 250-400 HU), not a mass.
BLOOD_HU = 200.0
#: Ground glass around a mass (HU on the smoothed series) and how far from the solid part it counts.
GROUND_GLASS_HU = -700.0
HALO_MM = 15.0
#: Ground glass is judged on the series smoothed more (mm, sigma) and opened by a ball of
#: ``HALO_OPENING_MM``, so that the vessels beside a mass and the lung's partial-volume rims are not halo.
HALO_SMOOTHING_MM = 1.5
HALO_OPENING_MM = 6.0
#: A halo surrounds the solid part: a piece of ground glass is the mass's halo only where it alone
#: covers at least this share of the ``HALO_RING_MM`` ring of lung around the solid part (a
#: part-solid mass's band 0.86-0.90; a vessel partial-volumed beside a mass on 8 mm slices 0.12 at
#: most, a solid mass's dependent lung 0.02): a crescent over a quarter of its outline.
MIN_HALO_COVER = 0.25
HALO_RING_MM = 3.0
#: And it surrounds the solid part wherever lung does: it covers ``MIN_HALO_COVER`` of the ring in
#: each quarter (90° of axial angle around the solid part, centred in front, behind and on either
#: side) that holds this share of the ring or more. Two vessels joined beside a solid mass on B70f's
#: 8 mm slices cover 0.252 of the ring, 0.10-0.24 of two such quarters (LOG, "A halo surrounds").
MIN_QUARTER_SHARE = 0.15
#: The solid part is the mass's body: opened by a ball of this share of its thickest diameter, so
#: that the vessels, heart, fat or bone it touches beyond a neck thinner than that are cut off.
BODY_SHARE = 0.5
#: The solid part is segmented on the source slices within this distance of its coarse component.
EDGE_MM = 2.0
#: Vessels up to this thickness (mm) are cut off the solid part on the source slices.
VESSEL_CUT_MM = 4.0
#: Erosion radii (mm) tried in turn to find the two lungs' cores, and the smaller core's least
#: share of the larger (``location`` tells the lungs apart the same way, for naming a side).
CORE_RADII_MM = (0.0, 4.0, 8.0, 12.0, 16.0)
MIN_LUNG_SHARE = 0.1
#: Each lung is closed by a ball this size (radius, mm): it fills the notch of a mass centred 0.7 of
#: its radius inside the lung up to about 80 mm (more than 0.71 radius is needed), not the
#: mediastinum's broad impression (about 100 mm across and deeper). A mass in a corner of the lung
#: (lung on two sides only) is taken back only when it lies against the lung's back (``BACK_MM``).
CLOSING_MM = 30.0
#: A bay of a lung's outline (per axial slice, its convex hull less the lung) that comes this close
#: (mm) to the lung's posterior edge is lung envelope, whole.
BACK_MM = 10.0
#: Before that, the bays are split at necks narrower than this (mm, a disc's diameter): where a mass
#: has replaced the medial lung of the left lower lobe, its bay joins the heart's notch by a neck.
BAY_OPENING_MM = 15.0


@dataclass(frozen=True)
class Envelope:
    """The lung envelope and the mediastinum on the parenchyma grid (k, j, i), boolean."""

    lung: np.ndarray
    mediastinum: np.ndarray
    #: the volume (mL) of each of the two lungs, holes filled: both must be there for "none detected"
    sides_ml: tuple[float, float]


def envelope(lungs: Parenchyma, back: int = 1) -> Envelope:
    """The envelope of ``lungs``, on their grid: the lungs' own shape, no HU needed. ``back``: +1
    when rows increase towards the patient's back (as axial CT is stored), -1 when they decrease."""
    filled = np.stack(map_on_cores(ndi.binary_fill_holes, list(lungs.aerated)))
    columns = np.flatnonzero(filled.any(axis=(0, 1)))
    if not len(columns):
        empty = np.zeros(filled.shape, dtype=bool)
        return Envelope(empty, empty, (0.0, 0.0))
    two = _two_lungs(lungs.aerated, filled, lungs.spacing)
    first, second = (_with_back_bays(side, lungs.spacing, back) for side in two)
    closed = _closed(first, lungs.spacing) | _closed(second, lungs.spacing)
    mediastinum = (_between(first, second) & ~closed) | lungs.airways
    lung = (closed | filled) & _column_span(lungs.aerated) & ~mediastinum
    voxel_ml = float(np.prod(lungs.spacing)) / 1000.0
    sides = (float(two[0].sum() * voxel_ml), float(two[1].sum() * voxel_ml))
    return Envelope(lung, mediastinum, sides)


def _two_lungs(aerated: np.ndarray, filled: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two lungs (holes filled), the one at lower column indices first.

    Without airways they are often two pieces already (radius 0); else the first of
    ``CORE_RADII_MM`` leaving two large cores (``MIN_LUNG_SHARE``) splits them, each voxel to the
    nearer core. With no two cores the second is empty (a lung collapsed or out of view, or two
    fused): "both lungs examined" is not claimed."""
    depth: np.ndarray | None = None
    for radius in CORE_RADII_MM:
        if radius == 0:
            pieces, count = ndi.label(aerated)
        else:
            depth = ndi.distance_transform_edt(aerated, sampling=spacing) if depth is None else depth
            pieces, count = ndi.label(depth > radius)
        if count < 2:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        one, two = (int(n) + 1 for n in np.argsort(sizes)[::-1][:2])
        if sizes[two - 1] < MIN_LUNG_SHARE * sizes[one - 1]:
            continue
        if radius == 0:  # the pieces are the lungs: each with its own holes (vessels) filled
            first, second = (np.stack([ndi.binary_fill_holes(plane) for plane in pieces == n]) for n in (one, two))
        else:
            cores = (pieces == one) | (pieces == two)
            nearest = ndi.distance_transform_edt(~cores, sampling=spacing, return_distances=False,
                                                 return_indices=True)
            owner = pieces[tuple(nearest)]
            first, second = filled & (owner == one), filled & (owner == two)
        if np.argwhere(first)[:, 2].mean() > np.argwhere(second)[:, 2].mean():
            first, second = second, first
        return first, second
    return filled, np.zeros_like(filled)


def _with_back_bays(lung: np.ndarray, spacing: np.ndarray, back: int) -> np.ndarray:
    """``lung`` with, per axial slice, each bay of its outline (its convex hull less the lung, split
    at its necks by ``_bay_pieces``) that comes within ``BACK_MM`` of the hull's posterior edge: a
    mass in the lung's back corner fills such a bay, where the 3-D closing cannot take it back (lung
    on two sides only). The heart's notch lies in front of the lung's back: the whole hull takes the
    heart in, and so would a mass bay joined to the notch by a neck (docs/nodule.md)."""
    out = lung.copy()
    reach = BACK_MM / spacing[1]

    def add_back_bays(k: int) -> None:  # slices are independent: each thread fills its own
        box = _lung_box(lung[k])
        plane = lung[k][box]
        hull = convex_hull_image(plane)
        bays, count = _bay_pieces(hull & ~plane, spacing[1:])
        if count == 0:
            return
        rows = np.broadcast_to(back * np.arange(bays.shape[0])[:, None], bays.shape)
        deepest = np.asarray(ndi.maximum(rows, bays, index=np.arange(1, count + 1)))
        keep = np.flatnonzero(deepest >= rows[hull].max() - reach) + 1
        out[k][box] |= np.isin(bays, keep)

    map_on_cores(add_back_bays, np.flatnonzero(lung.any(axis=(1, 2))).tolist())
    return out


def _lung_box(plane: np.ndarray) -> tuple[slice, slice]:
    """The lung's bounding box on one slice with one empty pixel around it (where the slice has
    one): hull, bays and their distance maps all lie inside it, so working on it gives what the
    whole slice gives, in a fraction of the time."""
    where = np.argwhere(plane)
    low, high = where.min(axis=0) - 1, where.max(axis=0) + 2
    return slice(max(int(low[0]), 0), int(high[0])), slice(max(int(low[1]), 0), int(high[1]))


def _bay_pieces(bays: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, int]:
    """The bays of one slice split at necks narrower than ``BAY_OPENING_MM``: the bays opened by a
    disc that size give the pieces, and what the opening shaved off goes to the piece it floods
    from within the bay (its rim; a neck is shared out between the pieces it joins). A bay too
    narrow to keep anything after the opening is a piece of its own, as it is."""
    pieces, count = ndi.label(_opened(bays, spacing, BAY_OPENING_MM))
    owned = watershed(np.zeros(bays.shape, dtype=np.uint8), pieces, mask=bays)
    narrow, more = ndi.label(bays & (owned == 0))
    owned[narrow > 0] = narrow[narrow > 0] + count
    return owned, count + more


def _closed(lung: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """One lung closed by a ball of radius ``CLOSING_MM`` (distance maps, on its bounding box
    padded with empty voxels, so that the volume's edges do not close it)."""
    if not lung.any():
        return lung
    margin = np.ceil(CLOSING_MM / spacing).astype(int) + 1
    where = np.argwhere(lung)
    low, high = where.min(axis=0), where.max(axis=0) + 1
    crop = tuple(slice(int(x), int(y)) for x, y in zip(low, high))
    padded = np.pad(lung[crop], [(int(m), int(m)) for m in margin])
    grown = inside_distance(~padded, spacing) <= CLOSING_MM
    shrunk = inside_distance(grown, spacing) > CLOSING_MM
    closed = lung.copy()
    closed[crop] |= shrunk[tuple(slice(int(m), int(m) + int(y - x)) for m, x, y in zip(margin, low, high))]
    return closed


def _between(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per slice and row where both lungs are: the columns after ``first``'s last, before ``second``'s first."""
    both = np.asarray(first.any(axis=2) & second.any(axis=2), dtype=bool)
    width = first.shape[2]
    last = width - 1 - np.argmax(first[..., ::-1], axis=2)
    start = np.argmax(second, axis=2)
    column = np.arange(width)[None, None, :]
    between: np.ndarray = both[..., None] & (column > last[..., None]) & (column < start[..., None])
    return between


def _column_span(filled: np.ndarray) -> np.ndarray:
    """Per column (j, i): the slices from its first to its last lung voxel."""
    present = np.asarray(filled.any(axis=0), dtype=bool)
    top = np.argmax(filled, axis=0)
    bottom = filled.shape[0] - 1 - np.argmax(filled[::-1], axis=0)
    k = np.arange(filled.shape[0])[:, None, None]
    span: np.ndarray = present[None] & (k >= top[None]) & (k <= bottom[None])
    return span


@dataclass(frozen=True)
class Mass:
    """A mass found by the safety net: its segmentation on the source slices, its surroundings
    (``Segment``) and its shell's contacts."""

    measured: Measurement
    surroundings: Measurement
    lung_contact: float
    mediastinal_contact: float
    fill: float


def find(volume: Volume, lungs: Parenchyma) -> tuple[list[Mass], Envelope]:
    """The masses of ``volume`` (the series as the detector sees it) in the lung envelope.

    Worked on the lungs' bounding box (and a shell's width around it): nothing of the envelope
    lies outside it. The envelope returned is on that box."""
    stride = lungs.stride
    shape = lungs.aerated.shape
    hu = volume.array[:: stride[0], :: stride[1], :: stride[2]][: shape[0], : shape[1], : shape[2]]
    where = np.argwhere(lungs.aerated)
    if not len(where):
        empty = np.zeros((1, 1, 1), dtype=bool)
        return [], Envelope(empty, empty, (0.0, 0.0))
    margin = np.ceil(SHELL_MM / lungs.spacing).astype(int) + 1
    low = np.maximum(where.min(axis=0) - margin, 0)
    high = np.minimum(where.max(axis=0) + margin + 1, shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    lungs = dataclasses.replace(lungs, aerated=lungs.aerated[crop], airways=lungs.airways[crop])
    hu = hu[crop]
    around = envelope(lungs, _back(volume))
    smooth = ndi.gaussian_filter(hu.astype(np.float32), SMOOTHING_MM / lungs.spacing)
    solid = (smooth > SOLID_HU) & around.lung
    opened = _opened(solid, lungs.spacing, OPENING_MM)
    labels, count = ndi.label(opened)
    if count == 0:
        return [], around
    voxel_mm3 = float(np.prod(lungs.spacing))
    smallest = np.pi / 6 * MIN_EQUIVALENT_MM**3 / voxel_mm3
    sizes = component_sizes(labels, count)
    masses = []
    for n, where in enumerate(ndi.find_objects(labels), start=1):
        if where is None or sizes[n - 1] < smallest:
            continue
        component = labels == n
        if np.median(smooth[component]) > BLOOD_HU:  # the aorta's contrast-filled lumen the closing took in
            continue
        found = _component_mass(volume, lungs, around, component, low, smallest)
        if found is not None:
            masses.append(found)
    return masses, around


def _component_mass(volume: Volume, lungs: Parenchyma, around: Envelope, component: np.ndarray,
                    offset: np.ndarray, smallest: float) -> Mass | None:
    """The mass ``component`` holds, if any: its compact main piece when it has one
    (``_main_piece``), else the whole, else the piece most surrounded by lung."""
    pieces = _pieces(component, lungs.spacing, smallest)
    main = _main_piece(component, pieces, lungs.spacing)
    if main is not None:
        found = _mass(volume, lungs, around, main, offset, component & ~main)
        if found is not None:
            return found
    found = _mass(volume, lungs, around, component, offset)
    if found is None:
        tried = [_mass(volume, lungs, around, piece, offset, component & ~piece) for piece in pieces]
        found = max((m for m in tried if m is not None), key=lambda m: m.lung_contact, default=None)
    return found


def _main_piece(component: np.ndarray, pieces: list[np.ndarray], spacing: np.ndarray) -> np.ndarray | None:
    """The piece holding ``MAIN_SHARE`` of ``component`` and ``MAIN_COMPACTNESS`` times its fill,
    if one does: a mass with thin strips (pleura, the envelope's edge) attached, not a lobe of an
    irregular mass (whose pieces are as compact as the whole)."""
    whole = _fill(component, spacing)
    for piece in pieces:
        if piece.sum() >= MAIN_SHARE * component.sum() and _fill(piece, spacing) >= MAIN_COMPACTNESS * whole:
            return piece
    return None


def _fill(mask: np.ndarray, spacing: np.ndarray) -> float:
    """``mask``'s volume as a share of the ball whose diameter is its largest extent."""
    where = np.argwhere(mask)
    extent_mm = float(np.max((where.max(axis=0) - where.min(axis=0) + 1) * spacing))
    return float(len(where) * np.prod(spacing) / (np.pi / 6 * extent_mm**3))


def _ball_mm(mask: np.ndarray, spacing: np.ndarray) -> float:
    """The diameter (mm) of the largest ball ``mask`` holds: a sheet's thickness, a lump's width."""
    where = np.argwhere(mask)
    crop = tuple(slice(int(a), int(b) + 1) for a, b in zip(where.min(axis=0), where.max(axis=0)))
    return 2.0 * float(inside_distance(np.pad(mask[crop], 1), spacing).max())


def _back(volume: Volume) -> int:
    """+1 when ``volume``'s rows run towards the patient's back (LPS +y), else -1."""
    ends = volume.kji_to_lps(np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    return 1 if ends[1, 1] >= ends[0, 1] else -1


def _mass(volume: Volume, lungs: Parenchyma, around: Envelope, component: np.ndarray, offset: np.ndarray,
          rest: np.ndarray | None = None) -> Mass | None:
    """``component`` (or a piece of one, the rest of it in ``rest``) as a mass when it is one by
    this module's rule, else None; ``offset``: the crop's first voxel on the parenchyma grid."""
    fill = _fill(component, lungs.spacing)
    if fill < MIN_FILL or _ball_mm(component, lungs.spacing) < MIN_BALL_SHARE * mass_gate_mm(volume):
        return None
    lung_contact, mediastinal = _contacts(component, lungs, around, rest)
    if lung_contact < (MIN_LUNG_CONTACT if rest is None else MIN_PIECE_LUNG_CONTACT) or mediastinal > MAX_MEDIASTINAL_CONTACT:
        return None
    found = segment(volume, lungs, around, component, offset)
    if found is None or (found.measured.solid_diameter_mm or 0.0) < mass_gate_mm(volume):
        return None
    return Mass(found.measured, found.surroundings, lung_contact, mediastinal, fill)


def mass_gate_mm(volume: Volume) -> float:
    """The solid long axis a ball of ``MASS_MM`` measures at worst on ``volume``'s slices.

    A slab of thickness T is solid where at least f (0.62) of it is tissue, so a ball's widest
    solid chord is 2 sqrt(R^2 - (f T)^2) when the slab's face passes through its middle: 29.96 mm
    on 1.25 mm slices, 29.4 on 5 mm, 28.3 on 8 mm. Gating at that keeps a 30 mm mass a mass on thick
    slices (LOG, "A 30 mm mass on thick slices is still a mass")."""
    thickness = volume.slice_mm
    share = (SOLID_HU - LUNG_HU) / (TISSUE_HU - LUNG_HU)
    radius = MASS_MM / 2.0
    return 2.0 * math.sqrt(max(radius**2 - (share * thickness) ** 2, 0.0))


def _pieces(component: np.ndarray, spacing: np.ndarray, smallest: float) -> list[np.ndarray]:
    """``component`` split at the necks of its distance map (a watershed from maxima at least
    ``PIECE_MM`` apart and ``OPENING_MM`` / 2 deep): a mass joined to a strip of the mediastinum
    or the heart that the closing took in is a piece of its own. Pieces below ``smallest`` voxels
    are left out."""
    where = np.argwhere(component)
    low, high = where.min(axis=0), where.max(axis=0) + 1
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    depth = ndi.distance_transform_edt(np.pad(component[crop], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    size = tuple(int(n) for n in np.maximum(np.round(PIECE_MM / spacing) // 2 * 2 + 1, 3))
    peaks = (depth == ndi.maximum_filter(depth, size=size)) & (depth >= OPENING_MM / 2)
    markers, count = ndi.label(peaks)
    if count < 2:
        return []
    pieces = watershed(-depth, markers, mask=component[crop])
    out = []
    for n in range(1, count + 1):
        piece = pieces == n
        if piece.sum() >= smallest:
            full = np.zeros_like(component)
            full[crop] = piece
            out.append(full)
    return out


def _opened(mask: np.ndarray, spacing: np.ndarray, diameter_mm: float) -> np.ndarray:
    """``mask`` opened by a ball of ``diameter_mm`` (distance maps, physical on any voxel)."""
    radius = diameter_mm / 2.0
    core = ndi.distance_transform_edt(mask, sampling=spacing) > radius
    opened: np.ndarray = (ndi.distance_transform_edt(~core, sampling=spacing) <= radius) & mask
    return opened


def _contacts(component: np.ndarray, lungs: Parenchyma, around: Envelope,
              rest: np.ndarray | None = None) -> tuple[float, float]:
    """Shares of the ``SHELL_MM`` shell around ``component`` that are aerated lung and mediastinum;
    a piece of a larger component is judged by what surrounds it outside that component (``rest``)."""
    margin = np.ceil(SHELL_MM / lungs.spacing).astype(int) + 1
    where = np.argwhere(component)
    low = np.maximum(where.min(axis=0) - margin, 0)
    high = np.minimum(where.max(axis=0) + margin + 1, component.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    ring = shell(component[crop], lungs.spacing)
    if rest is not None:
        ring &= ~rest[crop]
    if not ring.any():
        return 0.0, 0.0
    return float(lungs.aerated[crop][ring].mean()), float(around.mediastinum[crop][ring].mean())


@dataclass(frozen=True)
class Segment:
    """A mass on the source slices: ``measured``, its solid part and its halo (the solid part's long
    axis kept); ``surroundings``, that with every piece of ground glass around it, halo or not: a
    finding there is the mass's spicule or vessel, not a lesion of its own."""

    measured: Measurement
    surroundings: Measurement


def segment(volume: Volume, lungs: Parenchyma, around: Envelope, component: np.ndarray,
            offset: np.ndarray) -> Segment | None:
    """The mass on the source slices: its solid part (near the coarse ``component``, in the
    envelope) and the ground glass around it (``Segment``).
    ``component`` and the envelope are on a crop of the parenchyma grid starting at ``offset``."""
    stride = lungs.stride
    spacing_kji = np.asarray(volume.spacing[::-1], dtype=np.float64)
    reach = np.ceil((HALO_MM + EDGE_MM) / spacing_kji).astype(int) + stride
    where = np.argwhere(component) + offset
    start = np.maximum(where.min(axis=0) * stride - reach, 0)
    stop = np.minimum((where.max(axis=0) + 1) * stride + reach, volume.array.shape)
    window = voxel_window(start, stop)
    coarse = tuple(np.clip(np.arange(a, b) // s - o, 0, n - 1)
                   for a, b, s, o, n in zip(start, stop, stride, offset, component.shape))
    inside = around.lung[np.ix_(*coarse)]
    seed = component[np.ix_(*coarse)]
    hu = ndi.gaussian_filter(volume.array[window].astype(np.float32), SMOOTHING_MM / spacing_kji)
    near = ndi.distance_transform_edt(~seed, sampling=spacing_kji) <= EDGE_MM
    solid = _body(_connected_to(_opened((hu > SOLID_HU) & inside & near, spacing_kji, VESSEL_CUT_MM), seed),
                  seed, spacing_kji, mass_gate_mm(volume))
    if not solid.any():
        return None
    glass, halo = _ground_glass(hu, solid, inside, spacing_kji)
    whole = _connected_to(halo | solid, solid)
    measured = measure_mask(volume, window, whole)
    return Segment(dataclasses.replace(measured, solid_diameter_mm=long_axis_mm(solid, spacing_kji)),
                   measure_mask(volume, window, _connected_to(glass | solid, solid)))


def _body(solid: np.ndarray, seed: np.ndarray, spacing: np.ndarray, gate_mm: float) -> np.ndarray:
    """``solid`` opened by a ball of ``BODY_SHARE`` of its thickest diameter, the part holding
    ``seed`` when that is still a mass (``gate_mm``): a mass is a ball or half-ball, a structure the
    closing took in beside it (the aorta, the heart) joins it by a neck (LOG, "The mass's body")."""
    diameter = BODY_SHARE * 2.0 * float(ndi.distance_transform_edt(solid, sampling=spacing).max())
    if diameter <= VESSEL_CUT_MM:
        return solid
    body = _connected_to(_opened(solid, spacing, diameter), seed)
    return body if long_axis_mm(body, spacing) >= gate_mm else solid


def _ground_glass(hu: np.ndarray, solid: np.ndarray, inside: np.ndarray,
                  spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ground glass around ``solid`` (within ``HALO_MM``, opened), and its halo: the pieces
    that each cover at least ``MIN_HALO_COVER`` of the lung right around ``solid``, in every quarter
    where lung is (``_surrounds``). A smaller piece is the lung's own dependent or partial-volume
    density, or a vessel beside the mass smeared by a thick slice (LOG, "A halo is one piece"):
    summed, such pieces can cover as much as a halo does; joined, two of them lie on one side."""
    gap = ndi.distance_transform_edt(~solid, sampling=spacing)
    blurred = ndi.gaussian_filter(hu, HALO_SMOOTHING_MM / spacing)
    glass = _opened((blurred > GROUND_GLASS_HU) & (hu <= SOLID_HU) & inside & (gap <= HALO_MM), spacing,
                    HALO_OPENING_MM)
    ring = (gap > 0) & (gap <= HALO_RING_MM) & inside & (hu <= SOLID_HU)
    pieces, count = ndi.label(glass)
    if not ring.any() or count == 0:
        return glass, np.zeros_like(glass)
    cover = np.bincount(pieces[ring], minlength=count + 1)[1:] / ring.sum()
    surrounding = (cover >= MIN_HALO_COVER) & _surrounds(pieces, count, ring, solid, spacing)
    halo: np.ndarray = np.isin(pieces, np.flatnonzero(surrounding) + 1)
    return glass, halo


def _surrounds(pieces: np.ndarray, count: int, ring: np.ndarray, solid: np.ndarray,
               spacing: np.ndarray) -> np.ndarray:
    """Per piece (labels 1..``count``): whether it covers ``MIN_HALO_COVER`` of ``ring`` in every
    quarter around ``solid`` that holds ``MIN_QUARTER_SHARE`` of the ring."""
    where = np.argwhere(ring)
    centre = np.argwhere(solid).mean(axis=0)
    angle = np.arctan2((where[:, 1] - centre[1]) * spacing[1], (where[:, 2] - centre[2]) * spacing[2])
    quarter = np.floor((angle + np.pi + np.pi / 4) / (np.pi / 2)).astype(int) % 4
    labels = pieces[tuple(where.T)]
    held = np.bincount(quarter, minlength=4)
    covered = np.zeros((count + 1, 4))
    np.add.at(covered, (labels, quarter), 1.0)
    facing = held >= MIN_QUARTER_SHARE * len(where)
    shares = covered[1:, facing] / held[facing]
    result: np.ndarray = np.asarray((shares >= MIN_HALO_COVER).all(axis=1))
    return result


def _connected_to(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The components of ``mask`` that hold a voxel of ``seed``."""
    labels, _ = ndi.label(mask)
    keep = np.unique(labels[seed & mask])
    kept: np.ndarray = np.isin(labels, keep[keep > 0])
    return kept
