"""kill -9 of a whole ``radnode serve`` process group at a random moment, then a restart and a check.

One trial sends a small CT series with fresh UIDs (so trials do not disturb each other), kills
the node's process group after a random delay that falls anywhere from the first C-STORE to the
last delivery, restarts the node, resends what storescu did not see acknowledged (as a scanner
would), and checks what a site would notice:

- every instance acknowledged before the kill is indexed and its file is complete;
- the series is processed in full: the job of its last generation is done;
- every result of every done job is in the PACS exactly once, and nothing else is.

``tests/run/test_recovery.py`` runs a few trials; ``bench/kill9.py`` runs 100, enough for kills in every part of the flow.
With ``stow = True`` the series goes by STOW-RS instead (a few instances per request, the way
dicomweb-client sends them), and what got an HTTP 200 is what was acknowledged
(``tests/receive/test_stow_receive.py``).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from node.index.store import Index
from node.receive.spool import Spool
from tests.support.harness import NodeProcess, node_config, threshold_pipeline, threshold_route, wait_until
from tests.support.peers import Orthanc, dcmtk_bin, dcmtk_env, free_port, storescu

#: Instances per STOW-RS request in a ``stow`` trial.
STOW_BATCH = 3

#: where the kill fell, judged from the index the restarted node finds
STAGES = ("receive", "completion", "job run", "result commit", "delivery", "after delivery")


def acknowledged(storescu_output: str) -> list[str]:
    """Files storescu reported as stored (its verbose log pairs each file with its response)."""
    stored, current = [], None
    for line in storescu_output.splitlines():
        if m := re.search(r"Sending file: (.+)$", line):
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            stored.append(current)
    return stored


def fresh_series(sources: list[Path], folder: Path) -> tuple[str, str, list[Path]]:
    """Copies of ``sources`` under new study, series and instance UIDs: (study, series, files)."""
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    files = []
    for number, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"{number:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return study, series, files


def stage_at_kill(index: Index, spool: Spool, series_uid: str, count: int) -> str:
    """Which part of the flow the kill interrupted, from what the index had made durable: a job
    not done whose result files are already in the spool was killed at its result commit."""
    series = index.series(series_uid)
    if series is None or series.instance_count < count:
        return "receive"
    jobs = [j for j in index.jobs() if j.subject == series_uid]
    if not jobs:
        return "completion"
    if any(j.state != "done" for j in jobs):
        written = any(any(spool.result_dir(j.id).glob("*")) for j in jobs if j.state != "done")
        return "result commit" if written else "job run"
    wanted = {j.id for j in jobs}
    if any(d.state != "sent" for d in index.deliveries() if d.job_id in wanted):
        return "delivery"
    return "after delivery"


class StowUpload:
    """Files sent by STOW-RS in requests of ``STOW_BATCH``, one after another, in a thread, until
    the node stops answering; ``acknowledged`` lists the files of the requests that got a 200."""

    def __init__(self, port: int, files: list[Path]) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.client = DICOMwebClient(f"http://127.0.0.1:{port}")
        # dicomweb-client tries a request that raised 5 times, 31 s of back-off: the upload a kill
        # broke ends at once, as ``acknowledged`` needs; the trial sends the rest again itself
        self.client.set_http_retry_params(retry=False)
        self.files = files
        self.stored: list[str] = []
        self.thread = threading.Thread(target=self._send, daemon=True)

    def start(self) -> StowUpload:
        self.thread.start()
        return self

    def _send(self) -> None:
        for start in range(0, len(self.files), STOW_BATCH):
            batch = self.files[start:start + STOW_BATCH]
            try:
                self.client.store_instances([pydicom.dcmread(path) for path in batch])
            except Exception:  # noqa: BLE001 (the node was killed: the rest is not acknowledged)
                return
            self.stored += [str(path) for path in batch]

    def acknowledged(self) -> list[str]:
        self.thread.join(timeout=60)
        return self.stored


@dataclass
class KillTrials:
    """A node, its PACS and the series each trial sends; ``run`` does one trial."""

    workdir: Path
    orthanc: Orthanc
    sources: list[Path]
    stow: bool = False

    def __post_init__(self) -> None:
        destinations = [self.orthanc.destination()]
        # the pipeline waits 0.4 s between writing its SEG and returning it: a kill can fall
        # between the result files and their commit to the index, not only before or after
        config = node_config(self.workdir, destinations=destinations, routes=[threshold_route()],
                             pipelines=threshold_pipeline(sleep_after_write_seconds=0.4),
                             completion={"settle_seconds": 0.5, "quiet_seconds": 20.0},
                             delivery={"backoff_seconds": 0.2, "backoff_max_seconds": 1.0,
                                       "max_attempts": 50})
        if self.stow:
            config["dicomweb"] = {"port": free_port()}
        self.node = NodeProcess(config, self.workdir)
        self.stages: Counter[str] = Counter()
        #: per stage: instances acknowledged before the kill and found intact, jobs done, results
        #: found exactly once in the PACS
        self.checked: dict[str, Counter[str]] = {stage: Counter() for stage in STAGES}
        self.trials = 0

    def start(self) -> KillTrials:
        self.node.start()
        return self

    def stop(self) -> None:
        if self.node.proc is not None:
            self.node.stop()

    def sop_uids_in_pacs(self, study_uid: str) -> list[str]:
        """SOP Instance UIDs the PACS holds in one study (one lookup, however many studies)."""
        query = {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}
        request = urllib.request.Request(self.orthanc.url + "/tools/find", data=json.dumps(query).encode(),
                                         method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return [i["MainDicomTags"]["SOPInstanceUID"] for i in json.loads(response.read())]

    def run(self, delay: float) -> str:
        """One trial, the kill ``delay`` seconds after storescu starts; raises AssertionError
        naming the trial when a check fails. Returns the stage the kill fell in."""
        self.trials += 1
        trial = self.trials
        study, series_uid, files = fresh_series(self.sources, self.workdir / f"trial-{trial:03d}")
        if self.stow:
            assert self.node.stow_port is not None
            upload = StowUpload(self.node.stow_port, files).start()
        else:
            sender = subprocess.Popen(
                [dcmtk_bin("storescu"), "-v", "--required", "-aec", "RADNODE", "127.0.0.1",
                 str(self.node.port), *map(str, files)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dcmtk_env())
        time.sleep(delay)
        self.node.kill_group()
        stored = upload.acknowledged() if self.stow else acknowledged(sender.communicate(timeout=60)[0])

        spool = Spool(Path(self.node.config["node"]["spool"]))
        index = Index(spool.root / "index.sqlite")
        stage = stage_at_kill(index, spool, series_uid, len(files))
        self.stages[stage] += 1
        self.start()
        for path in stored:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            row = index.instance(uid)
            assert row is not None, f"trial {trial} ({stage}): {Path(path).name} acknowledged, not indexed"
            assert str(pydicom.dcmread(row.path).SOPInstanceUID) == uid, \
                f"trial {trial} ({stage}): {Path(path).name} indexed but its file is not intact"
        missing = [f for f in files if str(f) not in stored]
        if missing and self.stow:  # the client sends again what it did not see acknowledged
            assert self.node.stow_port is not None
            again = StowUpload(self.node.stow_port, missing).start().acknowledged()
            assert again == [str(f) for f in missing], f"trial {trial}: resend by STOW-RS failed"
        elif missing:  # the scanner sends again what it did not see acknowledged
            resent = storescu(self.node.port, missing)
            assert resent.returncode == 0, f"trial {trial}: resend failed: {resent.stderr[-500:]}"

        def processed_and_delivered() -> bool:
            series = index.series(series_uid)
            jobs = [j for j in index.jobs() if j.subject == series_uid]
            latest = [j for j in jobs if series and j.generation == series.generation]
            if not (series and series.instance_count == len(files) and series.state == "routed"
                    and latest and all(j.state == "done" for j in latest)):
                return False
            done = {j.id for j in jobs if j.state == "done"}
            return all(d.state == "sent" for d in index.deliveries() if d.job_id in done)

        wait_until(processed_and_delivered, 90, 0.1, f"trial {trial} ({stage}): series processed and delivered")
        done = [j for j in index.jobs("done") if j.subject == series_uid]
        expected = Counter(r.sop_uid for j in done for r in index.results(j.id))
        in_pacs = Counter(self.sop_uids_in_pacs(study))
        assert in_pacs == expected and max(expected.values()) == 1, (
            f"trial {trial} ({stage}): the PACS holds {dict(in_pacs)}, the index's results are {dict(expected)}")
        self.checked[stage].update({"acknowledged intact": len(stored), "jobs done": len(done),
                                    "results once in PACS": len(expected)})
        index.close()
        return stage
