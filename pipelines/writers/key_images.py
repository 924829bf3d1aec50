"""Key images: each finding outlined on its source slice, and a summary page, as Secondary Capture.

Many hospital PACS viewers show neither SEG nor TID 1500 SR, but every viewer shows a Secondary
Capture. So each finding also gets an RGB picture of the slice where it is largest (clinical
window, coloured outline, label, scale bar, an "AI result" banner), and one summary image lists the
findings or says what was examined and that nothing was found, with the model's limits. They are a
new ``DERIVED\\SECONDARY`` series referencing their source slices; no patient data is drawn
(BurnedInAnnotation "NO"), and colours are saturated, so whatever is coloured was drawn by radnode.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from scipy import ndimage as ndi

from pipelines.volume import Volume
from pipelines.writers.identity import Algorithm, Identity
from pipelines.writers.series import ResultKind, result_series_number
from pipelines.writers.source import copyable

RGB = tuple[int, int, int]
#: Outline colours by what they outline; no grey pixel of the source looks like them. The banner
#: and titles are cyan, which outlines never are.
YELLOW: RGB = (255, 255, 0)
RED: RGB = (255, 40, 40)
GREEN: RGB = (40, 220, 40)
CYAN: RGB = (0, 220, 255)
WHITE: RGB = (255, 255, 255)
#: The picture is scaled up to at least this width, so that its text stays legible in any viewer.
MIN_WIDTH = 768
FONT_PX = 18
LINE_PX = 24
OUTLINE_PX = 2
DISCLAIMER = "AI result, not a diagnosis"
#: Viewers draw their own text (patient, series, window, zoom) in the four corners of an image and
#: would cover ours there: radnode's text stays in the middle, clear of this share of the width
#: on either side (the banner centred, captions and summary lines left-aligned at its edge).
CORNER_SHARE = 0.2


@dataclass(frozen=True)
class Window:
    """A display window in the source's units (HU for CT)."""

    center: float
    width: float


#: The clinical windows key images are shown in: nodules in the lung window, masses in the
#: mediastinal one. MR has no absolute scale: its window is taken from the slice (``None``).
LUNG_WINDOW = Window(-600.0, 1500.0)
MEDIASTINAL_WINDOW = Window(40.0, 400.0)


@dataclass(frozen=True)
class Region:
    """A part of a finding outlined in one colour: its mask inside a window of the volume."""

    window: tuple[slice, slice, slice]
    mask: np.ndarray
    color: RGB
    #: what the colour stands for on a finding of several parts ("enhancing tumor"); "" for one
    name: str = ""

    def on_slice(self, k: int, shape: tuple[int, int]) -> np.ndarray:
        """The region's pixels on source slice ``k`` as a full-slice boolean image."""
        plane = np.zeros(shape, dtype=bool)
        ks, js, is_ = self.window
        if ks.start <= k < ks.stop:
            plane[js, is_] = self.mask[k - ks.start]
        return plane

    def areas(self, depth: int) -> np.ndarray:
        """Pixels of the region on every slice of a volume ``depth`` slices deep."""
        counts = np.zeros(depth, dtype=np.int64)
        counts[self.window[0]] = self.mask.reshape(self.mask.shape[0], -1).sum(axis=1)
        return counts


