"""The node after a year of a busy site's traffic: every page, command, metric and loop timed on a
year's index, against the same on an empty one (the site's first day), in one run.

The index is filled with synthetic bookkeeping (``tests/support/year_index.py``: by default 200 studies a
day for 365 days, 270 instance rows each, one job, five result rows and one delivery each; the
last 7 days' studies keep their sample files). Each figure is the median of ``--repeat`` calls, in
this process, after one warm-up call (the web page and the CLI keep their connection and caches
between requests as the running node does):

- the receiver's index commit of one instance (``Index.record_instance``), the completion loop's
  pass (``Assembler.tick``), claiming a job, the dispatcher's due deliveries;
- ``radnode jobs``, ``deliveries``, ``studies``, ``problems`` (``cli.main``, output discarded);
- every web page (``WebApp``: overview, jobs, one job, deliveries, studies) and /metrics;
- retention's pass over one further day of studies, reconcile at start (``reindex_spool``);
- the index file's size, and whether retention keeps it flat over ``--further-days`` more days
  (the index swept to steady state and compacted first, then one day of traffic and one sweep a day).

Targets (issue #67): every command and page < 300 ms, the completion pass < 50 ms, reconcile
< 10 s, the receiver's commit within 10 % of the empty index's.

    python3 bench/year_of_traffic.py [--days 365] [--studies-per-day 200] [--instances 270] [--repeat 5]
        [--further-days 30]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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
from tests.support.year_index import DAY, Traffic, fill, sample_file

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def timed(call: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def quiet_cli(config_path: Path, *args: str) -> Callable[[], object]:
    def run() -> object:
        with contextlib.redirect_stdout(io.StringIO()):
            return cli.main([*args, "--config", str(config_path)])
    return run


def receiver_commit(config: Config) -> Callable[[], object]:
    """The next instance of one arriving series, indexed as the receiver indexes it (no disk
    flush); the series' first file is on disk, so the completion loop reads it as it would."""
    index = Index(config.node.index_path, durable_commits=False)
    study, series = "1.2.826.0.1.3680043.10.9.1", "1.2.826.0.1.3680043.10.9.2"
    folder = config.node.spool / "instances" / study / series
    sample_file(folder / f"{series}.1.dcm", study, series)
    counter = iter(range(1, 10**9))

    def commit() -> object:
        sop = f"{series}.{next(counter)}"
        return index.record_instance(InstanceRecord(sop, series, study, "CT", CT, EXPLICIT_LE, folder / f"{sop}.dcm",
                                                    1000), None)
    return commit


def measure(config: Config, config_path: Path, repeat: int) -> dict[str, float]:
    """Seconds per call of everything the issue names, on the index ``config`` points at."""
    app, index, now = WebApp(config, dict), Index(config.node.index_path), time.time()
    newest = max((job.id for job in index.jobs_page(Listing(limit=1))), default=1)
    rows: dict[str, float] = {
        "receiver: index commit of one instance": timed(receiver_commit(config), repeat * 20),
        "completion loop: one pass": timed(lambda: Assembler(config, index).tick(time.time()), repeat),
        "claim a job": timed(lambda: index.claim_job(None, 60.0), repeat),
        "dispatcher: due deliveries": timed(lambda: index.due_deliveries(time.time(), 50), repeat),
    }
    for command in (("jobs",), ("deliveries",), ("studies",), ("problems",)):
        rows[f"radnode {' '.join(command)}"] = timed(quiet_cli(config_path, *command), repeat)
    pages: dict[str, Callable[[], object]] = {
        "/": lambda: app.overview("admin", {}), "/jobs": lambda: app.jobs("admin", {}),
        "/jobs?state=done&pipeline=ct-denoise": lambda: app.jobs("admin", {"state": "done", "pipeline": "ct-denoise"}),
        "/jobs/<newest>": lambda: app.job("admin", newest, {}), "/deliveries": lambda: app.deliveries("admin", {}),
        "/studies": lambda: app.studies("admin", {}),
        "/metrics": lambda: list(NodeCollector(config, app.index, dict).collect()),
    }
    for name, page in pages.items():
        rows[f"web {name}"] = timed(page, repeat)
    spool = Spool(config.node.spool)
    oldest = min((at for _, at in index.studies()), default=now)
    older_than_days = (now - oldest) / DAY - 1.0  # one day of studies to forget
    days = max(older_than_days, 0.1)
    retention = Retention(config.retention.model_copy(update={"instances_days": days, "results_days": days}), index, spool)
    start = time.perf_counter()
    retention.sweep(now)
    rows["retention: one pass (a day of studies)"] = time.perf_counter() - start
    start = time.perf_counter()
    reindex_spool(spool, index)
    rows["reconcile at start"] = time.perf_counter() - start
    return rows


