"""After a year of traffic: every page, command, metric and loop reads the index through an index,
one page of a listing at a time, and one unreadable study does not take a page or /metrics down.

A small copy of ``bench/year_of_traffic.py``'s index (``tests/support/year_index.py``: 2,000 studies,
200,000 instance rows, 2,000 jobs, 10,000 result rows; the bench times the full year). Every
statement the node runs is traced at the SQLite connection and its query plan read: on a year's
index a full scan of instances, series, jobs or deliveries costs seconds per page or scrape.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.complete.assembler import Assembler
from node.config import Config, parse_config
from node.index.db import Listing
from node.index.store import Index, InstanceRecord
from node.operate import cli
from node.operate.monitoring import NodeCollector
from node.operate.reconcile import reindex_spool
from node.operate.retention import Retention
from node.operate.web import WebApp
from node.receive.spool import Spool
from tests.support.harness import node_config, write_toml
from tests.support.year_index import DAY, PIPELINES, Traffic, fill, sample_file

pytestmark = [pytest.mark.slow]

TRAFFIC = Traffic(days=100, studies_per_day=20, instances=100, files_days=2)
#: Tables that grow with every study: a plan may read them only through an index.
GROWING = ("instances", "series", "studies", "jobs", "deliveries", "results", "result_objects", "delivery_attempts",
           "association_series")
#: Full scans that stay: one row per series, summed for /metrics' instance count (146,000 rows a
#: year, milliseconds; the instance table it replaces holds 20 million).
ALLOWED_SCANS = {"SELECT COALESCE(SUM(instance_count), 0) FROM series"}


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path]:
    folder = tmp_path_factory.mktemp("year")
    settings = node_config(folder)
    config = parse_config(settings)
    fill(config.node.index_path, config.node.spool, TRAFFIC)
    return config, write_toml(settings, folder / "config.toml")


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL statement any index connection opened from now on runs, bound values inlined."""
    statements: list[str] = []
    connect = sqlite3.connect

    def tracing(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)
        connection.set_trace_callback(statements.append)
        return connection

    monkeypatch.setattr("node.index.db.sqlite3.connect", tracing)
    return statements


def full_scans(index_path: Path, statements: list[str]) -> Iterator[str]:
    """The statements whose plan scans a growing table without an index. A scan in rowid order
    cut by a LIMIT (the newest page of a listing) reads only that page."""
    db = sqlite3.connect(index_path)
    try:
        for sql in dict.fromkeys(statements):
            if not re.match(r"\s*(SELECT|UPDATE|DELETE)", sql, re.IGNORECASE) or sql in ALLOWED_SCANS:
                continue
            plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql)]
            paged = re.search(r"ORDER BY id DESC LIMIT \d+$", sql) and not any("TEMP B-TREE" in p for p in plan)
            for step in plan:
                table = re.match(r"SCAN (\w+)", step)
                if table and table.group(1) in GROWING and "INDEX" not in step and not paged:
                    yield f"{sql}  ->  {plan}"
    finally:
        db.close()


