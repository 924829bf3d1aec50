"""A Grayscale Softcopy Presentation State of a finding set: the outlines on the original images.

Most viewers that show no SEG still apply a GSPS: selecting it shows the source series with each
finding's outline (POLYLINE, in image pixels) on every slice it touches, and its label (the
measurement) as text beside it on the slice where it is largest, in the window the key images use.
It references the source images only, so the radiologist reads the findings on the images that
were acquired, not on a picture of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from skimage import measure

from pipelines.volume import Volume
from pipelines.writers.identity import Identity
from pipelines.writers.key_images import KeyFinding, Page, Window
from pipelines.writers.series import ResultKind, result_series_number
from pipelines.writers.source import copyable

LAYER = "RADNODE_FINDINGS"
#: CIELab of yellow, the layer's recommended colour (viewers that honour it draw in it).
YELLOW_LAB = hd.color.CIELabColor(97.1, -21.6, 94.5)
#: A contour with fewer points is a speck of a partial-volume edge, not an outline worth drawing.
MIN_CONTOUR_POINTS = 4


def make_presentation_state(
    volume: Volume,
    findings: Sequence[KeyFinding],
    page: Page,
    identity: Identity,
    *,
    series_number: int | None = None,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """One GSPS over the whole source series with every finding's outlines and labels."""
    layer = hd.pr.GraphicLayer(LAYER, order=1, description=f"{page.pipeline} findings", display_color=YELLOW_LAB)
    depth = volume.array.shape[0]
    graphics: dict[int, list[hd.pr.GraphicObject]] = defaultdict(list)
    texts: dict[int, list[hd.pr.TextObject]] = defaultdict(list)
    for finding in findings:
        for region in finding.regions:
            for k in np.flatnonzero(region.areas(depth)):
                plane = region.on_slice(int(k), volume.array.shape[1:])
                graphics[int(k)] += [_polyline(contour) for contour in _contours(plane)]
        key = finding.key_slice(depth)
        texts[key].append(_label(finding, key, volume))
    sources = [copyable(ds) for ds in {ds.SOPInstanceUID: ds for ds in volume.sources}.values()]
    annotations = [
        hd.pr.GraphicAnnotation(
            referenced_images=[copyable(volume.sources[k])],
            graphic_layer=layer,
            referenced_frame_number=volume.frames[k] if volume.is_multiframe else None,
            graphic_objects=graphics.get(k) or None,
            text_objects=texts.get(k) or None,
        )
        for k in sorted(set(graphics) | set(texts))
    ]
    new = identity.new_object(
        series_number or result_series_number(volume.sources[0], ResultKind.PRESENTATION_STATE)
    )
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=sources,
        **new,
        content_label="RADNODE_FINDINGS",
        content_description=f"{page.pipeline}: {page.title}"[:64],
        graphic_layers=[layer],
        graphic_annotations=annotations or None,
        voi_lut_transformations=_window(page.window),
        series_description=f"{page.pipeline} findings (presentation state)"[:64],
        contributing_equipment=[identity.processing_equipment(page.algorithm)],
    )
    state.BodyPartExamined = page.body_part  # unpaired, so no laterality is asked for
    return state


def _contours(plane: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a slice's region as (row, column) pixel-edge points.

    The plane is padded so that a region touching the image border still closes; marching
    squares at 0.5 runs between pixel centres, on the region's edge.
    """
    padded = np.pad(plane.astype(np.float32), 1)
    return [contour - 1.0 for contour in measure.find_contours(padded, 0.5)
            if len(contour) >= MIN_CONTOUR_POINTS]


def _closed_points(contour: np.ndarray) -> np.ndarray:
    """A contour as closed image coordinates: column\\row with (0, 0) the top left corner of the
    top left pixel (GSPS PIXEL units and SR SCOORD alike), so a pixel centre (row r, column c) is
    at (c + 0.5, r + 0.5)."""
    points = contour[:, ::-1] + 0.5
    if not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return points


def largest_outline(plane: np.ndarray) -> tuple[tuple[float, float], ...] | None:
    """The longest closed outline of a slice's region as (column, row) image coordinates, for an
    SR's image region; None when the region is too small to outline."""
    contours = _contours(plane)
    if not contours:
        return None
    points = _closed_points(max(contours, key=len))
    return tuple((float(column), float(row)) for column, row in points)


def _polyline(contour: np.ndarray) -> hd.pr.GraphicObject:
    return hd.pr.GraphicObject(
        graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
        graphic_data=_closed_points(contour),
        units=hd.pr.AnnotationUnitsValues.PIXEL,
    )


def _label(finding: KeyFinding, k: int, volume: Volume) -> hd.pr.TextObject:
    """The caption anchored at the finding's edge on its key slice, the text box beside it."""
    rows, columns = np.nonzero(np.any([r.on_slice(k, volume.array.shape[1:]) for r in finding.regions], axis=0))
    anchor = (float(columns.max()) + 1.0, float(rows.min()))
    return hd.pr.TextObject(
        text_value=finding.caption[:1024],
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        anchor_point=anchor,
        anchor_point_visible=True,
    )


def _window(window: Window | None) -> list[hd.pr.SoftcopyVOILUTTransformation] | None:
    """The key images' clinical window for the whole series; none for MR (the viewer's own)."""
    if window is None:
        return None
    return [hd.pr.SoftcopyVOILUTTransformation(window_center=window.center, window_width=window.width)]
