"""The candidate stage (``pipelines.nodule.candidates``) on every real chest CT: recall of the real
lesions >= 10 mm, candidates per scan, CPU seconds. The acceptance rule is in
training/nodule/LOG.md, "Candidate stage (`candidates.py`): rule fixed before it was measured"
(and "Ground-glass candidates" for the ground-glass components).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python3 bench/nodule_candidates.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from pipelines.nodule import candidates
from training.data_folder import DATA_ROOT
from training.nodule import evaluate, patients

MIN_LESION_MM = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows, scans = [], []
    for series in patients.all_series(DATA_ROOT):
        start = time.process_time()
        scan = candidates.find(series.volume)
        cpu = time.process_time() - start
        counts = {s: sum(c.source == s for c in scan.candidates) for s in ("blob", "solid", "subsolid")}
        scans.append({"series": series.name, "slices": series.volume.array.shape[0],
                      "candidates": len(scan.candidates), **counts, "cpu_s": round(cpu, 1)})
        print(f"{series.name}: {len(scan.candidates)} candidates {counts}, {cpu:.1f} CPU s", flush=True)
        for lesion in series.lesions:
            if lesion.diameter_mm < MIN_LESION_MM:
                continue
            on = [c for c in scan.candidates if _hits(scan.center_lps(c), lesion.lps_box)]
            sides = {source: max((scan.box_long_side_mm(c) for c in on if c.source == source), default=0.0)
                     for source in ("blob", "solid", "subsolid")}
            largest = max(sides.values())
            rows.append({"series": series.name, "lesion": lesion.label, "long_axis_mm": round(lesion.diameter_mm, 1),
                         "found": bool(on), "candidates_on_it": len(on), "largest_box_side_mm": round(largest, 1),
                         "largest_box_side_mm_by_source": {k: round(v, 1) for k, v in sides.items()}})
            print(f"  {lesion.label} {lesion.diameter_mm:.1f} mm: found={bool(on)} ({len(on)} candidates, "
                  f"largest box side {largest:.1f} mm; by source {sides})", flush=True)
    found = sum(r["found"] for r in rows)
    print(f"recall {found}/{len(rows)}; candidates per scan mean {np.mean([s['candidates'] for s in scans]):.0f}, "
          f"max {max(s['candidates'] for s in scans)}; CPU s max {max(s['cpu_s'] for s in scans)}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"lesions": rows, "scans": scans}, handle, indent=1)


def _hits(centre: np.ndarray, box: np.ndarray) -> bool:
    margin = evaluate.HIT_MARGIN_MM
    return bool(np.all(centre >= box[0] - margin) and np.all(centre <= box[1] + margin))


if __name__ == "__main__":
    main()
