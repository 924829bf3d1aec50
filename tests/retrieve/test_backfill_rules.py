"""The rules of a backfill that need no PACS: live jobs before backfill jobs, the hours window,
cancelling, the held retrieve, the config keys and the progress line."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from node.config import ConfigError, Route, parse_config
from node.index.backfills import FoundStudy, Progress
from node.index.states import BackfillState, JobState, RetrieveState
from node.index.store import Index
from node.operate.backfill_cli import status_line
from node.retrieve.backfill import in_hours
from node.route.router import job_spec
from tests.support.harness import threshold_route

ROUTE = Route.model_validate(threshold_route("r", destinations=["pacs"]))


def add_job(index: Index, study_uid: str, priority: int = 0) -> int:
    route = ROUTE.model_copy(update={"priority": priority})
    index.add_job(job_spec(route, subject=f"{study_uid}.1", study_uid=study_uid, generation=0, inputs={}))
    return index.jobs()[-1].id


def backfill_of(index: Index, *study_uids: str) -> int:
    backfill_id = index.create_backfill("pacs", {"accessions": ["A"]})
    assert index.record_found(backfill_id, [FoundStudy(uid, f"ACC-{uid}") for uid in study_uids])
    return backfill_id


def test_a_live_job_is_claimed_before_older_and_higher_priority_backfill_jobs(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    backfill_of(index, "1.1", "1.2")
    old = [add_job(index, "1.1", priority=5), add_job(index, "1.2", priority=5)]
    live = add_job(index, "2.1")
    assert [index.job(i).lane for i in (*old, live)] == ["backfill", "backfill", "live"]
    assert index.claim_job(None, 60).id == live
    assert index.claim_job(None, 60, backfill=False) is None  # outside [backfill] hours: they wait
    assert index.claim_job(None, 60).id == old[0]


@pytest.mark.parametrize("hours, clock, inside", [
    ("22:00-06:00", "23:30", True), ("22:00-06:00", "05:59", True), ("22:00-06:00", "06:00", False),
    ("22:00-06:00", "12:00", False), ("08:00-17:00", "08:00", True), ("08:00-17:00", "17:00", False),
    (None, "12:00", True),
])
def test_backfill_hours_are_local_time_and_may_run_past_midnight(hours, clock, inside):
    moment = datetime.strptime(f"2026-11-27 {clock}", "%Y-%m-%d %H:%M").timestamp()
    assert in_hours(hours, moment) is inside


def test_cancelling_a_backfill_cancels_its_queued_jobs_and_leaves_live_ones(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    backfill_id = backfill_of(index, "1.1", "1.2")
    retrieving = index.take_studies(1)
    backfill_job, live_job = add_job(index, "1.1"), add_job(index, "2.1")
    assert index.cancel_backfill(backfill_id) == 1
    assert index.job(backfill_job).state == JobState.FAILED and index.job(live_job).state == JobState.QUEUED
    assert index.backfill(backfill_id).state == BackfillState.CANCELLED
    assert {s.state for s in index.backfill_studies(backfill_id)} == {RetrieveState.CANCELLED}
    assert index.mark_retrieved(retrieving[0].id, 3) is False  # the retrieve in flight ends into nothing
    late = add_job(index, "1.10")  # not a backfill study: untouched by the sweep
    index.add_job(job_spec(ROUTE, subject="1.2.9", study_uid="1.2", generation=0, inputs={}))
    assert index.cancel_stray_jobs() == 1  # the job its cancelled retrieve brought
    assert index.job(late).state == JobState.QUEUED
    assert index.cancel_backfill(backfill_id) is None  # already ended


def test_a_study_is_held_from_completion_while_its_retrieve_is_under_way_or_will_be_tried_again(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    backfill_of(index, "1.1", "1.2")
    assert not index.held_for_retrieve("1.1")  # not asked for yet: a live study of that UID runs as ever
    (study,) = index.take_studies(1)
    assert index.held_for_retrieve("1.1")
    assert index.retrieve_failed(study.id, "PACS away", max_attempts=2, wait=60) == RetrieveState.FOUND
    assert index.held_for_retrieve("1.1")  # half of it may be here: it waits for the next try
    assert [s.study_uid for s in index.take_studies(2)] == ["1.2"]  # not asked again before its wait is over
    with index._tx() as db:  # the wait is over
        db.execute("UPDATE backfill_studies SET not_before = 0")
    (again,) = index.take_studies(1)
    assert index.retrieve_failed(again.id, "PACS away", max_attempts=2, wait=0) == RetrieveState.FAILED
    assert not index.held_for_retrieve("1.1")  # given up: what came runs, the export says why


def test_a_retrieve_that_keeps_failing_is_given_up_with_its_reason(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    backfill_id = backfill_of(index, "1.1")
    for attempt in (1, 2):
        (study,) = index.take_studies(1)
        assert study.attempts == attempt
        index.retrieve_failed(study.id, "C-MOVE 0xA801", max_attempts=2, wait=0)
    (study,) = index.backfill_studies(backfill_id)
    assert (study.state, study.last_error) == (RetrieveState.FAILED, "C-MOVE 0xA801")
    assert index.progress(backfill_id).failed == 1
    assert index.finish_backfills() == [backfill_id]


def config_with(**tables) -> dict:
    return {"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
            "sources": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}], **tables}


@pytest.mark.parametrize("tables, key", [
    ({"backfill": {"hours": "22-06"}}, "backfill.hours"),  # said: as "HH:MM-HH:MM", e.g. "22:00-06:00"
    ({"backfill": {"retrieves_in_flight": 0}}, "backfill.retrieves_in_flight"),
    ({"routes": [{"name": "r", "pipeline": "ct-denoise", "match": {"Modality": "CT"}}]}, "routes[0]"),
    ({"sources": [{"name": "a", "ae_title": "A", "host": "h", "port": 1}] * 2}, "sources[1].name"),
    ({"sources": [{"name": "a", "ae_title": "A", "host": "h", "port": 1, "tls": {"ca_file": "/none"}}]},
     "sources[0].tls.ca_file"),  # TLS as a destination has it, checked at start
])
def test_backfill_config_errors_name_the_key(tables, key):
    with pytest.raises(ConfigError) as refused:
        parse_config(config_with(**tables))
    assert f"  {key}: " in str(refused.value)


def test_a_silent_trial_route_needs_no_destinations_and_its_jobs_deliver_nothing():
    config = parse_config(config_with(routes=[{"name": "r", "pipeline": "ct-denoise", "deliver": False,
                                               "match": {"Modality": "CT"}}]))
    spec = job_spec(config.routes[0], subject="1", study_uid="1", generation=0, inputs={})
    assert spec.destinations == []
    with pytest.raises(ConfigError, match="unknown source 'other'; known: pacs"):
        config.source("other")
    assert config.source(None).name == "pacs"


def test_the_progress_line_draws_a_bar_of_studies_run_with_rate_and_eta(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    backfill = index.backfill(backfill_of(index, "1.1"))
    now = time.time()
    line = status_line(backfill, Progress(queried=20, retrieved=12, failed=0, run=10, delivered=9,
                                          started_at=now - 600), now)
    assert "[###############...............]" in line and "10/20 run" in line and "12 retrieved" in line
    assert "9 delivered" in line and "60 studies/h" in line and "ETA 10 min" in line  # 10 left at 60 an hour
    assert "ACC" not in line


def test_outside_its_hours_a_backfill_retrieves_nothing(tmp_path):
    from node.retrieve.backfill import Backfiller

    now = datetime.now()
    closed = f"{(now.hour + 2) % 24:02d}:00-{(now.hour + 3) % 24:02d}:00"  # a window that is not now
    config = parse_config(config_with(node={"spool": str(tmp_path / "spool")}, backfill={"hours": closed}))
    index = Index(config.node.index_path)
    backfill_id = backfill_of(index, "1.1")
    Backfiller(config, index, receiving=lambda: True).tick()
    assert [s.state for s in index.backfill_studies(backfill_id)] == [RetrieveState.FOUND]


def test_a_backfill_without_sources_or_with_several_says_which_to_name():
    with pytest.raises(ConfigError, match=r"none configured; add a \[\[sources\]\] table"):
        parse_config({}).source(None)
    two = config_with(sources=[{"name": n, "ae_title": "A", "host": "h", "port": 1} for n in ("a", "b")])
    with pytest.raises(ConfigError, match="several configured: name one with --source; known: a, b"):
        parse_config(two).source(None)


def test_a_retrieved_study_no_route_takes_counts_as_run_so_its_backfill_ends(tmp_path):
    from node.index.store import InstanceRecord

    index = Index(tmp_path / "index.sqlite")
    backfill_id = backfill_of(index, "1.1")
    (study,) = index.take_studies(1)
    index.record_instance(InstanceRecord("1.1.1.1", "1.1.1", "1.1", "MR", "1.2.840.10008.5.1.4.1.1.4",
                                         "1.2.840.10008.1.2.1", tmp_path / "x.dcm", 4), None)
    index.mark_retrieved(study.id, 1)
    assert index.progress(backfill_id).run == 0 and index.finish_backfills() == []  # its series not routed yet
    index.mark_complete("1.1.1", 0)
    index.route_series("1.1.1", 0, [])  # no route matched an MR series
    assert index.progress(backfill_id).run == 1 and index.finish_backfills() == [backfill_id]
