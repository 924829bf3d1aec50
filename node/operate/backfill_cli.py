"""``radnode backfill``: create a backfill (by a list or a query), follow it, cancel it, export it.

The command only writes and reads the index; the running node's backfill loop
(``node.retrieve.backfill``) does the querying and retrieving, so a backfill survives the
command's terminal and the node's restarts. Nothing here prints an accession number or a
patient's name: only the CSV export holds them (the accession always, the name when asked).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from node.config import Config, ConfigError
from node.index.backfills import Backfill, Progress
from node.index.states import BackfillState
from node.index.store import Index
from node.operate import validation_export
from node.operate.admin import cancel_backfill
from node.retrieve.query import StudyQuery

#: the width of the progress bar, in characters
_BAR = 30
_FOLLOW_SECONDS = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="[[sources]] name (default: the only one)")
    listed = parser.add_mutually_exclusive_group()
    listed.add_argument("--accessions", type=Path, metavar="FILE", help="a file of accession numbers, one a line")
    listed.add_argument("--study-uids", type=Path, metavar="FILE", help="a file of Study Instance UIDs, one a line")
    parser.add_argument("--modality", default="", help="query: a modality of the study (CT, MR...)")
    parser.add_argument("--from", dest="date_from", type=_day, metavar="YYYY-MM-DD",
                        help="query: studies on or after this day")
    parser.add_argument("--to", dest="date_to", type=_day, metavar="YYYY-MM-DD",
                        help="query: studies on or before this day")
    parser.add_argument("--description", default="", help="query: StudyDescription (* and ? are wildcards)")
    parser.add_argument("--body-part", default="", help="query: BodyPartExamined of one of its series")
    act = parser.add_mutually_exclusive_group()
    act.add_argument("--status", nargs="?", type=int, const=0, metavar="ID",
                     help="progress of every backfill (or one): studies queried, retrieved, run, delivered")
    act.add_argument("--cancel", type=int, metavar="ID", help="cancel a backfill and its queued jobs")
    act.add_argument("--report", type=Path, metavar="OUT.CSV",
                     help="the validation export of a backfill (--id, default the newest)")
    parser.add_argument("--id", type=int, help="the backfill --report exports")
    parser.add_argument("--follow", action="store_true", help="with --status: redraw until the backfills end")
    parser.add_argument("--patient-data", action="store_true",
                        help="with --report: add patient name and ID (the accession number is always in it)")


def run(config: Config, args: argparse.Namespace) -> int:
    index = Index(config.node.index_path)
    if args.cancel is not None:
        return _cancel(index, args.cancel)
    if args.report is not None:
        return _report(index, args.id, args.report, args.patient_data)
    if args.status is not None or not _asked(args):
        return _status(index, args.status or None, args.follow)
    return _create(config, index, args)


def _asked(args: argparse.Namespace) -> bool:
    return any([args.accessions, args.study_uids, args.modality, args.date_from, args.date_to,
                args.description, args.body_part])


def _create(config: Config, index: Index, args: argparse.Namespace) -> int:
    try:
        source = config.source(args.source)
        query = StudyQuery(accessions=_lines(args.accessions), study_uids=_lines(args.study_uids),
                           modality=args.modality, date_from=args.date_from or "", date_to=args.date_to or "",
                           description=args.description, body_part=args.body_part)
    except (ConfigError, OSError) as error:
        print(f"radnode: {error}", file=sys.stderr)
        return 2
    if (args.accessions or args.study_uids) and not query.is_list():
        print("radnode: the file lists no studies (one accession number or UID a line)", file=sys.stderr)
        return 2
    backfill_id = index.create_backfill(source.name, query.to_stored())
    asked = f"{len(query.accessions) + len(query.study_uids)} listed studies" if query.is_list() else "a query"
    print(f"backfill {backfill_id} created: {asked} from {source.name}. The running node queries and retrieves "
          f"it{_hours(config)}; follow it with: radnode backfill --status {backfill_id} --follow")
    return 0


def _lines(path: Path | None) -> tuple[str, ...]:
    if path is None:
        return ()
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))


def _hours(config: Config) -> str:
    return f" within [backfill] hours = \"{config.backfill.hours}\"" if config.backfill.hours else ""


def _day(text: str) -> str:
    try:
        return time.strftime("%Y%m%d", time.strptime(text, "%Y-%m-%d"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day as YYYY-MM-DD") from None


def _cancel(index: Index, backfill_id: int) -> int:
    outcome = cancel_backfill(index, backfill_id)
    print(outcome.message if outcome.ok else f"radnode: {outcome.message}", file=sys.stdout if outcome.ok else sys.stderr)
    return 0 if outcome.ok else 1


def _report(index: Index, backfill_id: int | None, out: Path, with_patient_data: bool) -> int:
    backfills = index.backfills()
    if backfill_id is None and backfills:
        backfill_id = backfills[-1].id
    if backfill_id is None or index.backfill(backfill_id) is None:
        which = "no backfill" if backfill_id is None else f"no backfill {backfill_id}"
        print(f"radnode: {which} to export; radnode backfill --status lists them", file=sys.stderr)
        return 1
    out.write_text(validation_export.write_csv(index, backfill_id, with_patient_data))
    out.chmod(0o600)  # accession numbers identify patients
    print(f"backfill {backfill_id}: {sum(1 for _ in out.open()) - 1} rows written to {out}")
    return 0


def _status(index: Index, backfill_id: int | None, follow: bool) -> int:
    while True:
        backfills = [b for b in index.backfills() if backfill_id is None or b.id == backfill_id]
        if not backfills:
            print("no backfills" if backfill_id is None else f"radnode: no backfill {backfill_id}")
            return 0 if backfill_id is None else 1
        lines = [status_line(b, index.progress(b.id), time.time()) for b in backfills]
        if follow and sys.stdout.isatty():
            print("\x1b[2J\x1b[H", end="")
        print("\n".join(lines), flush=True)
        if not follow or all(b.state not in (BackfillState.QUERYING, BackfillState.RETRIEVING) for b in backfills):
            return 0
        time.sleep(_FOLLOW_SECONDS)


def status_line(backfill: Backfill, progress: Progress, now: float) -> str:
    """``backfill 3 retrieving [#########.....]  9/20 run  12 retrieved  8 delivered  0 failed
    20 queried  41 studies/h  ETA 16 min`` (the bar counts studies run)."""
    total = max(progress.queried, 1)
    filled = round(_BAR * (progress.run + progress.failed) / total)
    rate = progress.rate_per_hour(now)
    eta = progress.eta_seconds(now)
    parts = [f"backfill {backfill.id} {backfill.state.value:<10} [{'#' * filled}{'.' * (_BAR - filled)}]",
             f"{progress.run}/{progress.queried} run", f"{progress.retrieved} retrieved",
             f"{progress.delivered} delivered", f"{progress.failed} failed", f"{progress.queried} queried",
             f"{rate:.0f} studies/h" if rate is not None else "rate -",
             f"ETA {duration(eta)}" if eta is not None and backfill.state == BackfillState.RETRIEVING else ""]
    if backfill.reason:
        parts.append(f"({backfill.reason})")
    return "  ".join(p for p in parts if p)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
