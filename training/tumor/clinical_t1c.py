"""Real clinical skull-on T1c scans with tumor masks, on a geometry recovered from the head.

Thirty-eight volumes of 27 patients from two TCIA collections of the Medical College of Wisconsin
(QIN-BRAIN-DSC-MRI and Brain-Tumor-Progression, CC BY 3.0), each a post-contrast T1 with the
skull on, 22-26 axial slices, and a "MaskTumor" series: the enhancing lesion with its necrotic
core, i.e. BraTS "tumor core" (TC), no edema.

- **Held out** (``../shared/data/mr-brain/clinical-t1c-heldout``, :data:`HELDOUT`): QIN-BRAIN-DSC
  13-16 and Brain-Tumor-Progression 10 and 11 (before and after treatment): 8 volumes of 6
  patients. Never trained, tuned or chosen on.
- **Training** (:data:`TRAINING`): QIN-BRAIN-DSC 01-12 (``SagaraBattousai/BrainLesionsGlial``
  @b2f9f31) and Brain-Tumor-Progression 01-09, pre and post (``SagaraBattousai/BrainTumorProgression``
  @f9ff80e): 30 volumes of 21 patients. Those repositories also hold the held-out cases (their
  directories 13-16 and 10-11): only the directories listed here are read. Their code is AGPL;
  only their data files are used. Bring them outside the repository with the search tool's fetch,
  then ``git -C <mirror> archive <commit> | tar -x -C <root>/<name>`` for each (``--clinical <root>``).

**The geometry is recovered, not read.** The source resized every slice to 256 x 256 and wrote
1.0 or 2.0 mm (some 1.016 x 1.251 mm) into the header; the real pixels are 0.8-1.0 mm and the
slices 5-6.5 mm apart. :func:`recover_geometry`:

- keeps the header's in-plane aspect (it carries the stretch of a non-square acquisition matrix
  resized to a square one: the heads of those scans fill the width of the image);
- scales the pixel so that the head's breadth (the widest left-right extent of the head, over all
  slices, ears included) is :data:`HEAD_BREADTH_MM`, the breadth measured the same way on the one
  skull-on clinical T1c whose header is true (TCGA-FG-6692: 169 mm at 0.898 mm); adult head
  breadth varies by about 4 % (one SD), so does the recovered pixel;
- puts the slices :data:`SLICE_SPACING_MM` apart, the middle of the collections' 5-6.5 mm
  (volumes carry that uncertainty, about +-8 %; Dice does not, it is counted on the scan's grid);
- drops the blank slices the source padded each volume with (a scanner sends none).

The cross-validation folds (:func:`folds`) split by patient; ``python -m
training.tumor.clinical_t1c --clinical ROOT --train-without-fold K`` prints the
prepared names (``prepare --clinical``) of the training volumes outside fold K, for ``fit --train``
(with ``--tumor-free-in DIR``: their tumor-free mirrored halves, for ``fit --tumor-free``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from training.data_folder import DATA_ROOT

#: Head breadth (mm) of TCGA-FG-6692's skull-on clinical T1c measured by :func:`head_breadth_px`
#: times its true 0.898 mm pixel: the calibration of the in-plane pixel.
HEAD_BREADTH_MM = 169.0
#: Slice spacing (mm): the middle of the collections' 5-6.5 mm.
SLICE_SPACING_MM = 6.0
HELDOUT_DIR = "mr-brain/clinical-t1c-heldout"
#: Cross-validation: the 21 training patients in this many folds, by a seeded shuffle (``folds``).
FOLDS = 3
FOLD_SEED = 55
#: The repositories the training cases come from, as ``--clinical`` expects them laid out.
SOURCES = {
    "BrainLesionsGlial": "SagaraBattousai/BrainLesionsGlial @b2f9f31 (TCIA QIN-BRAIN-DSC-MRI, CC BY 3.0)",
    "BrainTumorProgression": "SagaraBattousai/BrainTumorProgression @f9ff80e (TCIA Brain-Tumor-Progression, CC BY 3.0)",
}


@dataclass(frozen=True)
class ClinicalScan:
    """One skull-on T1c with its TC mask: where its files are and whose it is."""

    name: str        # e.g. ``qin-brain-dsc-03``, ``brain-tumor-progression-04-post``
    patient: str     # e.g. ``qin-brain-dsc-03``, ``brain-tumor-progression-04``: split by this
    scan: Path
    mask: Path


def _glial(root: Path, number: int) -> ClinicalScan:
    folder = root / "BrainLesionsGlial" / f"{number:02d}"
    name = f"qin-brain-dsc-{number:02d}"
    return ClinicalScan(name, name, folder / "Scan.nii.gz", folder / "Mask.nii.gz")


def _progression(root: Path, number: int, when: str) -> ClinicalScan:
    folder = root / "BrainTumorProgression" / f"{number:02d}"
    patient = f"brain-tumor-progression-{number:02d}"
    prefix = when.capitalize()
    return ClinicalScan(f"{patient}-{when}", patient, folder / f"{prefix}_Scan_T1.nii.gz",
                        folder / f"{prefix}_Mask.nii.gz")


def training_scans(root: Path) -> list[ClinicalScan]:
    """The 30 training volumes of 21 patients under ``root`` (the fetched repositories' data)."""
    scans = [_glial(root, n) for n in range(1, 13)]
    scans += [_progression(root, n, when) for n in range(1, 10) for when in ("pre", "post")]
    missing = [str(s.scan) for s in scans if not s.scan.is_file() or not s.mask.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} training scans missing under {root} (first: {missing[0]}): fetch "
                                f"{'; '.join(SOURCES.values())} and unpack each as {root}/<repository name>")
    return scans


