"""LIDC-IDRI reader XML -> per-reader nodule masks, consensus lesions and "ignore" regions.

Each LIDC-IDRI scan was read by four radiologists (blinded, then unblinded). Per reader the XML
(``LidcReadMessage``, one ``readingSession`` per reader) holds:

- ``unblindedReadNodule`` with ``roi`` contours per slice: a nodule >= 3 mm. Each roi names its
  slice by SOP Instance UID (and z position) and is an inclusion contour or, with
  ``<inclusion>FALSE</inclusion>``, an exclusion (a hole, e.g. air inside the nodule). The LIDC
  reader instructions asked for outlines drawn just *outside* the nodule, so the outline pixels
  themselves are not nodule: a slice's mask is the polygon's interior without its outline.
- ``unblindedReadNodule`` with a single one-point roi: a nodule < 3 mm (its centre only).
- ``nonNodule``: a point on something the reader judged not to be a nodule (>= 3 mm).

LIDC studies call a lesion real when at least two readers contoured it, after grouping the
readers' nodules that lie on the same lesion (the readers' IDs are unrelated). Here two
contoured nodules of different readers are the same lesion when their masks share a voxel or
their centres lie closer than half the larger one's long axis; groups are the connected components
of that relation. The consensus mask is pylidc's 50 % level: voxels in at least half of the
group's readers' masks.

Everything else a reader marked (single-reader nodules, small-nodule points, non-nodule marks)
is an *ignore* region: a detection there is neither a true nor a false positive, and training
never takes it as background.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import polygon as fill_polygon

from pipelines.nodule.measure import long_axis_mm
from pipelines.volume import Volume

_NS = {"lidc": "http://www.nih.gov"}
#: Readers needed for a lesion to count (the usual LIDC consensus).
MIN_READERS = 2
#: Share of a group's readers that must include a voxel for the consensus mask (pylidc's clevel).
CONSENSUS_LEVEL = 0.5
#: A slice is matched by z position when its SOP Instance UID is not in the series, within this.
Z_TOLERANCE_MM = 0.6
#: Radius of the ignore sphere around a point mark (a < 3 mm nodule or a non-nodule mark of any
#: size: the mark is one point on it, so the sphere is generous).
SMALL_NODULE_IGNORE_MM = 5.0
NON_NODULE_IGNORE_MM = 10.0


class LidcError(ValueError):
    """The XML does not belong to this series or cannot be read; the message says what to check."""


@dataclass(frozen=True)
class Contour:
    """One roi: the outline's pixel (column x, row y) vertices on one slice."""

    sop_instance_uid: str
    z_mm: float
    inclusion: bool
    xy: np.ndarray  # (n, 2) int


@dataclass(frozen=True)
class ReaderNodule:
    """A nodule as one reader marked it: contours (>= 3 mm) or a single point (< 3 mm)."""

    reader: int
    nodule_id: str
    contours: tuple[Contour, ...]

    @property
    def is_point(self) -> bool:
        """True for a < 3 mm nodule, which LIDC marks by its centre only."""
        return len(self.contours) == 1 and len(self.contours[0].xy) == 1


@dataclass(frozen=True)
class Mark:
    """A point mark (a small nodule or a non-nodule) on one slice."""

    reader: int
    sop_instance_uid: str
    z_mm: float
    xy: tuple[int, int]


@dataclass(frozen=True)
class Reading:
    """All four readers' marks of one scan."""

    series_instance_uid: str
    nodules: tuple[ReaderNodule, ...]
    non_nodules: tuple[Mark, ...]
    readers: int


@dataclass
class ReaderMask:
    """One reader's contoured nodule as a 3-D mask on the source volume (window + boolean mask)."""

    reader: int
    nodule_id: str
    window: tuple[slice, slice, slice]
    mask: np.ndarray
    center_lps: np.ndarray
    diameter_mm: float
    volume_mm3: float

    def full(self, shape: tuple[int, ...]) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        out[self.window] = self.mask
        return out


