"""Key images and the presentation state, written for a real chest CT and checked by real readers.

Two findings on Lung-PET-CT-Dx A0002 (B70f): a nodule in the right lung outlined in yellow, and a
two-part finding in the left lung (red and green). The objects are validated with dciodvfy, the
GSPS with dcmtk's dcmpschk, the pictures are rendered by dcmtk's dcm2pnm and by Orthanc, and the
PNGs land in <tmp_path> (copied to $RADNODE_KEY_IMAGES when set, to look at them after a run).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage as ndi

from pipelines.volume import Volume, load_series
from pipelines.writers import codes
from pipelines.writers.identity import Algorithm, Identity
from pipelines.writers.key_images import (
    CORNER_SHARE,
    FONT_PX,
    GREEN,
    LINE_PX,
    LUNG_WINDOW,
    RED,
    YELLOW,
    KeyFinding,
    Page,
    Region,
    make_key_images,
)
from pipelines.writers.output import write_datasets
from pipelines.writers.presentation_state import make_presentation_state
from pipelines.writers.sr import absence_statement
from tests.conftest import DATA
from tests.support.peers import Orthanc, dciodvfy, dcmtk_bin, dcmtk_env, send

pytestmark = [pytest.mark.data, pytest.mark.peers]

CHEST = DATA / "ct-chest" / "lung-pet-ct-dx-A0002" / "B70f"
IDENTITY = Identity(uid_root="1.2.826.0.1.3680043.8.498.777")
ALGORITHM = Algorithm("radnode nodule-detection", "model 0123456789abcdef")
#: the right-lung nodule: an ellipse on slices 10-13 (largest on 11), in (k, j, i) windows
NODULE_WINDOW = (slice(10, 14), slice(200, 230), slice(100, 120))
#: the left-lung finding: a red core inside a green rim, on slices 14-16
PAIR_WINDOW = (slice(14, 17), slice(250, 290), slice(330, 370))
#: how far (scaled pixels) an outline pixel may lie from the region's edge: the band's width
OUTLINE_REACH_PX = 4


def _ellipse(shape: tuple[int, int, int], radii: tuple[float, float], sizes: tuple[float, ...]) -> np.ndarray:
    """A stack of ellipses of the given in-plane radii scaled per slice (to make one slice largest)."""
    rows, columns = np.mgrid[: shape[1], : shape[2]]
    centre = ((shape[1] - 1) / 2, (shape[2] - 1) / 2)
    return np.stack([((rows - centre[0]) / (radii[0] * s)) ** 2 + ((columns - centre[1]) / (radii[1] * s)) ** 2 < 1
                     for s in sizes])


def _findings() -> list[KeyFinding]:
    nodule = _ellipse((4, 30, 20), (12.0, 8.0), (0.7, 1.0, 0.9, 0.6))
    rim = _ellipse((3, 40, 40), (18.0, 18.0), (0.8, 1.0, 0.8))
    core = _ellipse((3, 40, 40), (8.0, 8.0), (0.8, 1.0, 0.8))
    return [
        KeyFinding("Nodule 1: 12.4 mm, right lung, upper zone, score 0.93",
                   (Region(NODULE_WINDOW, nodule, YELLOW),)),
        KeyFinding("Lesion 2: 9.1 mL (core 1.2 mL, rim 7.9 mL), left lung, lower zone",
                   (Region(PAIR_WINDOW, core, RED, "core"), Region(PAIR_WINDOW, rim & ~core, GREEN, "rim"))),
    ]


def _page(lines: tuple[str, ...] = ("Nodule 1: 12.4 mm", "Lesion 2: 9.1 mL")) -> Page:
    return Page(ALGORITHM, "radnode nodule-detection", "Lung nodules: 2 found", lines, body_part="CHEST",
                window=LUNG_WINDOW)


@pytest.fixture(scope="module")
def chest() -> Volume:
    return load_series(sorted(CHEST.glob("*.dcm")))


@pytest.fixture(scope="module")
def written(chest: Volume, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    out = tmp_path_factory.mktemp("key-images")
    findings = _findings()
    pictures = write_datasets(make_key_images(chest, findings, _page(), IDENTITY), out / "sc")
    state = write_datasets([make_presentation_state(chest, findings, _page(), IDENTITY)], out / "pr")
    return {"sc": [o.path for o in pictures], "pr": [o.path for o in state]}


@pytest.fixture(scope="module")
def rendered(written: dict[str, list[Path]], tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Each Secondary Capture as dcmtk's dcm2pnm renders it (PNG), in instance order."""
    out = tmp_path_factory.mktemp("png")
    pictures = []
    for path in sorted(written["sc"], key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber)):
        png = out / f"{path.stem}.png"
        subprocess.run([dcmtk_bin("dcm2pnm"), "--write-png", str(path), str(png)], check=True, env=dcmtk_env(),
                       capture_output=True, timeout=60)
        pictures.append(np.asarray(Image.open(png).convert("RGB")))
    keep = os.environ.get("RADNODE_KEY_IMAGES")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for n, png in enumerate(sorted(out.iterdir()), start=1):
            shutil.copy(png, Path(keep) / f"key-image-{n}.png")
    return pictures