HELDOUT_CASES = ("qin-brain-dsc-13", "qin-brain-dsc-14", "qin-brain-dsc-15", "qin-brain-dsc-16",
                 "brain-tumor-progression-10-pre", "brain-tumor-progression-10-post",
                 "brain-tumor-progression-11-pre", "brain-tumor-progression-11-post")


def heldout_scans(root: Path = DATA_ROOT) -> list[ClinicalScan]:
    """The 8 held-out volumes of 6 patients in the shared data folder."""
    scans = []
    for name in HELDOUT_CASES:
        folder = Path(root) / HELDOUT_DIR / name
        patient = name.removesuffix("-pre").removesuffix("-post")
        scans.append(ClinicalScan(name, patient, folder / "t1c.nii.gz", folder / "tumor_mask.nii.gz"))
    missing = [str(s.scan) for s in scans if not s.scan.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} is missing: point RADNODE_DATA at the shared data folder")
    return scans


def head_mask(pixels: np.ndarray) -> np.ndarray:
    """The head (z, y, x): above half of Otsu's threshold of the non-zero voxels, each slice's holes
    filled, the largest connected part. Half Otsu keeps the scalp and the dark skull inside it."""
    threshold = 0.5 * float(threshold_otsu(pixels[pixels > 0]))
    head = ndi.binary_fill_holes(pixels > threshold, structure=np.ones((1, 3, 3), bool))
    labels, count = ndi.label(head)
    if count == 0:
        raise ValueError("no head found: the scan has no voxel above half of Otsu's threshold")
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    return np.asarray(labels == largest)


def head_breadth_px(pixels: np.ndarray) -> int:
    """The widest left-right (x) extent of the head over all slices, in pixels."""
    columns = np.asarray(head_mask(pixels).any(axis=1))   # (z, x): which columns each slice's head reaches
    widths = [int(np.ptp(np.flatnonzero(columns[k]))) + 1 for k in range(len(columns)) if columns[k].any()]
    return max(widths)


def nonblank_slices(pixels: np.ndarray) -> slice:
    """The slices from the first to the last that hold any non-zero voxel (the source padded with blanks)."""
    filled = np.flatnonzero(pixels.reshape(len(pixels), -1).any(axis=1))
    if not len(filled):
        raise ValueError("every slice is blank")
    return slice(int(filled[0]), int(filled[-1]) + 1)


def recover_geometry(image: sitk.Image, keep: slice | None = None) -> sitk.Image:
    """``image`` with the recovered spacing (module docstring), blank end slices dropped (or ``keep``),
    origin at 0 and the header's axis directions (axial slices, LPS)."""
    pixels = sitk.GetArrayFromImage(image)
    keep = nonblank_slices(pixels) if keep is None else keep
    pixels = pixels[keep]
    header_x, header_y, _ = image.GetSpacing()
    pixel_x = HEAD_BREADTH_MM / head_breadth_px(pixels.astype(np.float32))
    recovered = sitk.GetImageFromArray(pixels)
    recovered.SetSpacing((pixel_x, pixel_x * header_y / header_x, SLICE_SPACING_MM))
    recovered.SetDirection(image.GetDirection())
    recovered.SetOrigin((0.0, 0.0, 0.0))
    return recovered


def load_scan(scan: ClinicalScan) -> tuple[sitk.Image, sitk.Image]:
    """The T1c (float32) and its TC mask (uint8, 0/1) on the recovered geometry, blank slices dropped."""
    t1c = sitk.ReadImage(str(scan.scan))
    keep = nonblank_slices(sitk.GetArrayFromImage(t1c))
    image = sitk.Cast(recover_geometry(t1c, keep), sitk.sitkFloat32)
    mask_pixels = (sitk.GetArrayFromImage(sitk.ReadImage(str(scan.mask)))[keep] > 0).astype(np.uint8)
    mask = sitk.GetImageFromArray(mask_pixels)
    mask.CopyInformation(image)
    return image, mask


def folds(scans: list[ClinicalScan]) -> list[list[str]]:
    """The patients of each fold: sorted, shuffled with ``FOLD_SEED``, dealt out in turn.
    A patient's scans (before and after treatment) are always in one fold."""
    patients = sorted({scan.patient for scan in scans})
    order = np.random.default_rng(FOLD_SEED).permutation(len(patients))
    return [sorted(patients[i] for i in order[k::FOLDS]) for k in range(FOLDS)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clinical", type=Path, required=True, help="the fetched repositories (SOURCES)")
    parser.add_argument("--train-without-fold", type=int, choices=range(FOLDS), metavar="K",
                        help="print the prepared names of the training volumes outside fold K (all when absent)")
    parser.add_argument("--tumor-free-in", type=Path, metavar="DIR",
                        help="instead: the tumor-free mirrored halves of those volumes that prepare wrote into DIR")
    args = parser.parse_args(argv)
    scans = training_scans(args.clinical)
    held = set() if args.train_without_fold is None else set(folds(scans)[args.train_without_fold])
    names = [f"clinical_{scan.name}" for scan in scans if scan.patient not in held]
    if args.tumor_free_in:
        names = [f"healthy_{name}" for name in names if (args.tumor_free_in / f"healthy_{name}.npz").is_file()]
    print(" ".join(names))


if __name__ == "__main__":
    main()