@dataclass
class Lesion:
    """A consensus lesion: the readers' masks, the 50 % consensus mask and its LPS box."""

    readers: list[ReaderMask]
    window: tuple[slice, slice, slice]
    mask: np.ndarray
    lps_box: np.ndarray  # [[min x y z], [max x y z]], voxel edges
    diameter_mm: float
    volume_mm3: float
    center_lps: np.ndarray = field(default_factory=lambda: np.zeros(3))

    @property
    def readers_mean_diameter_mm(self) -> float:
        return float(np.mean([r.diameter_mm for r in self.readers]))

    @property
    def readers_mean_volume_mm3(self) -> float:
        return float(np.mean([r.volume_mm3 for r in self.readers]))


@dataclass(frozen=True)
class IgnoreRegion:
    """Where a reader marked something that is not a consensus lesion: LPS box and why."""

    lps_box: np.ndarray
    reason: str  # "single reader", "small nodule", "non-nodule"


@dataclass
class Annotation:
    """What the readers agree on in one scan, and where detections must not be scored."""

    lesions: list[Lesion]
    ignore: list[IgnoreRegion]
    reader_masks: list[ReaderMask]


def xml_path(series_folder: Path) -> Path:
    """The LIDC XML beside a scan's ``ct/`` folder (the shared data's layout)."""
    found = sorted(series_folder.parent.glob("*.xml"))
    if len(found) != 1:
        raise LidcError(f"expected one LIDC XML beside {series_folder}, found {len(found)}")
    return found[0]


def read(path: Path) -> Reading:
    """Parse a ``LidcReadMessage`` XML into its readers' nodules and non-nodule marks."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise LidcError(f"{path} is not readable XML: {exc}") from exc
    sessions = root.findall("lidc:readingSession", _NS)
    if not sessions:
        raise LidcError(f"{path} has no readingSession: is it an LIDC-IDRI LidcReadMessage?")
    nodules, marks = [], []
    for reader, session in enumerate(sessions):
        for nodule in session.findall("lidc:unblindedReadNodule", _NS):
            contours = tuple(_contour(roi) for roi in nodule.findall("lidc:roi", _NS))
            if contours:
                nodules.append(ReaderNodule(reader, _text(nodule, "lidc:noduleID"), contours))
        for mark in session.findall("lidc:nonNodule", _NS):
            locus = mark.find("lidc:locus", _NS)
            if locus is None:
                raise LidcError("LIDC XML element <nonNodule> has no <locus>")
            marks.append(Mark(
                reader, _text(mark, "lidc:imageSOP_UID"), float(_text(mark, "lidc:imageZposition")),
                (int(_text(locus, "lidc:xCoord")), int(_text(locus, "lidc:yCoord"))),
            ))
    header = root.find("lidc:ResponseHeader", _NS)
    series = _text(header, "lidc:SeriesInstanceUid") if header is not None else ""
    return Reading(series, tuple(nodules), tuple(marks), len(sessions))


def annotate(volume: Volume, reading: Reading) -> Annotation:
    """Consensus lesions (>= ``MIN_READERS`` readers) and ignore regions on ``volume``'s grid."""
    series = str(getattr(volume.sources[0], "SeriesInstanceUID", ""))
    if reading.series_instance_uid and reading.series_instance_uid != series:
        raise LidcError("the LIDC XML names another series than the one loaded: pass the XML that "
                        "sits beside this scan's images")
    slices = _slice_lookup(volume)
    filled = [_reader_mask(volume, n, slices) for n in reading.nodules if not n.is_point]
    masks = [m for m in filled if m is not None]
    groups = _group(masks, volume.array.shape)
    lesions, ignore = [], []
    for group in groups:
        if len({masks[n].reader for n in group}) >= MIN_READERS:
            lesions.append(_consensus(volume, [masks[n] for n in group]))
        else:
            ignore += [IgnoreRegion(_mask_box(volume, masks[n].window, masks[n].mask), "single reader") for n in group]
    for nodule in reading.nodules:
        if nodule.is_point:
            c = nodule.contours[0]
            ignore.append(_sphere_box(volume, slices, c.sop_instance_uid, c.z_mm, tuple(c.xy[0]),
                                      SMALL_NODULE_IGNORE_MM, "small nodule"))
    for mark in reading.non_nodules:
        ignore.append(_sphere_box(volume, slices, mark.sop_instance_uid, mark.z_mm, mark.xy,
                                  NON_NODULE_IGNORE_MM, "non-nodule"))
    lesions.sort(key=lambda les: -les.diameter_mm)
    return Annotation(lesions, ignore, masks)


