"""The training scans as one compact file, for training where ``../shared/data`` is not at hand.

    python -m training.denoise.pack --out training.npz [--slice-gap-mm 5]

A GPU machine lent for a training run gets the repository and a few tens of MB beside it, not
the shared data folder, and has no DICOM stack to read it with. The noise simulation needs the
whole slice (every ray crosses the whole body), so the file holds whole full-dose slices: HU as
int16, which is lossless (the scanners' HU are integers; ``load`` checks that), each scan
compressed with LZMA (about 300 KB per sharp-kernel slice, 190 KB per GE STANDARD slice), plus
what ``data.Scan`` carries (pixel spacing, kernel, kVp, tube output per slice, thickness).

``--slice-gap-mm`` keeps every n-th slice so that kept slices lie about that far apart
(``data.thin_slices``): neighbouring 1.25 mm slices show nearly the same anatomy, and all 498
training slices do not fit in the transfer. ``training.denoise.train --data FILE`` reads the
file; ``train --data ../shared/data --slice-gap-mm G`` trains on exactly the same slices.
"""

from __future__ import annotations

import argparse
import json
import lzma
from pathlib import Path
from typing import Any

import numpy as np

from training.data_folder import DATA_ROOT
from training.denoise.data import HELD_OUT_SHARP, TRAINING, Scan, load_scan, thin_slices

#: Format tag, so that a file from another layout is refused with a clear message.
FORMAT = "radnode-denoise-training-pack/1"


def save(path: Path, scans: list[Scan], command: str) -> None:
    """Write ``scans`` (HU must be integers within int16) to one ``.npz`` file."""
    arrays: dict[str, Any] = {}  # of arrays; Any, as mypy checks **arrays against savez's allow_pickle: bool too
    meta = []
    for n, scan in enumerate(scans):
        hu = np.asarray(scan.hu)
        as_int = np.round(hu).astype(np.int16)
        if not np.array_equal(as_int.astype(hu.dtype), hu):
            raise ValueError(f"{scan.name}: HU are not integers in the int16 range; this pack format is lossless only")
        arrays[f"hu_{n}"] = np.frombuffer(lzma.compress(as_int.tobytes(), preset=6), dtype=np.uint8)
        meta.append({
            "name": scan.name, "shape": list(hu.shape), "pixel_spacing_mm": scan.pixel_spacing_mm,
            "kernel": scan.kernel, "kvp": scan.kvp, "slice_thickness_mm": scan.slice_thickness_mm,
            "relative_dose": None if scan.relative_dose is None else [float(v) for v in scan.relative_dose],
        })
    header = {"format": FORMAT, "command": command, "scans": meta}
    np.savez(path, header=np.array(json.dumps(header)), **arrays)


def load(path: Path) -> tuple[list[Scan], dict[str, Any]]:
    """The scans of a pack (float32 HU, as ``data.load_scan`` gives them) and its header."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            header = json.loads(str(stored["header"]))
            if header.get("format") != FORMAT:
                raise ValueError
            blobs = [stored[f"hu_{n}"].tobytes() for n in range(len(header["scans"]))]
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path} is not a training pack written by python -m training.denoise.pack "
                         f"({FORMAT}); write one with that command") from exc
    scans = []
    for meta, blob in zip(header["scans"], blobs):
        hu = np.frombuffer(lzma.decompress(blob), dtype=np.int16).reshape(meta["shape"]).astype(np.float32)
        dose = meta["relative_dose"]
        scans.append(Scan(meta["name"], hu, meta["pixel_spacing_mm"], meta["kernel"], meta["kvp"],
                          None if dose is None else np.asarray(dose), meta["slice_thickness_mm"]))
    return scans, header


def main(argv: list[str] | None = None) -> None:
    from training.record import training_command

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA_ROOT)
    parser.add_argument("--slice-gap-mm", type=float, default=0.0,
                        help="keep slices about this far apart (0: every slice)")
    parser.add_argument("--held-out-sharp", action="store_true",
                        help="pack the held-out sharp scan (data.HELD_OUT_SHARP) instead, for beam_check")
    args = parser.parse_args(argv)
    names = (HELD_OUT_SHARP,) if args.held_out_sharp else TRAINING
    scans = [thin_slices(load_scan(args.data, name), args.slice_gap_mm) for name in names]
    save(args.out, scans, training_command("training.denoise.pack", argv))
    for scan in scans:
        print(f"{scan.name}: {len(scan.hu)} slices")
    print(f"wrote {args.out}: {args.out.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
