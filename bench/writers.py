"""How long the DICOM writers take for a full-size CT: 5-segment SEG, SR, 300-slice derived series.

The writers run after every model, so they must stay small next to inference (target: under 5 s
each on 2 CPU cores). Wall time is what a job waits; CPU time is shown too because it stays comparable on a machine
that other work keeps busy. The source is the real chest CT header from ../shared/data repeated at 300
positions, so highdicom and pydicom see real-world attributes; masks are synthetic.

    python -m bench.writers [--slices 300]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from pipelines.volume import Volume
from pipelines.writers import codes
from pipelines.writers.derived import Derivation, make_derived_series
from pipelines.writers.identity import Algorithm, Identity
from pipelines.writers.output import WrittenObject, write_datasets
from pipelines.writers.seg import FrameCompression, Segment, make_segmentation
from pipelines.writers.sr import Finding, make_measurement_report
from training.data_folder import DATA_ROOT

CHEST_SLICE = DATA_ROOT / "ct-chest" / "lung-pet-ct-dx-A0002" / "B70f" / "1-01.dcm"
STRUCTURES = (codes.LUNG_NODULE, codes.NEOPLASM, codes.EDEMA, codes.NECROSIS,
              codes.ENHANCING_TUMOR)


def synthetic_volume(slices: int, identity: Identity) -> Volume:
    """The real chest CT header at ``slices`` positions 1 mm apart, with a smooth HU field."""
    header = pydicom.dcmread(CHEST_SLICE, stop_before_pixels=True)
    series_uid = identity.new_uid()
    sources = []
    for k in range(slices):
        ds = copy.deepcopy(header)
        ds.SOPInstanceUID = identity.new_uid()
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-173.1767578125, -294.1767578125, -150.0 + k]
        sources.append(ds)
    rows, columns = int(header.Rows), int(header.Columns)
    z, y, x = np.ogrid[:slices, :rows, :columns]
    array = (np.sin(x / 17.0) * np.cos(y / 23.0) * 400 + z - 300).astype(np.float32)
    return Volume(
        array=np.broadcast_to(array, (slices, rows, columns)).copy(),
        spacing=(0.646484375, 0.646484375, 1.0),
        origin=np.array([-173.1767578125, -294.1767578125, -150.0]),
        direction=np.eye(3),
        sources=tuple(sources),
        frames=(1,) * slices,
        frame_of_reference_uid=str(header.FrameOfReferenceUID),
        modality="CT",
    )


def ellipsoids(shape: tuple[int, int, int], large: bool) -> np.ndarray:
    """Five labelled ellipsoids: nodule-sized, or organ-sized ones that span every slice."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    mask = np.zeros(shape, dtype=np.uint8)
    n = shape[0]
    for label, (cz, cy, cx) in enumerate(
        [(0.2, 0.3, 0.3), (0.4, 0.6, 0.6), (0.6, 0.5, 0.2), (0.8, 0.2, 0.8), (0.5, 0.8, 0.5)],
        start=1,
    ):
        rz, rxy = (0.6 * n, 60) if large else (0.03 * n + 3 * label, 6 * label + 4)
        inside = (((z - cz * n) / rz) ** 2 + ((y - cy * shape[1]) / rxy) ** 2
                  + ((x - cx * shape[2]) / rxy) ** 2) <= 1
        mask[inside] = label
    return mask


def report(label: str, started: tuple[float, float], written: list[WrittenObject], extra: str = "") -> None:
    seconds = time.perf_counter() - started[0]
    cpu = time.process_time() - started[1]
    megabytes = sum(w.path.stat().st_size for w in written) / 1e6
    print(f"{label:42s} {seconds:5.2f} s ({cpu:5.2f} s CPU) {megabytes:7.2f} MB {extra}")


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()
    identity = Identity()
    algorithm = Algorithm("bench", "0")
    volume = synthetic_volume(args.slices, identity)
    segments = [Segment(s, f"s{n}") for n, s in enumerate(STRUCTURES, start=1)]
    print(f"source: {args.slices} x 512 x 512 CT, 5 segments")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for large in (False, True):
            mask = ellipsoids(volume.array.shape, large)
            size = "organ-sized" if large else "nodule-sized"
            for compression in FrameCompression:
                started = clock()
                seg = make_segmentation(volume, mask, segments, algorithm, identity,
                                        compression=compression)
                written = write_datasets([seg], out / f"seg-{size}-{compression.value}")
                report(f"SEG, {size} segments, {compression.value}", started, written,
                       f"{int(seg.NumberOfFrames)} frames")
        findings = [
            Finding(f"finding-{n}", structure, diameter_mm=10.0 + n, volume_mm3=500.0 * n,
                    mean_hu=-20.0, score=0.5, segment_number=n)
            for n, structure in enumerate(STRUCTURES, start=1)
        ]
        started = clock()
        sr = make_measurement_report(volume, findings, algorithm, identity,
                                     looked_for=codes.LUNG_NODULE, segmentation=seg)
        report(f"SR, 5 findings, {args.slices}-image library", started,
               write_datasets([sr], out / "sr"))
        started = clock()
        derived = list(make_derived_series(volume, volume.array * 0.9, identity,
                                           Derivation(algorithm, "bench", "bench")))
        report(f"derived series, {len(derived)} slices", started,
               write_datasets(derived, out / "derived"))


if __name__ == "__main__":
    main()