def load_annotation(volume: Volume, series_folder: Path) -> Annotation:
    return annotate(volume, read(xml_path(series_folder)))


def _text(element: ET.Element, tag: str) -> str:
    found = element.find(tag, _NS)
    if found is None or found.text is None:
        raise LidcError(f"LIDC XML element <{element.tag.split('}')[-1]}> has no <{tag.split(':')[-1]}>")
    return found.text.strip()


def _contour(roi: ET.Element) -> Contour:
    xy = np.array([[int(_text(e, "lidc:xCoord")), int(_text(e, "lidc:yCoord"))]
                   for e in roi.findall("lidc:edgeMap", _NS)], dtype=int)
    return Contour(_text(roi, "lidc:imageSOP_UID"), float(_text(roi, "lidc:imageZposition")),
                   _text(roi, "lidc:inclusion").upper() == "TRUE", xy.reshape(-1, 2))


#: SOP Instance UID -> slice index, and each slice's position along the slice normal (mm)
SliceLookup = tuple[dict[str, int], np.ndarray]


def _slice_lookup(volume: Volume) -> SliceLookup:
    """SOP Instance UID -> slice index, and each slice's position along the slice normal."""
    uids = {uid: k for k, uid in enumerate(volume.sop_instance_uids)}
    z = np.array([volume.slice_position(k)[2] for k in range(volume.array.shape[0])])
    return uids, z


def _slice_of(slices: SliceLookup, uid: str, z_mm: float) -> int | None:
    """The slice an roi is drawn on: by SOP Instance UID, else by z position (LIDC gives both)."""
    uids, z = slices
    if uid in uids:
        return uids[uid]
    nearest = int(np.argmin(np.abs(z - z_mm)))
    return nearest if abs(z[nearest] - z_mm) <= Z_TOLERANCE_MM else None


def _reader_mask(volume: Volume, nodule: ReaderNodule, slices: SliceLookup) -> ReaderMask | None:
    """The reader's contours filled slice by slice: interiors of inclusion contours without their
    outlines, minus exclusion contours (outline included, since it bounds what is cut out)."""
    shape = volume.array.shape
    planes: dict[int, np.ndarray] = {}
    for contour in sorted(nodule.contours, key=lambda c: not c.inclusion):  # inclusions first
        k = _slice_of(slices, contour.sop_instance_uid, contour.z_mm)
        if k is None:
            raise LidcError(
                f"reader {nodule.reader + 1} nodule {nodule.nodule_id}: slice {contour.sop_instance_uid} "
                f"(z {contour.z_mm}) is not in this series: is the XML for another series?"
            )
        plane = planes.setdefault(k, np.zeros(shape[1:], dtype=bool))
        rows, cols = fill_polygon(contour.xy[:, 1], contour.xy[:, 0], shape[1:])
        outline = np.zeros(shape[1:], dtype=bool)
        outline[np.clip(contour.xy[:, 1], 0, shape[1] - 1), np.clip(contour.xy[:, 0], 0, shape[2] - 1)] = True
        if contour.inclusion:
            inside = np.zeros(shape[1:], dtype=bool)
            inside[rows, cols] = True
            inside &= ~outline
            plane |= inside if inside.any() else outline  # a tiny outline is all there is
        else:
            plane[rows, cols] = False
            plane &= ~outline
    if not planes or not any(p.any() for p in planes.values()):
        return None
    ks = sorted(planes)
    stack = np.zeros((ks[-1] - ks[0] + 1, *shape[1:]), dtype=bool)
    for k, plane in planes.items():
        stack[k - ks[0]] = plane
    window, mask = _crop(stack, ks[0])
    return _measured(volume, nodule.reader, nodule.nodule_id, window, mask)


def _crop(stack: np.ndarray, k0: int) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    where = np.argwhere(stack)
    low, high = where.min(axis=0), where.max(axis=0) + 1
    window = (slice(k0 + low[0], k0 + high[0]), slice(low[1], high[1]), slice(low[2], high[2]))
    return window, stack[low[0]:high[0], low[1]:high[1], low[2]:high[2]]


