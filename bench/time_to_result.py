"""Time to result: the last image of a 30-slice CT to its results stored in Orthanc, warm node.

    python3 -m bench.time_to_result [--repeat 5] [--pipeline hu-threshold] [--settle 2] [--baseline DIR]

Starts Orthanc as the PACS and a real ``radnode serve`` (one worker) that routes every CT to
``--pipeline`` (the tests' HU threshold, whose inference is a comparison, or the shipped
``ct-denoise`` on the CPU) with its results to Orthanc. One study first warms the node; then
``--repeat`` times a 30-slice chest CT under new UIDs goes by dcmtk ``storescu`` (TCP_NODELAY)
and the script polls Orthanc's REST API every 10 ms until the study holds every result object.
Each hop is read from the node's own records: the index's timestamps (last instance, release of
the association, completion, job queued, claimed, finished), the worker's
``job.start`` log line and the pipeline's stage seconds in the job summary. Prints the median
(and range) of each hop, the total less the pipeline's inference (issue #67's target: <= 2.5 s),
and the node's own hops: the total less the settle time and the whole pipeline. ``--baseline DIR``
(a checkout, e.g. ``git worktree add /tmp/base main``) starts a second node from that code beside
the first, sends each study to one and then the other, and prints both tables and their ratios:
before and after under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support.harness import REPO, NodeProcess, node_config, threshold_pipeline
from tests.support.kill_trials import fresh_series
from tests.support.peers import Orthanc, storescu
from training.data_folder import DATA_ROOT

SOURCES = DATA_ROOT / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f"
#: the stages of a pipeline's summary that are its own work, not reading or writing DICOM
NOT_INFERENCE = ("load", "write")
POLL_SECONDS = 0.01

#: (name, from, to) of each hop, in the order an instance travels; the points are read by ``timeline``
HOPS = (
    ("release", "last image", "released"),
    ("settle (completion)", "released", "complete"),
    ("routing", "complete", "queued"),
    ("claim", "queued", "claimed"),
    ("worker pick-up", "claimed", "job start"),
    ("pipeline (stages below)", "job start", "pipeline end"),
    ("commit", "pipeline end", "finished"),
    ("delivery", "finished", "in Orthanc"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pipeline", default="hu-threshold", choices=["hu-threshold", "ct-denoise"])
    parser.add_argument("--settle", type=float, default=2.0, help="[completion] settle_seconds (2: the default)")
    parser.add_argument("--baseline", type=Path, default=None, help="a checkout to time beside this one")
    args = parser.parse_args()
    sources = sorted(SOURCES.glob("*.dcm"))
    load_before = os.getloadavg()
    code = {"this checkout": REPO} | ({f"baseline {args.baseline}": args.baseline.resolve()} if args.baseline else {})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in code}
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        orthanc = Orthanc(workdir / "orthanc").start()
        nodes: dict[str, NodeProcess] = {}
        try:
            for n, (name, checkout) in enumerate(code.items()):
                nodes[name] = start_node(workdir / f"node{n}", orthanc, args.pipeline, args.settle, checkout)
                send_and_wait(nodes[name], orthanc, sources, workdir / f"warm{n}")
            for n in range(args.repeat):  # alternately, so that both see the same load
                for k, (name, node) in enumerate(nodes.items()):
                    runs[name].append(send_and_wait(node, orthanc, sources, workdir / f"run{n}-node{k}"))
        finally:
            for node in nodes.values():
                node.stop()
            orthanc.stop()
    for name, timed in runs.items():
        report(timed, args, load_before, name)
    if args.baseline:
        compare(list(runs.values()))
    return 0


def start_node(workdir: Path, orthanc: Orthanc, pipeline: str, settle: float, checkout: Path) -> NodeProcess:
    pipelines = threshold_pipeline() if pipeline == "hu-threshold" else {"ct-denoise": {"device": "cpu"}}
    config = node_config(
        workdir, completion={"settle_seconds": settle, "quiet_seconds": 30.0},
        workers={"count": 1},
        destinations=[{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}],
        routes=[{"name": "ct", "pipeline": pipeline, "destinations": ["pacs"], "match": {"Modality": "CT"}}],
        pipelines=pipelines)
    workdir.mkdir()
    node = NodeProcess(config, workdir, checkout).start()
    deadline = time.monotonic() + 300  # the worker loads its pipeline (torch) before it takes a job
    while '"pipeline.loaded"' not in node.logs():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker did not load {pipeline}:\n{node.logs()[-3000:]}")
        time.sleep(0.2)
    return node


def send_and_wait(node: NodeProcess, orthanc: Orthanc, sources: list[Path], folder: Path) -> dict[str, float]:
    """Send one fresh series, wait until Orthanc holds all its results; its timeline."""
    study, series, files = fresh_series(sources, folder)
    sent = storescu(node.port, files)
    if sent.returncode != 0:
        raise RuntimeError(f"storescu failed: {sent.stderr[-1000:]}")
    index = node.config_path.parent / "spool" / "index.sqlite"
    deadline = time.monotonic() + 600
    expected: int | None = None
    while True:
        if expected is None:
            expected = result_count(index, series)
        if expected is not None and instances_in(orthanc, study) >= expected:
            seen = time.time()
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"no results of series {series} in Orthanc:\n{node.logs()[-3000:]}")
        time.sleep(POLL_SECONDS)
    return timeline(index, node.log, series, seen)


def result_count(index: Path, series: str) -> int | None:
    """How many objects the series' job sent, once it is done (None before)."""
    with _read(index) as db:
        row = db.execute("SELECT id, state FROM jobs WHERE subject = ?", (series,)).fetchone()
        if row is None or row["state"] != "done":
            return None
        return int(db.execute("SELECT COUNT(*) FROM results WHERE job_id = ?", (row["id"],)).fetchone()[0])