def index_bytes(config: Config) -> int:
    return sum(path.stat().st_size for path in config.node.index_path.parent.glob("index.sqlite*"))


def further_days(config: Config, traffic: Traffic, days: int) -> list[tuple[int, int, int]]:
    """The index at steady state (retention swept with the shipped settings, then VACUUM, as if
    the node had run them all year), then ``days`` more days of traffic with one sweep a day
    keeping ``traffic.days - 1`` days of history: (day, index file bytes without its WAL, job rows)
    after each day."""
    index, spool, now = Index(config.node.index_path), Spool(config.node.spool), time.time()
    settings = config.retention.model_copy(update={"history_days": traffic.days - 1.0})
    Retention(settings, index, spool).sweep(now)
    index.close()
    with sqlite3.connect(config.node.index_path) as db:
        db.execute("VACUUM")
    index = Index(config.node.index_path)
    main_file = config.node.index_path  # its WAL comes and goes with the checkpoints
    rows = [(0, main_file.stat().st_size, len(index.jobs()))]
    day_only = Traffic(days=1, studies_per_day=traffic.studies_per_day, instances=traffic.instances,
                       results=traffic.results, files_days=0)
    for day in range(1, days + 1):
        fill(config.node.index_path, config.node.spool, day_only, now + day * DAY, traffic.days + day - 1)
        Retention(settings, index, spool).sweep(now + day * DAY)
        rows.append((day, main_file.stat().st_size, len(index.jobs())))
    return rows


def node_at(folder: Path, traffic: Traffic | None) -> tuple[Config, Path]:
    settings = node_config(folder)
    config = parse_config(settings)
    if traffic is None:
        Index(config.node.index_path).close()
    else:
        start = time.perf_counter()
        fill(config.node.index_path, config.node.spool, traffic)
        print(f"filled {traffic.studies} studies, {traffic.studies * traffic.instances:,} instance rows "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
    return config, write_toml(settings, folder / "config.toml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--studies-per-day", type=int, default=200)
    parser.add_argument("--instances", type=int, default=270, help="instance rows per study")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--further-days", type=int, default=30,
                        help="days of traffic after the year, retention swept daily (0: skip)")
    args = parser.parse_args()
    traffic = Traffic(days=args.days, studies_per_day=args.studies_per_day, instances=args.instances)
    with tempfile.TemporaryDirectory() as empty_dir, tempfile.TemporaryDirectory() as year_dir:
        empty = measure(*node_at(Path(empty_dir), None), args.repeat)
        year_config, year_path = node_at(Path(year_dir), traffic)
        year = measure(year_config, year_path, args.repeat)
        size = index_bytes(year_config)
        month = further_days(year_config, traffic, args.further_days) if args.further_days else []
    print(f"\n| on the index of | empty | {args.days} days x {args.studies_per_day} studies | ratio |")
    print("|---|---|---|---|")
    for name, seconds in year.items():
        ratio = seconds / empty[name] if empty[name] > 0 else float("nan")
        print(f"| {name} | {empty[name] * 1000:.1f} ms | {seconds * 1000:.1f} ms | {ratio:.2f} |")
    print(f"| index file (with its WAL) | | {size / 2**20:.0f} MiB | |")
    if month:
        (_, start_bytes, start_jobs), (last, end_bytes, end_jobs) = month[0], month[-1]
        print(f"\nretention at steady state, {last} more days ({args.days - 1} days of history kept): index "
              f"{start_bytes / 2**20:.1f} -> {end_bytes / 2**20:.1f} MiB ({end_bytes / start_bytes:.3f}x), "
              f"job rows {start_jobs:,} -> {end_jobs:,}")
        print("  MiB by day: " + ", ".join(f"{day}: {size / 2**20:.1f}" for day, size, _ in month[::5]))


if __name__ == "__main__":
    main()