def _measured(volume: Volume, reader: int, nodule_id: str, window: tuple[slice, slice, slice],
              mask: np.ndarray) -> ReaderMask:
    spacing_kji = np.asarray(volume.spacing[::-1])
    start = np.array([s.start for s in window])
    centre = volume.kji_to_lps(np.array(ndi.center_of_mass(mask)) + start)
    return ReaderMask(reader, nodule_id, window, mask, centre, long_axis_mm(mask, spacing_kji),
                      float(mask.sum() * np.prod(spacing_kji)))


def _group(masks: list[ReaderMask], shape: tuple[int, ...]) -> list[list[int]]:
    """Connected components of "same lesion": masks sharing a voxel, or centres closer than half
    the larger long axis. Only nodules of different readers are linked directly."""
    n = len(masks)
    parent = list(range(n))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a in range(n):
        for b in range(a + 1, n):
            if masks[a].reader == masks[b].reader:
                continue
            near = np.linalg.norm(masks[a].center_lps - masks[b].center_lps) < 0.5 * max(
                masks[a].diameter_mm, masks[b].diameter_mm)
            if near or _overlap(masks[a], masks[b]):
                parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for a in range(n):
        groups.setdefault(root(a), []).append(a)
    return list(groups.values())


def _overlap(a: ReaderMask, b: ReaderMask) -> bool:
    low = [max(x.start, y.start) for x, y in zip(a.window, b.window)]
    high = [min(x.stop, y.stop) for x, y in zip(a.window, b.window)]
    if any(h <= lo for lo, h in zip(low, high)):
        return False
    cut_a = tuple(slice(lo - w.start, h - w.start) for lo, h, w in zip(low, high, a.window))
    cut_b = tuple(slice(lo - w.start, h - w.start) for lo, h, w in zip(low, high, b.window))
    return bool((a.mask[cut_a] & b.mask[cut_b]).any())


def _consensus(volume: Volume, members: list[ReaderMask]) -> Lesion:
    """The group's readers' masks voted voxel by voxel (one vote per reader, at ``CONSENSUS_LEVEL``)."""
    low = np.min([[s.start for s in m.window] for m in members], axis=0)
    high = np.max([[s.stop for s in m.window] for m in members], axis=0)
    k, j, i = (slice(int(a), int(b)) for a, b in zip(low, high))
    window = (k, j, i)
    by_reader: dict[int, np.ndarray] = {}
    for m in members:
        local = tuple(slice(s.start - int(a), s.stop - int(a)) for s, a in zip(m.window, low))
        vote = by_reader.setdefault(m.reader, np.zeros(tuple(high - low), dtype=bool))
        vote[local] |= m.mask
    votes = np.sum(list(by_reader.values()), axis=0)
    mask = votes >= CONSENSUS_LEVEL * len(by_reader)
    measured = _measured(volume, -1, "consensus", window, mask)
    return Lesion(
        readers=members, window=window, mask=mask, lps_box=_mask_box(volume, window, mask),
        diameter_mm=measured.diameter_mm, volume_mm3=measured.volume_mm3, center_lps=measured.center_lps,
    )


def _mask_box(volume: Volume, window: tuple[slice, slice, slice], mask: np.ndarray) -> np.ndarray:
    """The LPS box of a mask's voxels, to their outer edges."""
    where = np.argwhere(mask) + np.array([s.start for s in window])
    low, high = where.min(axis=0) - 0.5, where.max(axis=0) + 0.5
    corners = np.array([[k, j, i] for k in (low[0], high[0]) for j in (low[1], high[1]) for i in (low[2], high[2])])
    lps = volume.kji_to_lps(corners)
    return np.array([lps.min(axis=0), lps.max(axis=0)])


def _sphere_box(volume: Volume, slices: SliceLookup, uid: str, z_mm: float,
                xy: tuple[int, int], radius_mm: float, reason: str) -> IgnoreRegion:
    k = _slice_of(slices, uid, z_mm)
    if k is None:
        k = int(np.argmin(np.abs(slices[1] - z_mm)))  # a mark slightly off the series still ignores
    centre = volume.kji_to_lps([k, xy[1], xy[0]])
    return IgnoreRegion(np.array([centre - radius_mm, centre + radius_mm]), reason)