def test_every_page_command_metric_and_loop_reads_a_years_index_through_its_indexes(
        year: tuple[Config, Path], traced: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    config, config_path = year
    now = time.time()
    app = WebApp(config, dict)
    for page in (lambda: app.overview("admin", {}), lambda: app.jobs("admin", {}),
                 lambda: app.jobs("admin", {"state": "done", "pipeline": "ct-denoise", "before": "1000"}),
                 lambda: app.job("admin", 1500, {}), lambda: app.deliveries("admin", {"state": "sent"}),
                 lambda: app.studies("admin", {})):
        assert page()
    list(NodeCollector(config, app.index, dict).collect())
    for command in (["jobs"], ["jobs", "--state", "done", "--pipeline", "ct-denoise", "--since", "2026-01-01"],
                    ["jobs", "--id", "7"], ["deliveries", "--state", "sent"], ["studies", "--all"], ["problems"]):
        assert cli.main([*command, "--config", str(config_path)]) == 0
    capsys.readouterr()
    index = Index(config.node.index_path)
    Assembler(config, index).tick(now)
    index.claim_job(None, 60.0)
    index.due_deliveries(now, 10)
    Retention(config.retention.model_copy(update={"instances_days": TRAFFIC.days - 1.0}), index,
              Spool(config.node.spool)).sweep(now)
    assert reindex_spool(Spool(config.node.spool), index) == 0, "every sample file has its row"
    (study, _), *_ = index.studies(since=now - DAY)
    (series,) = index.series_of_study(study)
    index.record_instance(InstanceRecord(f"{series.series_uid}.1", series.series_uid, study, "CT",
                                         "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", series.sample_path, 10),
                          None)  # the newest series' first instance, sent again
    assert len(traced) > 100
    assert list(full_scans(config.node.index_path, traced)) == []


def test_listings_show_one_page_newest_first_with_its_filters_and_the_command_for_the_next(
        year: tuple[Config, Path], capsys: pytest.CaptureFixture[str]) -> None:
    config, config_path = year
    index = Index(config.node.index_path)
    everything = index.jobs()

    def listed(*args: str) -> tuple[list[int], str]:
        assert cli.main(["jobs", *args, "--config", str(config_path)]) == 0
        out = capsys.readouterr().out
        table = out.split("\n\n")[0].splitlines()[1:]  # the rows, under the header, above the footer
        return [int(line.split()[0]) for line in table], out

    newest, out = listed("--limit", "3")
    assert newest == [j.id for j in everything[::-1][:3]]
    assert f"3 of {len(everything)} shown, newest first; older: radnode jobs --before {newest[-1]}" in out
    assert listed("--limit", "3", "--before", str(newest[-1]))[0] == [j.id for j in everything[::-1][3:6]]
    denoise, out = listed("--pipeline", "ct-denoise", "--state", "done", "--limit", "5")
    assert denoise == [j.id for j in everything if j.pipeline == "ct-denoise"][::-1][:5]
    assert f"--state done --pipeline ct-denoise --before {denoise[-1]}" in out
    since = time.strftime("%Y-%m-%d", time.localtime(time.time() - 3 * DAY))
    recent, out = listed("--since", since, "--limit", "0")
    assert recent == [j.id for j in everything if j.created_at >= time.mktime(time.strptime(since, "%Y-%m-%d"))][::-1]
    assert "older:" not in out, "--limit 0 lists them all"
    assert index.count_jobs(Listing(pipeline=PIPELINES[0])) == -(-TRAFFIC.studies // len(PIPELINES))

    app = WebApp(config, dict)
    first = app.jobs("admin", {}).decode()
    older = re.search(r'id="older" href="/jobs\?before=(\d+)"', first)
    assert older and f"{len(everything)} jobs" in first and first.count('class="job"') == 100
    second = app.jobs("admin", {"before": older.group(1)}).decode()
    assert f'id="job-{int(older.group(1)) - 1}"' in second and f'id="job-{older.group(1)}"' not in second


def test_a_study_whose_files_are_gone_is_listed_from_the_index_and_the_pages_and_metrics_show_the_rest(
        year: tuple[Config, Path], capsys: pytest.CaptureFixture[str]) -> None:
    config, config_path = year
    index = Index(config.node.index_path)
    recent = index.studies(since=time.time() - DAY)
    (gone, _), (kept, _) = recent[0], recent[1]
    (series,) = index.series_of_study(gone)
    series.sample_path.unlink()
    try:
        app = WebApp(config, dict)
        studies = app.studies("admin", {}).decode()
        assert "could not be read (FileNotFoundError" in studies and kept in studies
        assert app.overview("admin", {})
        metrics = _metric_names(NodeCollector(config, app.index, dict).collect)
        assert {"radnode_studies", "radnode_jobs", "radnode_instances_stored"} <= metrics
        assert cli.main(["studies", "--all", "--config", str(config_path)]) == 0
        listing = capsys.readouterr().out
        assert f"study {gone}" in listing and "its files could not be read (FileNotFoundError" in listing
    finally:
        sample_file(series.sample_path, gone, series.series_uid)


def _metric_names(collect: Callable[[], Iterator[Any]]) -> set[str]:
    return {metric.name for metric in collect()}
