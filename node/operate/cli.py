"""The ``radnode`` command line: serve, run offline, test routes, look after jobs and deliveries."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pydicom
from pydicom.errors import InvalidDicomError

from node import logs
from node.config import Config, ConfigError, Route, builtin_config, load_config
from node.index.db import Listing
from node.index.states import DeliveryState, JobState
from node.operate import backfill_cli
from node.operate.admin import (
    Outcome,
    cancel_job,
    complete_series,
    complete_study,
    model_identity,
    notify_rows,
    result_groups,
    retry_deliveries,
    retry_job,
    stage_seconds,
    supersessions,
)
from node.operate.admin import when as _when
from node.receive.spool import keep_private

if TYPE_CHECKING:
    from node.index.store import Delivery, Index, Job
    from pipelines.base import Pipeline

DEFAULT_CONFIG = Path("config.toml")
#: Commands that work without a config file, on the built-in defaults (a newcomer's first try).
_WORK_WITHOUT_CONFIG = ("run", "route-test")


#: Adds a subcommand that takes ``--config`` (``config=False``: one that reads no config).
Command = Callable[..., argparse.ArgumentParser]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radnode",
        description="DICOM AI node: receives studies, runs pipelines, stores results in the PACS.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text if config else None)
        if config:
            p.add_argument("--config", type=Path, default=None,
                           help="configuration file (default: ./config.toml"
                                + (", else the built-in defaults)" if name in _WORK_WITHOUT_CONFIG else ")"))
        return p

    for add in (_node_commands, _listing_commands, _queue_commands, _site_commands):
        add(command)
    return parser


def _node_commands(command: Command) -> None:
    command("serve", "start the node: Storage SCP, STOW-RS receiver (when [dicomweb] port is set), workers and delivery")
    run = command("run", "run a pipeline offline on the DICOM files under a folder")
    run.add_argument("--pipeline", required=True, help="pipeline name, e.g. ct-denoise")
    run.add_argument("--input", required=True, type=Path, help="folder with the input DICOM files")
    run.add_argument("--output", required=True, type=Path, help="folder for the result DICOM files")
    run.add_argument("--traceback", action="store_true",
                     help="on a pipeline error, print its traceback too (for the developer who fixes it)")
    rt = command("route-test", "show which routes a file or folder of DICOM files would take")
    rt.add_argument("path", type=Path)


def _listing_commands(command: Command) -> None:
    jobs = command("jobs", "list jobs, newest first")
    jobs.add_argument("--state", type=JobState, choices=list(JobState))
    jobs.add_argument("--pipeline", help="only jobs of this pipeline")
    _paging(jobs, "jobs")
    jobs.add_argument("--id", type=int, help="show one job in full: inputs, summary, traceback, deliveries")
    deliveries = command("deliveries", "list deliveries of results to destinations, newest first")
    deliveries.add_argument("--state", type=DeliveryState, choices=list(DeliveryState))
    _paging(deliveries, "deliveries")
    command("problems", "list series, studies and clean-ups the node set aside, with the reason")


def _queue_commands(command: Command) -> None:
    retry = command("retry", "re-queue dead deliveries (all, or one) or a failed job")
    target = retry.add_mutually_exclusive_group()
    target.add_argument("--delivery", type=int, help="only this delivery id")
    target.add_argument("--job", type=int, help="re-run this failed job instead")
    studies = command("studies", "list studies: state, input roles filled, what each waits for and until when")
    studies.add_argument("--all", action="store_true", help="also studies that are routed (default: only those "
                         "still receiving or waiting)")
    complete = command("complete", "force completion now of a study (its study routes decide at once) or a series")
    what = complete.add_mutually_exclusive_group(required=True)
    what.add_argument("--study", metavar="UID", help="StudyInstanceUID")
    what.add_argument("--series", metavar="UID", help="SeriesInstanceUID")
    cancel = command("cancel", "cancel a queued job (it ends as failed; retry --job re-queues it)")
    cancel.add_argument("--job", type=int, required=True, help="job id (radnode jobs --state queued)")


def _site_commands(command: Command) -> None:
    command("hash-password", "print the [web] password_hash line for a password read from the terminal",
            config=False)
    command("notify", "list the [[notify]] targets: last sent, pending and dead notifications, last error")
    backfill_cli.add_arguments(command("backfill", "retrieve past studies from a [[sources]] PACS and run the routes "
                                       "over them (by a list or a query); --status, --cancel, --report"))
    command("destinations", "list the destinations: protocol, address, reachable or not since when, last check")
    echo = command("echo", "C-ECHO a destination named in the config (a DICOMweb one: a QIDO-RS request)")
    echo.add_argument("destination", help="destination name from [[destinations]]")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup()
    keep_private()
    if args.command == "hash-password":  # needs no config: it is how one is written
        return _hash_password()
    try:
        config = _config(args)
    except ConfigError as error:
        print(f"radnode: {error}", file=sys.stderr)
        return 2
    handler = {
        "serve": _serve, "run": _run, "route-test": _route_test, "jobs": _jobs,
        "deliveries": _deliveries, "problems": _problems, "retry": _retry, "echo": _echo,
        "studies": _studies, "complete": _complete, "cancel": _cancel, "notify": _notify,
        "backfill": backfill_cli.run, "destinations": _destinations,
    }[args.command]
    try:
        return handler(config, args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """``radnode jobs | head -1``: the reader closed the pipe, which is not an error of ours.
    Standard output is pointed at /dev/null so that Python's flush at exit does not fail again
    with a traceback (the recipe of the signal module's documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # what a shell reports for a command killed by SIGPIPE


def _config(args: argparse.Namespace) -> Config:
    """--config, else ./config.toml, else (run and route-test only) the built-in defaults."""
    if args.config is None and not DEFAULT_CONFIG.exists() and args.command in _WORK_WITHOUT_CONFIG:
        config, source = builtin_config()
        print(f"radnode: no {DEFAULT_CONFIG} here and no --config: using the built-in defaults ({source})",
              file=sys.stderr)
        return config
    if args.config is None:
        args.config = DEFAULT_CONFIG
    return load_config(args.config)


def _serve(config: Config, args: argparse.Namespace) -> int:
    from node.operate.service import serve

    try:
        serve(args.config)
    except ConfigError as error:
        print(f"radnode: {error}", file=sys.stderr)
        return 2
    return 0


# ---- offline run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _FolderSeries:
    """A series found in a folder; quacks like the index's SeriesRow for role assignment."""

    series_uid: str
    instance_count: int
    last_received: float
    paths: tuple[Path, ...]


def _scan(folder: Path) -> tuple[dict[str, list[Path]], dict[str, pydicom.Dataset], int]:
    by_series: dict[str, list[Path]] = defaultdict(list)
    headers: dict[str, pydicom.Dataset] = {}
    skipped = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            uid = str(header.SeriesInstanceUID)
        except (InvalidDicomError, AttributeError, OSError):
            skipped += 1
            continue
        by_series[uid].append(path)
        headers.setdefault(uid, header)
    return by_series, headers, skipped


def _study_batches(route: Route, by_series: dict[str, list[Path]],
                   headers: dict[str, pydicom.Dataset]) -> dict[str, dict[str, list[Path]]]:
    """One batch per study in the folder, of the series the route's selectors pick from that study
    alone: a folder of several studies never gives one patient's T1c with another's FLAIR."""
    from node.route.router import assign_inputs

    studies: dict[str, list[str]] = defaultdict(list)
    for uid in by_series:
        studies[str(headers[uid].get("StudyInstanceUID", ""))].append(uid)
    batches = {}
    for study_uid, uids in studies.items():
        found = [(_FolderSeries(uid, len(by_series[uid]), 0.0, tuple(by_series[uid])), headers[uid]) for uid in uids]
        assigned = assign_inputs(route, found)  # type: ignore[arg-type]
        batches["study" if len(studies) == 1 else f"study {study_uid}"] = {
            role: by_series[uid] for role, uid in assigned.items()}
    return batches


def _run(config: Config, args: argparse.Namespace) -> int:
    from node.run.invoke import PipelineCache
    from pipelines.base import SERIES_ROLE
    from pipelines.model_folder import ModelFolderError

    if not args.input.is_dir():
        print(f"radnode: --input {args.input} is not a folder", file=sys.stderr)
        return 2
    by_series, headers, skipped = _scan(args.input)
    if not by_series:
        print(f"radnode: no DICOM files under {args.input}", file=sys.stderr)
        return 2
    try:
        pipeline = PipelineCache(config).get(args.pipeline)
    except (LookupError, ModelFolderError) as error:  # a model folder or bundle it cannot run
        print(f"radnode: {error}", file=sys.stderr)
        return 2
    roles = [spec.role for spec in pipeline.input_specs()]
    if roles == [SERIES_ROLE]:
        batches = {f"series {number}": {SERIES_ROLE: paths} for number, paths in enumerate(by_series.values(), 1)}
    else:
        route = next((r for r in config.routes if r.pipeline == args.pipeline and r.level == "study"), None)
        if route is None:
            print(f"radnode: {args.pipeline} takes several series ({', '.join(roles)}); add a study-level "
                  f"route for it to the config so its input selectors can pick them", file=sys.stderr)
            return 2
        batches = _study_batches(route, by_series, headers)
    args.output.mkdir(parents=True, exist_ok=True)
    outcomes = {label: _run_one(pipeline, label, series, args) for label, series in batches.items()}
    if skipped:
        print(f"{skipped} files under {args.input} are not DICOM and were skipped")
    failed = [label for label, outcome in outcomes.items() if outcome == "failed"]
    if failed:
        print(f"radnode: {args.pipeline} failed on {', '.join(failed)} (the reasons are above)", file=sys.stderr)
        return 1
    if "done" not in outcomes.values():
        print(f"radnode: {args.pipeline} found nothing it applies to under {args.input} "
              "(the reasons are above)", file=sys.stderr)
        return 1
    return 0


def _run_one(pipeline: Pipeline, label: str, series: dict[str, list[Path]],
             args: argparse.Namespace) -> Literal["done", "not applicable", "failed"]:
    """Run one series or study and print what came of it; "done", "not applicable" or "failed".

    A pipeline error is the input's problem as the user sees it: one line naming it and the
    reason, never a raw traceback (``--traceback`` adds it for the developer who fixes it).
    """
    from node.operate.findings import finding_lines
    from node.run.invoke import protect_patient_values, run_pipeline

    protect_patient_values(series)
    with tempfile.TemporaryDirectory(dir=args.output) as tmp:
        try:
            result = run_pipeline(pipeline, series, Path(tmp) / "out", f"offline-{label.replace(' ', '-')}")
        except Exception as error:
            if args.traceback:
                traceback.print_exc()
            print(f"{label}: failed: {type(error).__name__}: {' '.join(str(error).split())}", file=sys.stderr)
            return "failed"
        written = [args.output / path.name for path in result.outputs]
        for source, target in zip(result.outputs, written):
            shutil.move(str(source), target)
    if not result.applicable:
        print(f"{label}: not applicable: {result.reason}")
        return "not applicable"
    print(f"{label}: {len(written)} objects written to {args.output}")
    for path in written:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if header.Modality == "SR":
            print(f"  report: {header.get('SeriesDescription', '')}")
            for line in finding_lines(header):
                print(f"  {line}")
    return "done"


# ---- route-test ----------------------------------------------------------------------------


def _route_test(config: Config, args: argparse.Namespace) -> int:
    from node.operate.admin import route_test

    if not args.path.exists():
        print(f"radnode: {args.path} does not exist", file=sys.stderr)
        return 2
    for found in route_test(config, args.path):
        if found.error:
            print(f"{found.path}: {found.error}")
            continue
        print(f"{found.path}: series {found.series_uid or '(no SeriesInstanceUID)'} "
              f"{found.modality} {found.description!r}")
        if not found.verdicts:
            print("  no routes configured")
        for verdict in found.verdicts:
            detail = "; ".join(verdict.reasons)
            print(f"  {'MATCH   ' if verdict.matched else 'no match'} {verdict.route}"
                  f"{': ' + detail if detail else ''}")
    return 0


# ---- jobs and deliveries -------------------------------------------------------------------

#: Rows a listing prints unless told otherwise: a year of a busy site is 100,000 jobs.
LISTING_ROWS = 50


def _paging(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--since", type=_date, metavar="YYYY-MM-DD", help=f"only {what} created on or after this day")
    parser.add_argument("--before", type=int, metavar="ID", help=f"only {what} older than this id (the next page)")
    parser.add_argument("--limit", type=int, default=LISTING_ROWS,
                        help=f"at most this many rows (default {LISTING_ROWS}; 0 lists all)")


def _date(text: str) -> float:
    """A day (YYYY-MM-DD) as the epoch of its local midnight."""
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%d"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day as YYYY-MM-DD") from None


def _listing(args: argparse.Namespace) -> Listing:
    return Listing(state=args.state, pipeline=getattr(args, "pipeline", None), since=args.since,
                   before_id=args.before, limit=max(args.limit, 0))


def _more(command: str, args: argparse.Namespace, shown: Sequence[Job | Delivery], total: int) -> None:
    """The line under a listing cut to its limit: how many there are and the next page's command."""
    if not shown or len(shown) >= total or (args.limit and len(shown) < args.limit):
        return
    filters = "".join(f" --{name} {value}" for name, value in (("state", args.state), ("pipeline",
                      getattr(args, "pipeline", None))) if value)
    since = f" --since {time.strftime('%Y-%m-%d', time.localtime(args.since))}" if args.since else ""
    print(f"\n{len(shown)} of {total} shown, newest first; older: radnode {command}{filters}{since} "
          f"--before {shown[-1].id}")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _index(config: Config) -> Index:
    from node.index.store import Index

    return Index(config.node.index_path)


def _jobs(config: Config, args: argparse.Namespace) -> int:
    if args.id is not None:
        return _job_detail(config, args.id)
    index = _index(config)
    listing = _listing(args)
    jobs = index.jobs_page(listing)
    replaces, replaced_by = supersessions(index)
    _table(
        ["ID", "STATE", "ROUTE", "PIPELINE", "ATTEMPTS", "CREATED", "FINISHED", "REPLACES", "REPLACED BY",
         "OUTCOME"],
        [[j.id, j.state, j.route, j.pipeline, j.attempts, _when(j.created_at), _when(j.finished_at),
          replaces.get(j.id, "-"), replaced_by.get(j.id, "-"), j.outcome] for j in jobs],
    )
    _more("jobs", args, jobs, index.count_jobs(listing))
    _print_notes(index)
    return 0


def _print_notes(index: Index) -> None:
    """Routes that did not run on purpose (late instances ignored): the reason is on record."""
    notes = index.notes()
    if notes:
        print("\nNot run:")
        _table(["WHEN", "ROUTE", "SUBJECT", "GENERATION", "WHY"],
               [[_when(n.created_at), n.route, n.subject, n.generation, n.note] for n in notes])


# ---- studies and forced completion ---------------------------------------------------------


def _studies(config: Config, args: argparse.Namespace) -> int:
    from node.complete.studies import StudyState, StudyWatch

    # settled studies (quiet, nothing receiving) are routed: read only with --all
    views = StudyWatch(config, _index(config)).studies(time.time(), settled_limit=None if args.all else 0)
    shown = [v for v in views if args.all or v.state != StudyState.ROUTED]
    if not shown:
        print("no study is receiving or waiting" + ("" if args.all else " (--all lists routed studies too)"))
    for view in shown:
        print(f"study {view.study_uid}: {view.state}, last instance {_when(view.last_received)}, "
              f"{len(view.series)} series")
        if view.problem:
            print(f"  its files could not be read ({view.problem}): shown from the index alone")
        for series in view.series:
            wait = f", waits for {series.waits_for} until {_when(series.until)}" if series.waits_for else ""
            print(f"  series {series.series_uid} {series.modality} {series.description!r}: "
                  f"{series.instances} instances, {series.state}{wait}")
        for route in view.routes:
            filled = ", ".join(f"{role}" for role in route.filled) or "none"
            line = f"  route {route.route}: {route.state}; roles filled: {filled}"
            if route.waits_for:
                line += f"; waits for {', '.join(route.waits_for)} until {_when(route.until)}"
            print(line)
        if view.state != StudyState.ROUTED:
            print(f"  (radnode complete --study {view.study_uid} ends the wait now)")
    return 0


def _complete(config: Config, args: argparse.Namespace) -> int:
    index = _index(config)
    outcome = complete_series(index, args.series) if args.series else complete_study(index, args.study)
    return _report(outcome)


def _report(outcome: Outcome) -> int:
    """An action's sentence: on stdout when it did something, else on stderr with status 1."""
    if outcome.ok:
        print(outcome.message)
        return 0
    print(f"radnode: {outcome.message}", file=sys.stderr)
    return 1


def _job_detail(config: Config, job_id: int) -> int:
    """One job in full: what a developer needs to reproduce a failure or check a result."""
    import json

    index = _index(config)
    job = index.job(job_id)
    if job is None:
        print(f"radnode: no job {job_id} (radnode jobs lists them)", file=sys.stderr)
        return 1
    print(f"job {job.id}: {job.state}, route {job.route}, pipeline {job.pipeline}, attempts {job.attempts}")
    print(f"  created {_when(job.created_at)}, started {_when(job.started_at)}, "
          f"finished {_when(job.finished_at)}")
    print(f"  study {job.study_uid}")
    for role, series_uid in job.inputs.items():
        print(f"  input {role}: series {series_uid}")
    stages = "; ".join(f"{stage} {seconds} s" for stage, seconds in stage_seconds(job, index.requeued_at()).items())
    print(f"  model: {model_identity(job)}")
    print(f"  seconds by stage: {stages or '-'}")
    replaces, replaced_by = supersessions(index)
    if job.id in replaces or job.id in replaced_by:
        print(f"  replaces: {replaces.get(job.id, '-')}; replaced by: {replaced_by.get(job.id, '-')}")
    print(f"  outcome: {job.outcome or '-'}")
    summary = job.summary.to_stored()
    if summary:
        print("  summary:")
        print("\n".join("    " + line for line in json.dumps(summary, indent=2, default=str).splitlines()))
    for group in result_groups(index.results(job.id)):
        print(f"  results: {group.count} {group.kind} in {group.folder}")
    for delivery in index.deliveries_of(job.id):
        print(f"  delivery {delivery.id} to {delivery.destination}: {delivery.state}, "
              f"{delivery.attempts} attempts{', ' + delivery.last_error if delivery.last_error else ''}")
    if job.traceback:
        print("  traceback:")
        print("\n".join("    " + line for line in job.traceback.rstrip().splitlines()))
    return 0


def _deliveries(config: Config, args: argparse.Namespace) -> int:
    index, listing = _index(config), _listing(args)
    deliveries = index.deliveries_page(listing)
    _table(
        ["ID", "JOB", "DESTINATION", "STATE", "ATTEMPTS", "NEXT/SENT", "LAST ERROR"],
        [[d.id, d.job_id, d.destination, d.state, d.attempts,
          _when(d.sent_at if d.state == DeliveryState.SENT else d.next_attempt_at), d.last_error]
         for d in deliveries],
    )
    _more("deliveries", args, deliveries, index.count_deliveries(listing))
    return 0


def _notify(config: Config, args: argparse.Namespace) -> int:
    rows = notify_rows(config, _index(config))
    if not rows:
        print("no [[notify]] targets configured")
    _table(["TARGET", "KIND", "WHERE", "EVENTS", "LAST SENT", "PENDING", "DEAD", "LAST ERROR"],
           [[r.name, r.kind, r.where, ",".join(r.events), _when(r.state.last_sent), r.state.pending,
             r.state.dead, r.state.last_error or "-"] for r in rows])
    return 0


def _problems(config: Config, args: argparse.Namespace) -> int:
    _table(["KIND", "SUBJECT", "GENERATION", "AT", "REASON"],
           [[p.kind, p.subject, p.generation, _when(p.at), p.reason] for p in _index(config).problems()])
    return 0


def _retry(config: Config, args: argparse.Namespace) -> int:
    index = _index(config)
    if args.job is not None:
        return _report(retry_job(index, args.job))
    return _report(retry_deliveries(index, args.delivery))


def _cancel(config: Config, args: argparse.Namespace) -> int:
    return _report(cancel_job(_index(config), args.job))


def _hash_password() -> int:
    """Reads the password without echo (or from stdin when piped) and prints the [web] line."""
    import getpass

    from node.passwords import hash_password

    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("radnode: the password needs at least 8 characters", file=sys.stderr)
        return 2
    print(f'password_hash = "{hash_password(password)}"')
    return 0


def _echo(config: Config, args: argparse.Namespace) -> int:
    from node.deliver.dispatcher import sender

    names = [d.name for d in config.destinations]
    if args.destination not in names:
        print(f"radnode: no destination {args.destination!r}; configured: {', '.join(names) or 'none'}",
              file=sys.stderr)
        return 2
    destination = config.destination(args.destination)
    ok, detail = sender(config, destination).probe()
    line = f"{destination.name} ({destination.where}): {detail}"
    print(line if ok else f"radnode: {line}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _destinations(config: Config, args: argparse.Namespace) -> int:
    """What /health and the overview say of each destination, from the index (nothing is tried)."""
    from node.operate.monitoring import destination_seen

    rows = []
    for destination, check in destination_seen(config, _index(config)):
        detail = check.detail.removeprefix(f"{destination.where}: ")
        state = "not tried yet" if detail == "not tried yet" else "reachable" if check.ok else "unreachable"
        rows.append([destination.name, destination.protocol, destination.where, state,
                     "" if state == "not tried yet" else detail])
    _table(["NAME", "PROTOCOL", "WHERE", "STATE", "LAST CHECK OR DELIVERY"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