def _anatomy(picture: np.ndarray, chest: Volume) -> tuple[np.ndarray, int]:
    """The part of a key image that shows the slice, and its top row: the banner and caption are
    text on black, while every row of a CT slice in the lung window is grey (air is -1000 HU)."""
    height = round(chest.array.shape[1] * picture.shape[1] / chest.array.shape[2])
    top = int(np.flatnonzero(picture.min(axis=(1, 2)) > 0)[0])
    return picture[top: top + height], top


def _edge_of(region: Region, k: int, chest: Volume, shape: tuple[int, int]) -> np.ndarray:
    """The region's edge on slice ``k``, on the picture's scaled pixels."""
    plane = region.on_slice(k, chest.array.shape[1:])
    rows = np.minimum((np.arange(shape[0]) * plane.shape[0] / shape[0]).astype(int), plane.shape[0] - 1)
    columns = np.minimum((np.arange(shape[1]) * plane.shape[1] / shape[1]).astype(int), plane.shape[1] - 1)
    scaled = plane[np.ix_(rows, columns)]
    edge: np.ndarray = scaled & ~ndi.binary_erosion(scaled)
    return edge


def test_every_key_image_and_the_presentation_state_pass_dciodvfy(written):
    for path in written["sc"] + written["pr"]:
        report = dciodvfy(path)
        assert not report.errors, (path.name, report.errors)


def test_the_presentation_state_passes_dcmtk_dcmpschk_with_0_errors(written):
    checked = subprocess.run([dcmtk_bin("dcmpschk"), str(written["pr"][0])], capture_output=True, text=True,
                             env=dcmtk_env(), timeout=60)
    errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("E:")]
    assert checked.returncode == 0 and not errors, checked.stdout + checked.stderr
    assert "Test passed" in checked.stdout + checked.stderr


def test_a_summary_comes_first_then_one_key_image_per_finding_on_the_slice_where_it_is_largest(written, chest):
    headers = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in written["sc"]),
                     key=lambda ds: int(ds.InstanceNumber))
    assert len(headers) == 3, len(headers)
    assert len({ds.SeriesInstanceUID for ds in headers}) == 1
    assert headers[0].SeriesInstanceUID != chest.sources[0].SeriesInstanceUID
    assert {ds.StudyInstanceUID for ds in headers} == {chest.sources[0].StudyInstanceUID}
    for ds in headers:
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.BurnedInAnnotation == "NO"
        assert ds.PhotometricInterpretation == "RGB" and ds.Columns >= 768
    # nodule largest on its slice 11, the pair on 15 (the middle of the window's slices)
    for ds, k in zip(headers[1:], (11, 15)):
        assert [item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence] == [chest.sources[k].SOPInstanceUID]
    assert {item.ReferencedSOPInstanceUID for item in headers[0].SourceImageSequence} == {
        chest.sources[11].SOPInstanceUID, chest.sources[15].SOPInstanceUID}


def test_each_outline_colour_lies_around_its_finding_and_nowhere_else_in_the_rendered_slice(rendered, chest):
    for picture, finding in zip(rendered[1:], _findings()):
        anatomy, _ = _anatomy(picture, chest)
        k = finding.key_slice(chest.array.shape[0])
        near = np.zeros(anatomy.shape[:2], dtype=bool)
        for region in finding.regions:
            edge = _edge_of(region, k, chest, anatomy.shape[:2])
            near |= ndi.binary_dilation(edge, iterations=OUTLINE_REACH_PX)
        for region in finding.regions:
            coloured = np.all(anatomy == region.color, axis=2)
            edge = _edge_of(region, k, chest, anatomy.shape[:2])
            around = ndi.binary_dilation(edge, iterations=OUTLINE_REACH_PX)
            share = coloured[around].sum() / max(edge.sum(), 1)
            assert share >= 0.8, f"{region.color}: {coloured[around].sum()} outline pixels for {edge.sum()} edge pixels"
            stray = coloured & ~near
            assert stray.sum() == 0, f"{region.color}: {stray.sum()} pixels away from the finding"


