"""The state machines (node.index.states): only the transitions of each machine's table happen, and
only the current attempt of a job may end it, so a late result of an earlier attempt is never
delivered."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import Route
from node.index import states
from node.index.states import DeliveryState, JobState, SeriesState
from node.index.store import Index, InstanceRecord, JobSpec, Lineage, ResultFile, ResultObject
from node.route.router import job_spec
from tests.support.harness import threshold_route

SEG = "1.2.840.10008.5.1.4.1.1.66.4"


def queued_job(index: Index) -> int:
    route = Route.model_validate(threshold_route("r", destinations=["pacs"]))
    index.add_job(job_spec(route, subject="1.2.3", study_uid="1.2", generation=0, inputs={}))
    (job,) = index.jobs()
    return job.id


def test_a_stale_attempts_result_is_refused_and_the_current_attempts_result_is_delivered_once(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    job_id = queued_job(index)
    first = index.claim_job(None, 60)
    assert first is not None and first.attempts == 1
    # its worker machine died: the node hands the job back and a second attempt starts
    assert index.hand_back_job(job_id, attempt=1, reason="Ray worker died", lost=True)
    second = index.claim_job(None, 60)
    assert second is not None and second.attempts == 2

    stale = Lineage([ResultObject("9.1", SEG, "9", "1.2")], replaces=99, version=2)
    late = index.finish_job(job_id, [ResultFile(tmp_path / "old.dcm", "9.1", SEG)], "1 objects", attempt=1,
                            lineage=stale)
    assert late is False, "the first attempt came back after the job was handed back"
    assert index.job(job_id).state == "running" and index.results(job_id) == []
    assert index.deliveries() == [] and index.supersessions() == {}, "nothing of the stale result is kept"
    assert index.fail_job(job_id, "late failure", attempt=1) is False
    assert index.hand_back_job(job_id, attempt=1, reason="late", lost=True) is False
    assert index.start_attempt(job_id, 1, pid=4242) is False, "a worker took the stale attempt"
    assert index.start_attempt(job_id, 2, pid=4243) and index.job(job_id).worker_pid == 4243

    assert index.finish_job(job_id, [ResultFile(tmp_path / "new.dcm", "9.2", SEG)], "1 objects", attempt=2)
    assert [r.sop_uid for r in index.results(job_id)] == ["9.2"]
    assert [d.destination for d in index.deliveries()] == ["pacs"]
    # the same attempt cannot end twice either
    assert index.finish_job(job_id, [ResultFile(tmp_path / "new.dcm", "9.2", SEG)], "again", attempt=2) is False
    assert len(index.deliveries()) == 1


def test_only_the_transitions_of_the_state_machine_happen(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    job_id = queued_job(index)
    # queued: nothing ends it, nothing requeues it
    assert index.finish_job(job_id, [], "done without running", attempt=0) is False
    assert index.fail_job(job_id, "failed without running", attempt=0) is False
    assert index.start_attempt(job_id, 0, pid=4242) is False
    assert index.requeue_job(job_id) is False
    assert index.job(job_id).state == "queued"
    job = index.claim_job(None, 60)
    assert index.fail_job(job_id, "model crashed", attempt=job.attempts)
    assert index.finish_job(job_id, [], "too late", attempt=job.attempts) is False
    assert index.job(job_id).state == "failed" and index.job(job_id).outcome == "model crashed"
    assert index.requeue_job(job_id)
    again = index.claim_job(None, 60)
    assert again.attempts == job.attempts + 1 and again.state == "running"
    assert set(JobState) == {t.target for t in states.JOBS.transitions}


def test_a_transition_that_starts_no_attempts_end_takes_no_fence(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    queued_job(index)
    with pytest.raises(ValueError, match="no fence"):
        with index._tx() as db:
            states.apply(db, states.JOBS, states.CLAIM, 1, {"worker_pid": 5}, states.Fence(attempt=1))


def test_an_attempt_that_ends_or_starts_must_name_itself(tmp_path):
    """A result without its attempt number could be a stale one: the index refuses to guess."""
    index = Index(tmp_path / "index.sqlite")
    queued_job(index)
    job = index.claim_job(None, 60)
    with pytest.raises(TypeError):
        index.finish_job(job.id, [], "1 objects")  # type: ignore[call-arg]
    for transition in (states.START, states.FINISH, states.FAIL):
        with pytest.raises(ValueError, match="must name the attempt"):
            with index._tx() as db:
                states.apply(db, states.JOBS, transition, job.id, {"outcome": "x"}, states.Fence(worker_pid=1))
    assert index.job(job.id).state == "running"


def test_only_attempts_lost_with_their_machine_count_against_the_retries(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    job_id = queued_job(index)
    first = index.claim_job(None, 60)
    assert index.hand_back_job(job_id, first.attempts, "Ray head unreachable", lost=False)
    second = index.claim_job(None, 60)
    assert index.hand_back_job(job_id, second.attempts, "Ray node died", lost=True)
    assert index.requeue_running_jobs(None) == 0  # nothing running: the node's own hand-back
    third = index.claim_job(None, 60)
    assert (third.attempts, third.lost_attempts) == (3, 1)
    assert index.requeue_running_jobs(None) == 1  # a node restart: not the job's fault either
    assert index.job(job_id).lost_attempts == 1


def test_the_administrators_cancel_ends_only_a_queued_job_and_retry_undoes_it(tmp_path):
    """The web page's and CLI's cancel and retry are transitions of the machine: a running
    attempt is not cancelled under its executor, a done job is not re-run."""
    index = Index(tmp_path / "index.sqlite")
    job_id = queued_job(index)
    assert index.cancel_job(job_id)
    job = index.job(job_id)
    assert (job.state, job.outcome) == ("failed", "cancelled by the administrator")
    assert index.cancel_job(job_id) is False, "a failed job is not cancelled again"
    assert index.requeue_job(job_id) and index.job(job_id).state == "queued"
    running = index.claim_job(None, 60)
    assert index.cancel_job(job_id) is False and index.job(job_id).state == "running"
    assert index.finish_job(job_id, [], "0 objects", attempt=running.attempts)
    assert index.cancel_job(job_id) is False and index.requeue_job(job_id) is False
    assert index.job(job_id).state == "done"


def _series(index: Index, series_uid: str = "1.2.3") -> None:
    index.record_instance(InstanceRecord("1.2.3.1", series_uid, "1.2", "CT", "1.2.840.10008.5.1.4.1.1.2",
                                         "1.2.840.10008.1.2.1", Path("/nonexistent"), 4), None)


def _delivery(index: Index, tmp_path: Path) -> int:
    job_id = queued_job(index)
    job = index.claim_job(None, 60)
    index.finish_job(job_id, [ResultFile(tmp_path / "r.dcm", "9.1", SEG)], "1 objects", attempt=job.attempts)
    (delivery,) = index.deliveries()
    return delivery.id


@pytest.mark.parametrize("machine, made_up", [
    (states.SERIES, states.Transition("un-route", (SeriesState.ROUTED,), SeriesState.COMPLETE)),
    (states.JOBS, states.Transition("redo", (JobState.DONE,), JobState.QUEUED)),
    (states.DELIVERIES, states.Transition("resend", (DeliveryState.SENT,), DeliveryState.PENDING)),
    # a transition of another machine is not one of this machine's either
    (states.DELIVERIES, states.FINISH),
    (states.SERIES, states.RETRY_DEAD),
])
def test_a_transition_not_in_its_machines_table_raises_and_changes_nothing(tmp_path, machine, made_up):
    """A code path that would move a row along an edge the table does not draw is a bug: it is
    refused loudly, before any row changes, whatever state the row is in."""
    index = Index(tmp_path / "index.sqlite")
    _series(index)
    delivery = _delivery(index, tmp_path)
    before = index.state_counts()
    key = {"series": "1.2.3", "jobs": 1, "deliveries": delivery}[machine.table]
    with pytest.raises(states.IllegalTransition, match="is not a transition of the"):
        with index._tx() as db:
            states.apply(db, machine, made_up, key, {})
    assert index.state_counts() == before


def test_series_and_deliveries_move_only_along_their_tables(tmp_path):
    """The guarded transitions of the series and delivery machines: a move from a state the
    transition does not start from changes no row (the caller learns it from the count)."""
    index = Index(tmp_path / "index.sqlite")
    _series(index)
    index.route_series("1.2.3", 0, [])
    assert index.series("1.2.3").state == SeriesState.RECEIVING, "a receiving series is not routed"
    assert index.mark_complete("1.2.3", 0) and index.mark_complete("1.2.3", 0) is False
    index.route_series("1.2.3", 0, [])
    assert index.series("1.2.3").state == SeriesState.ROUTED
    assert index.force_series_complete("1.2.3") is False, "routed is not receiving: nothing to complete"
    _series(index)  # a late instance re-opens it with a new generation
    assert (index.series("1.2.3").state, index.series("1.2.3").generation) == (SeriesState.RECEIVING, 1)

    delivery = _delivery(index, tmp_path)
    assert index.retry_dead_deliveries(delivery) == 0, "a pending delivery is not dead"
    index.mark_delivery_failed(delivery, "refused", next_attempt_at=None)
    assert index.deliveries()[0].state == DeliveryState.DEAD
    index.mark_delivery_sent(delivery)  # a late success of a delivery given up on does not revive it
    assert index.deliveries()[0].state == DeliveryState.DEAD
    assert index.retry_dead_deliveries(delivery) == 1 and index.deliveries()[0].state == DeliveryState.PENDING


def test_a_job_is_created_queued_or_failed_and_nothing_else(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    spec = JobSpec(route="r", pipeline="p", subject="s", study_uid="1.2", generation=0, inputs={},
                   destinations=["pacs"], state=JobState.DONE)
    with pytest.raises(states.IllegalTransition, match="it starts queued or failed"):
        index.add_job(spec)
    assert index.jobs() == []
