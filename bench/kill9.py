"""kill -9 of the whole node at random points, many times (100 trials by default), losing nothing acknowledged.

    python3 -m bench.kill9 --trials 100 --seed 23

Each trial (tests/support/kill_trials.py) sends an 8-slice CT series with fresh UIDs, kills the node's
process group after a random delay, restarts it, resends what was not acknowledged and checks that
every acknowledged instance is indexed and intact, that the series is processed and that the PACS
(Orthanc) holds every result exactly once. Prints, per part of the flow the kill fell in, the
trials, the acknowledged instances found intact, the jobs done and the results found exactly once
in the PACS, and the seconds taken; exits non-zero at the first trial that fails its checks.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from tests.support.kill_trials import STAGES, KillTrials
from tests.support.peers import Orthanc
from training.data_folder import DATA_ROOT


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--max-delay", type=float, default=4.0,
                        help="kills fall uniformly in [0, this] seconds after storescu starts")
    parser.add_argument("--minutes", type=float, default=None,
                        help="start no trial after this many minutes (the summary says how many ran)")
    args = parser.parse_args()
    sources = sorted((DATA_ROOT / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))[:8]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        orthanc = Orthanc(workdir / "orthanc").start()
        (workdir / "node").mkdir()
        trials = KillTrials(workdir / "node", orthanc, sources)
        started = time.monotonic()
        try:
            trials.start()
            for number in range(args.trials):
                if args.minutes is not None and time.monotonic() - started > args.minutes * 60:
                    print(f"time budget of {args.minutes:g} min spent after {number} trials", flush=True)
                    break
                trials.run(rng.uniform(0, args.max_delay))
                print(f"trial {number + 1}: {dict(trials.stages)}", flush=True)
        except AssertionError as failure:
            print(f"FAILED: {failure}", file=sys.stderr)
            return 1
        finally:
            trials.stop()
            orthanc.stop()
        seconds = time.monotonic() - started
    print(f"{trials.trials} trials in {seconds:.0f} s ({seconds / trials.trials:.1f} s each), all checks passed")
    columns = ("acknowledged intact", "jobs done", "results once in PACS")
    print(f"  {'kill during':16s} {'trials':>6s}  " + "  ".join(f"{c:>20s}" for c in columns))
    for stage in STAGES:
        checked = trials.checked[stage]
        print(f"  {stage:16s} {trials.stages[stage]:6d}  " + "  ".join(f"{checked[c]:20d}" for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