def test_no_outline_colour_appears_in_the_slice_of_the_summary_image(rendered):
    summary = rendered[0]
    body = summary[: summary.shape[0] - 1]
    for colour in (YELLOW, RED, GREEN):
        assert np.all(body == colour, axis=2).sum() == 0, colour


def test_the_caption_and_banner_are_drawn_in_text_at_least_13_pixels_high(rendered, chest):
    for picture in rendered[1:]:
        anatomy, top = _anatomy(picture, chest)
        caption = picture[top + anatomy.shape[0]:]
        banner = picture[:top]
        for strip, name in ((caption, "caption"), (banner, "banner")):
            rows = np.flatnonzero(strip.max(axis=(1, 2)) > 128)
            assert rows.size and rows[-1] - rows[0] + 1 >= 13, f"{name}: text {rows.size} rows high"
            columns = np.flatnonzero(strip.max(axis=(0, 2)) > 128)
            assert columns[-1] - columns[0] >= 200, f"{name}: text {columns[-1] - columns[0]} px wide"


def test_no_text_is_drawn_in_the_corners_where_viewers_draw_their_own_overlay(rendered, chest):
    """The corners: the outer fifth of the width (``CORNER_SHARE``) of the strips above and below the
    slice, and of the whole summary page. The banner is centred: the same margin on either side."""
    for n, picture in enumerate(rendered):
        width = picture.shape[1]
        corner = round(width * CORNER_SHARE)
        if n == 0:
            strips = {"summary page": picture}
        else:
            anatomy, top = _anatomy(picture, chest)
            strips = {"banner": picture[:top], "caption": picture[top + anatomy.shape[0]:]}
        for name, strip in strips.items():
            text = np.flatnonzero(strip.max(axis=(0, 2)) > 32)
            assert text.size, f"no text in the {name} of image {n + 1}"
            # measured: text from column 154 to 569 of 768 (corners end at 154 and begin at 614)
            assert corner <= text[0] and text[-1] < width - corner, (name, n + 1, text[0], text[-1])
        banner = np.flatnonzero(picture[:LINE_PX].max(axis=(0, 2)) > 32)
        # measured: 250 and 249 columns free left and right of the banner's first line
        assert abs(banner[0] - (width - 1 - banner[-1])) <= FONT_PX, (banner[0], banner[-1])


def test_a_summary_of_nothing_found_names_the_series_examined_and_what_the_model_cannot_see(chest, tmp_path):
    statement = absence_statement(chest, codes.LUNG_NODULE, "It can miss ground-glass nodules of any size.")
    assert statement.startswith('No lung nodule found in series 2 "ThoraxRoutine') and "30 images" in statement
    page = Page(ALGORITHM, "radnode nodule-detection", "Lung nodules: none found", (statement,), body_part="CHEST")
    only = make_key_images(chest, [], page, IDENTITY)
    assert len(only) == 1 and only[0].DerivationDescription == "Summary of AI findings"
    assert dciodvfy(write_datasets(only, tmp_path)[0].path).errors == []


@pytest.mark.slow
def test_orthanc_stores_and_renders_the_key_images_and_the_presentation_state(written, tmp_path):
    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        send(pacs.dicom_port, written["sc"] + written["pr"], called_aet=pacs.aet)
        study = str(pydicom.dcmread(written["sc"][0], stop_before_pixels=True).StudyInstanceUID)
        instances = pacs.wait_for(lambda p: (lambda found: found if len(found) == 4 else None)(
            p.instances_of_study(study)))
        pictures = {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in written["sc"]}
        shown = [i for i in instances if i["MainDicomTags"].get("SOPInstanceUID") in pictures]
        assert len(shown) == 3
        for instance in shown:
            preview = Image.open(io.BytesIO(pacs.get_bytes(f"/instances/{instance['ID']}/preview")))
            assert preview.mode == "RGB" and preview.width >= 768, (preview.mode, preview.size)
    finally:
        pacs.kill()