@dataclass(frozen=True)
class KeyFinding:
    """One finding as a key image shows it: its caption and its outlined parts."""

    caption: str
    regions: tuple[Region, ...]

    def key_slice(self, depth: int) -> int:
        """The slice where the finding is largest (all its parts together)."""
        return int(np.argmax(sum(region.areas(depth) for region in self.regions)))

    def summary_line(self, volume: Volume) -> str:
        """The summary image's row of this finding: its caption and the source image to open."""
        k = self.key_slice(volume.array.shape[0])
        instance = volume.sources[k].get("InstanceNumber")
        return f"{self.caption}; image {instance if instance is not None else k + 1}"

    def center_point(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(k, j, i) of the finding's pixel nearest its centre on its key slice: a point in the
        finding (a crescent's centre of mass is not) where the reader is taken to look."""
        k = self.key_slice(shape[0])
        plane = np.any([region.on_slice(k, shape[1:]) for region in self.regions], axis=0)
        rows, columns = np.nonzero(plane)
        nearest = int(np.argmin((rows - rows.mean()) ** 2 + (columns - columns.mean()) ** 2))
        return k, int(rows[nearest]), int(columns[nearest])


@dataclass(frozen=True)
class Page:
    """What the key images say besides the findings: who made them, in which window."""

    algorithm: Algorithm
    #: "radnode nodule-detection": the banner's first words
    pipeline: str
    #: title of the summary image ("Lung nodules: 2 found")
    title: str
    #: the summary's lines: one per finding, or what was examined and what the model cannot see
    lines: tuple[str, ...]
    #: Body Part Examined of the key images (a DICOM defined term, unpaired: "CHEST", "HEAD"),
    #: the pipeline's own rather than the source's, whose "LUNG" would ask for a laterality
    body_part: str
    window: Window | None = None

    @property
    def banner(self) -> str:
        return f"{self.pipeline} {self.algorithm.version} - {DISCLAIMER}"


def make_key_images(
    volume: Volume,
    findings: Sequence[KeyFinding],
    page: Page,
    identity: Identity,
    *,
    series_number: int | None = None,
) -> list[hd.sc.SCImage]:
    """The summary image (instance 1) and one key image per finding, as one new series."""
    series_uid = identity.new_uid()
    series_number = series_number or result_series_number(volume.sources[0], ResultKind.KEY_IMAGES)
    depth = volume.array.shape[0]
    slices = [finding.key_slice(depth) for finding in findings]
    summary_source = sorted(set(slices)) or [depth // 2]
    pictures = [(_summary_picture(volume, page), summary_source)]
    pictures += [(_finding_picture(volume, finding, k, page), [k]) for finding, k in zip(findings, slices)]
    return [
        _secondary_capture(volume, picture, sources, page, identity, series_uid, series_number, number)
        for number, (picture, sources) in enumerate(pictures, start=1)
    ]


def _finding_picture(volume: Volume, finding: KeyFinding, k: int, page: Page) -> np.ndarray:
    """Slice ``k`` in the window, each region outlined, then banner, caption and scale bar."""
    grey = _windowed(volume.array[k], page.window)
    scale = _scale(grey.shape)
    image = Image.fromarray(grey).convert("RGB").resize(
        (round(grey.shape[1] * scale), round(grey.shape[0] * scale)), Image.Resampling.BILINEAR
    )
    pixels = np.asarray(image).copy()
    for region in finding.regions:
        plane = region.on_slice(k, grey.shape)
        pixels[_outline(_resized(plane, pixels.shape[:2]))] = region.color
    image = Image.fromarray(pixels)
    _scale_bar(ImageDraw.Draw(image), image.size, volume.spacing[0] / scale)
    legend = [(f"{region.name} outlined", region.color) for region in finding.regions if region.name]
    return _framed(image, page.banner, [(line, WHITE) for line in _wrapped(finding.caption, image.width)] + legend)


def _summary_picture(volume: Volume, page: Page) -> np.ndarray:
    """A text page as wide as a key image: the title and the summary's lines."""
    width = round(volume.array.shape[2] * _scale(volume.array.shape[1:]))
    lines = [(part, CYAN) for part in _wrapped(page.title, width)] + [("", WHITE)]
    for line in page.lines:
        lines += [(part, WHITE) for part in _wrapped(line, width)]
    body = Image.new("RGB", (width, max(width // 2, LINE_PX * (len(lines) + 2))))
    draw = ImageDraw.Draw(body)
    for n, (text, color) in enumerate(lines):
        draw.text((_margin(width), 12 + n * LINE_PX), text, fill=color, font=_font())
    return _framed(body, page.banner, [])


def _windowed(plane: np.ndarray, window: Window | None) -> np.ndarray:
    """8-bit grey of a slice: the clinical window, or for MR the 1st-99.5th percentile of the body."""
    if window is None:
        body = plane[plane > np.percentile(plane, 5)]
        low, high = np.percentile(body if body.size else plane, (1.0, 99.5))
    else:
        low, high = window.center - window.width / 2, window.center + window.width / 2
    scaled = (plane.astype(np.float64) - low) / max(float(high - low), 1e-6)
    return np.asarray(np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5, dtype=np.uint8)


def _scale(shape: Sequence[int]) -> float:
    return max(1.0, MIN_WIDTH / shape[-1])


def _resized(plane: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A boolean slice on the scaled picture's pixels (nearest neighbour)."""
    rows = np.minimum((np.arange(shape[0]) * plane.shape[0] / shape[0]).astype(int), plane.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * plane.shape[1] / shape[1]).astype(int), plane.shape[1] - 1)
    resized: np.ndarray = plane[np.ix_(rows, cols)]
    return resized


def _outline(mask: np.ndarray) -> np.ndarray:
    """The band just outside a region's edge, ``OUTLINE_PX`` wide, leaving the region visible."""
    grown = ndi.binary_dilation(mask, iterations=OUTLINE_PX)
    band: np.ndarray = grown & ~mask
    return band


def _scale_bar(draw: ImageDraw.ImageDraw, size: tuple[int, int], mm_per_pixel: float) -> None:
    """A bar of a round length (10, 20, 50 or 100 mm, about a fifth of the width), at the bottom
    of the slice, ending where the right corner's overlay begins."""
    field_mm = size[0] * mm_per_pixel
    length_mm = max((n for n in (10, 20, 50, 100) if n <= field_mm / 4), default=10)
    length = round(length_mm / mm_per_pixel)
    right, bottom = size[0] - _margin(size[0]), size[1] - 16
    draw.rectangle((right - length, bottom - 4, right, bottom), fill=WHITE)
    draw.text((right - length, bottom - 8 - FONT_PX), f"{length_mm} mm", fill=WHITE, font=_font())


def _framed(body: Image.Image, banner: str, caption: Sequence[tuple[str, RGB]]) -> np.ndarray:
    """The picture between a banner strip above (centred) and a caption strip below, on black,
    their text clear of the corners."""
    banner_lines = _wrapped(banner, body.width)
    top = LINE_PX * len(banner_lines) + 8
    bottom = LINE_PX * len(caption) + (8 if caption else 0)
    framed = Image.new("RGB", (body.width, top + body.height + bottom))
    framed.paste(body, (0, top))
    draw = ImageDraw.Draw(framed)
    for n, line in enumerate(banner_lines):
        left = (body.width - _font().getlength(line)) / 2
        draw.text((left, 4 + n * LINE_PX), line, fill=CYAN, font=_font())
    for n, (line, color) in enumerate(caption):
        draw.text((_margin(body.width), top + body.height + 4 + n * LINE_PX), line, fill=color, font=_font())
    return np.asarray(framed)


def _margin(width: int) -> int:
    """Pixels kept free of text on each side of a picture ``width`` wide (``CORNER_SHARE``)."""
    return round(width * CORNER_SHARE)


def _wrapped(text: str, width: int) -> list[str]:
    """``text`` in lines that fit between the corners of a picture ``width`` pixels wide."""
    column = width - 2 * _margin(width)
    per_line = max(1, int(column / _font().getlength("n")))
    lines = textwrap.wrap(text, per_line) or [""]
    while per_line > 1 and any(_font().getlength(line) > column for line in lines):
        per_line -= 1
        lines = textwrap.wrap(text, per_line) or [""]
    return lines


def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own scalable font: present in every Pillow wheel, so no system font is needed."""
    return ImageFont.load_default(size=FONT_PX)


def _secondary_capture(
    volume: Volume,
    picture: np.ndarray,
    sources: Sequence[int],
    page: Page,
    identity: Identity,
    series_uid: str,
    series_number: int,
    instance_number: int,
) -> hd.sc.SCImage:
    reference = copyable(volume.sources[sources[0]])
    spacing = volume.spacing[0] / _scale(volume.array.shape[1:])
    new = identity.new_object(series_number)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=picture,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=identity.new_uid(),
        instance_number=instance_number,
        manufacturer=new["manufacturer"],
        pixel_spacing=(spacing, spacing),  # type: ignore[arg-type]  # highdicom's hint says int; it writes DS
        patient_orientation=_orientation(reference),
        series_description=f"{page.pipeline} key images"[:64],
        manufacturer_model_name=new["manufacturer_model_name"],
        software_versions=new["software_versions"],
        device_serial_number=new["device_serial_number"],
        contributing_equipment=[identity.processing_equipment(page.algorithm)],
    )
    image.ImageType = ["DERIVED", "SECONDARY"]
    image.BurnedInAnnotation = "NO"
    image.BodyPartExamined = page.body_part
    image.DerivationDescription = (
        "Summary of AI findings" if instance_number == 1 else "AI finding outlined on the source image"
    )
    image.SourceImageSequence = DicomSequence([_source_item(volume, k) for k in sources])
    return image


def _source_item(volume: Volume, k: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = volume.sources[k].SOPClassUID
    item.ReferencedSOPInstanceUID = volume.sources[k].SOPInstanceUID
    if volume.is_multiframe:
        item.ReferencedFrameNumber = volume.frames[k]
    return item


def _orientation(source: Dataset) -> tuple[str, str]:
    """Patient Orientation (row and column directions, e.g. "L", "P") of the source slice."""
    cosines = np.asarray(source.get("ImageOrientationPatient") or _frame_orientation(source), dtype=float)
    return _direction_letters(cosines[:3]), _direction_letters(cosines[3:])


def _frame_orientation(source: Dataset) -> list[float]:
    shared = source.SharedFunctionalGroupsSequence[0]
    return list(shared.PlaneOrientationSequence[0].ImageOrientationPatient)


def _direction_letters(vector: np.ndarray) -> str:
    """The main letters of a direction in LPS (up to two, largest first), e.g. "L" or "LP"."""
    letters = []
    for axis in np.argsort(-np.abs(vector))[:2]:
        if abs(vector[axis]) > 0.25:
            letters.append("LPH"[axis] if vector[axis] > 0 else "RAF"[axis])
    return "".join(letters) or "L"