def instances_in(orthanc: Orthanc, study_uid: str) -> int:
    request = urllib.request.Request(orthanc.url + "/tools/lookup", data=study_uid.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        found = [item for item in json.loads(response.read()) if item["Type"] == "Study"]
    if not found:
        return 0
    return len(orthanc.get(f"/studies/{found[0]['ID']}/instances"))  # type: ignore[arg-type]


def _read(index: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    return db


def timeline(index: Path, log: Path, series: str, seen: float) -> dict[str, float]:
    """The moments each hop starts and ends (epoch seconds), and the pipeline's stage seconds."""
    with _read(index) as db:
        last = db.execute("SELECT MAX(received_at) FROM instances WHERE series_uid = ?", (series,)).fetchone()[0]
        released = db.execute(
            "SELECT MAX(a.closed_at) FROM association_series x JOIN associations a ON a.id = x.association"
            " WHERE x.series_uid = ?", (series,)).fetchone()[0]
        complete = db.execute("SELECT completed_at FROM series WHERE series_uid = ?", (series,)).fetchone()[0]
        job = db.execute("SELECT id, created_at, started_at, finished_at, summary FROM jobs WHERE subject = ?",
                         (series,)).fetchone()
    stages: dict[str, float] = json.loads(job["summary"])["seconds"]
    start = job_start(log, job["id"])
    points = {"last image": last, "released": released, "complete": complete, "queued": job["created_at"],
              "claimed": job["started_at"], "job start": start, "pipeline end": start + sum(stages.values()),
              "finished": job["finished_at"], "in Orthanc": seen}
    return {**points, **{f"stage {name}": seconds for name, seconds in stages.items()}}


def job_start(log: Path, job_id: int) -> float:
    """When the worker took the job: its ``job.start`` line (milliseconds, UTC)."""
    for line in log.read_text(errors="replace").splitlines():
        if '"job.start"' in line:
            event: dict[str, Any] = json.loads(line)
            if event.get("job") == job_id:
                return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
    raise LookupError(f"no job.start line for job {job_id}")


def report(runs: list[dict[str, float]], args: argparse.Namespace, load_before: tuple[float, ...], code: str) -> None:
    def row(name: str, values: list[float]) -> None:
        print(f"  {name:26s} {statistics.median(values):7.3f} s   ({min(values):.3f} - {max(values):.3f})")

    print(f"{code}: last image -> results in Orthanc, {args.pipeline}, 30-slice CT, settle_seconds = {args.settle:g}, "
          f"warm node, median of {len(runs)} (range); load average {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after, {os.cpu_count()} CPUs")
    for name, begin, end in HOPS:
        row(name, [r[end] - r[begin] for r in runs])
        if end == "pipeline end":
            for stage in (k for k in runs[0] if k.startswith("stage ")):
                row(f"  {stage[6:]}", [r[stage] for r in runs])
    totals = [r["in Orthanc"] - r["last image"] for r in runs]
    inference = [sum(v for k, v in r.items() if k.startswith("stage ") and k[6:] not in NOT_INFERENCE) for r in runs]
    row("total", totals)
    row("total less inference", [t - i for t, i in zip(totals, inference)])
    row("  of which not settle", [t - i - (r["complete"] - r["released"]) for t, i, r in zip(totals, inference, runs)])
    row("the node's own hops", [t - (r["complete"] - r["released"]) - (r["pipeline end"] - r["job start"])
                                for t, r in zip(totals, runs)])


def compare(runs: list[list[dict[str, float]]]) -> None:
    """This checkout's medians over the baseline's: the total, the part beyond settle, the pipeline."""
    def median(timed: list[dict[str, float]], begin: str, end: str) -> float:
        return statistics.median(r[end] - r[begin] for r in timed)

    ours, base = runs
    for name, begin, end in (("total", "last image", "in Orthanc"), ("pipeline", "job start", "pipeline end")):
        print(f"this checkout / baseline, {name}: {median(ours, begin, end):.3f} / {median(base, begin, end):.3f} s "
              f"= {median(ours, begin, end) / median(base, begin, end):.2f}")
    beyond = [[r["in Orthanc"] - r["complete"] for r in timed] for timed in runs]
    print(f"this checkout / baseline, beyond the settle: {statistics.median(beyond[0]):.3f} / "
          f"{statistics.median(beyond[1]):.3f} s = {statistics.median(beyond[0]) / statistics.median(beyond[1]):.2f}")


if __name__ == "__main__":
    sys.exit(main())
