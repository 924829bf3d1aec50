"""The same brain MR study stored in eight voxel orders, segmented: do the answers agree?

A scanner may write rows, columns or slices in any order (``ImageOrientationPatient``,
``ImagePositionPatient`` say which); the voxels at each patient position are the same, so the
contrasts used, the volumes and the labels must be too (issue #65). Each variant is written as
DICOM MR series (every contrast in the same storage order, as one scanner would), run through the
pipeline as ``radnode run`` runs it (``TumorSegmentation.run`` on the series files), and its SEG
read back and put in one storage order (LPS, axes permuted and flipped only) to compare voxel by
voxel.

    python -m bench.tumor_orientation --case tcga --out /tmp/orient_tcga.json
    python -m bench.tumor_orientation --case brats --out /tmp/orient_brats.json

``tcga``: the raw skull-on TCGA-FG-6692 contrasts, each on its own grid (the issue's study,
``../shared/checks/ohif-viewer/make_mr.py``); ``brats``: BraTS-GLI-00001, four stripped
co-registered contrasts on one grid.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
import torch
from scipy import ndimage

from node.operate.findings import finding_lines
from pipelines.base import JobInput, PipelineSettings
from pipelines.tumor.pipeline import TumorSegmentation
from pipelines.volume import load_series
from tests.support.mr_dicom import Study, seg_labels, write_series
from training.data_folder import DATA_ROOT

#: DICOMOrient codes: the first as make_mr.py writes it, then column flip, row flip, slices
#: reversed, rows and columns transposed, and combinations.
VARIANTS = ("LPS", "RPS", "LAS", "LPI", "PLS", "RAS", "RAI", "ARI")
TCGA_STEMS = {"t1c": "MRHR_T1_AX_POST_GAD", "t1": "T1_AX_", "t2": "MRHR_T2_AX", "flair": "MRHR_FLAIR_AX"}
BRATS_SUFFIX = {"t1c": "t1c", "t1": "t1n", "t2": "t2w", "flair": "t2f"}


def contrasts(case: str) -> dict[str, sitk.Image]:
    """The case's four contrasts as SimpleITK reads them (LPS patient frame)."""
    if case == "tcga":
        folder = DATA_ROOT / "mr-brain" / "tcga-fg-6692"
        return {role: sitk.ReadImage(str(next(folder.glob(stem + "*.nii.gz")))) for role, stem in TCGA_STEMS.items()}
    folder = DATA_ROOT / "mr-brain" / "brats-gli-00001" / "BraTS-GLI-00001-000"
    return {role: sitk.ReadImage(str(folder / f"BraTS-GLI-00001-000-{suffix}.nii.gz"))
            for role, suffix in BRATS_SUFFIX.items()}


def canonical_labels(seg_path: Path | None, source: list[Path]) -> np.ndarray | None:
    """The SEG's segment numbers in LPS storage order (None: no SEG)."""
    if seg_path is None:
        return None
    labels = seg_labels(pydicom.dcmread(seg_path), source)
    image = sitk.GetImageFromArray(labels.astype(np.uint8))
    image.CopyInformation(load_series(source).to_sitk())
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def fusion_wt(case: str) -> np.ndarray | None:
    """TCGA-FG-6692's whole tumor from the BraTS-toolkit fusion, carried onto the raw clinical T1c
    (``training.tumor.heldout.clinical_reference``), in LPS order; None for the other case."""
    if case != "tcga":
        return None
    from training.tumor.data import load_clinical
    from training.tumor.heldout import clinical_reference

    regions, fit = clinical_reference(DATA_ROOT)
    print("fusion mapping", fit, flush=True)
    image = sitk.GetImageFromArray(regions["WT"].astype(np.uint8))
    image.CopyInformation(load_clinical("t1c", DATA_ROOT))
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS")) > 0


def lesions_against(labels: np.ndarray, reference: np.ndarray, voxel_ml: float) -> dict[str, object]:
    """WT Dice against the reference, and the connected lesions that do not touch it (false ones)."""
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
    false = [round(float((components == n).sum()) * voxel_ml, 2) for n in range(1, count + 1)
             if not (reference & (components == n)).any()]
    return {"wt_dice_vs_fusion": round(dice(labels > 0, reference), 4), "false_lesions_ml": false}


def run_variant(pipeline: TumorSegmentation, images: dict[str, sitk.Image], code: str,
                work: Path) -> tuple[dict[str, object], np.ndarray | None]:
    study = Study()
    series = {role: write_series(sitk.DICOMOrient(image, code), role, work / code / role, study)
              for role, image in images.items()}
    start = time.perf_counter()
    result = pipeline.run(JobInput(series=series, output_dir=work / code / "out"))
    seconds = time.perf_counter() - start
    seg = next((p for p in result.outputs if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SEG"), None)
    summary = result.summary
    report = next(pydicom.dcmread(p) for p in result.outputs if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SR")
    row = {"variant": code, "contrasts_used": summary.contrasts_used, "left_out": summary.left_out,
           "volumes_ml": summary.volumes_ml, "isolated_edema_ml": summary.isolated_edema_ml, "seconds": round(seconds, 1),
           "lesions": [line for line in finding_lines(report) if line.startswith("lesion-")]}
    print(json.dumps(row), flush=True)
    return row, canonical_labels(seg, series["t1c"])  # T1c: the reference, whose grid the SEG is on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=("tcga", "brats"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipeline = TumorSegmentation(PipelineSettings(name="tumor-segmentation", device="cpu"))
    images = contrasts(args.case)
    reference = fusion_wt(args.case)
    voxel_ml = float(np.prod(images["t1c"].GetSpacing())) / 1000.0
    rows, labels = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for code in args.variants:
            row, canonical = run_variant(pipeline, images, code, Path(folder))
            if reference is not None and canonical is not None and canonical.shape == reference.shape:
                row |= lesions_against(canonical, reference, voxel_ml)
                print(code, {key: row[key] for key in ("wt_dice_vs_fusion", "false_lesions_ml")}, flush=True)
            rows.append(row)
            labels[code] = canonical
    pairs = []
    for a, b in itertools.combinations(args.variants, 2):
        if labels[a] is None or labels[b] is None or labels[a].shape != labels[b].shape:
            continue
        pairs.append({"pair": [a, b], "wt_dice": round(dice(labels[a] > 0, labels[b] > 0), 4),
                      "label_dice": {str(n): round(dice(labels[a] == n, labels[b] == n), 4) for n in (1, 2, 3)}})
    report = {"case": args.case, "variants": rows, "pairs": pairs,
              "min_wt_dice": min((p["wt_dice"] for p in pairs), default=None)}
    args.out.write_text(json.dumps(report, indent=1))
    print("min pairwise WT Dice:", report["min_wt_dice"])


if __name__ == "__main__":
    main()
