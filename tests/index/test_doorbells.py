"""The node's loops wake when another process commits their work, not a poll interval later.

Each wait below has a minute as its limit: a ring that works ends it at once, a lost one fails
the test after the minute. No timing threshold is asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.complete.assembler import Assembler
from node.index.doorbell import Doorbell
from node.index.jobs import JobSpec
from node.index.store import Index, ResultFile
from tests.complete.test_completion import SERIES_ROUTE, Study, config
from tests.support.harness import REPO

#: a wait ends at once when rung; this long only when the ring was lost
LIMIT = 60.0


@pytest.fixture
def index(tmp_path: Path):
    idx = Index(tmp_path / "index.sqlite")
    yield idx
    idx.close()


def job(subject: str = "1.2.3") -> JobSpec:
    return JobSpec(route="r", pipeline="hu-threshold", subject=subject, study_uid="1.2", generation=0,
                   inputs={"series": subject}, destinations=["pacs"])


def test_a_job_queued_by_another_process_wakes_the_scheduler_at_once(index):
    jobs = Doorbell(index.path, "jobs")
    code = ("from pathlib import Path; from node.index.store import Index; from tests.index.test_doorbells import job; "
            f"Index(Path({str(index.path)!r})).add_job(job())")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
    assert jobs.wait(LIMIT), "the commit of another process did not ring"
    jobs.close()


def test_a_finished_job_wakes_the_dispatcher_and_frees_its_worker(index):
    index.add_job(job())
    claimed = index.claim_job(None, 600)
    assert claimed is not None
    deliveries, jobs = Doorbell(index.path, "deliveries"), Doorbell(index.path, "jobs")
    index.finish_job(claimed.id, [ResultFile(index.path, "1.2.9", "1.2.840.10008.5.1.4.1.1.66.4",
                                             "1.2.840.10008.1.2.1")], "1 objects", attempt=claimed.attempts)
    assert deliveries.wait(LIMIT) and jobs.wait(LIMIT)
    deliveries.close()
    jobs.close()


def test_a_released_association_wakes_completion(index):
    series = Doorbell(index.path, "series")
    index.open_association("a1", "CT1", "127.0.0.1", 1)
    index.close_association("a1")
    assert series.wait(LIMIT)
    series.close()


def test_a_ring_while_the_loop_works_is_kept_for_its_next_wait(index):
    bell = Doorbell(index.path, "jobs")
    bell.ring()  # the loop is in a pass, not waiting
    assert bell.wait(LIMIT), "the ring was lost"
    assert not bell.wait(0), "one ring, one wake"
    bell.close()


def test_completion_sleeps_until_a_series_settle_time_ends(tmp_path, index):
    """No instance for 0.5 s of the 2 s settle time: the pass says to come back when the 2 s
    end (not a poll interval later), and at that moment the series completes."""
    assembler = Assembler(config(tmp_path, [SERIES_ROUTE]), index)
    series = Study(index, tmp_path).series("CT", "chest")
    last = index.series(series).last_received
    due = assembler.tick(last + 0.5)
    assert due == last + 2.0
    assert index.series(series).state == "receiving"
    assert assembler.tick(due) is None
    assert index.series(series).state == "routed"

