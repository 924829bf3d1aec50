"""The PACS administrator's web page: what arrived, what waits, what ran, what was sent, and buttons.

Server-rendered (Jinja2 templates in node/operate/templates, no JavaScript) on its own port, bound to
127.0.0.1 unless the site says otherwise, and off by default. Every page and action needs a login:
HTTP basic auth against the scrypt hash in ``[web] password_hash``, or a TLS client certificate
signed by ``[web.tls] ca_file`` (both when both are configured). Every action is a POST that
carries the page's CSRF token, and is logged. The data comes from the index through node.operate.admin
and node.complete.studies, the same functions ``radnode jobs``, ``studies``, ``retry``... print.

Patient name, ID and birth date appear only with ``[web] show_patient_data = true``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import secrets
import shutil
import ssl
import sys
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
from jinja2 import Environment, PackageLoader, select_autoescape
from pydicom.errors import InvalidDicomError

from node import logs
from node.complete.studies import StudyState, StudyWatch, wait_counts
from node.config import Config
from node.index.db import Listing
from node.index.states import MACHINES, BackfillState, DeliveryState, JobState, SeriesState, named
from node.index.store import Delivery, Index, Job, ResultFile
from node.operate import admin, backfill_cli, validation_export
from node.operate.monitoring import DESTINATION_CHECK, ChildCounts, destination_checks, stow_check
from node.operate.patient import patient_of
from node.passwords import verify_password
from node.result_formats import format_of
from node.route.study import STUDY_LOOKBACK_SECONDS
from node.tls import certificate_name, server_context

#: Throughput chart: the last hour in 5-minute bars; the job-time chart: the latest jobs of that hour.
_HOUR, _BIN, _CHART_JOBS = 3600.0, 300.0, 30
#: The jobs and deliveries pages show this many rows a page, newest first, with a link to older ones.
_PAGE_ROWS = 100
#: The studies page shows every study still receiving or waiting and the newest this many settled ones.
_SETTLED_STUDIES = 50
#: A job's key image as a thumbnail on its page (``/jobs/7/key-images/0.png``), at most this wide or high.
_KEY_IMAGE_PATH = re.compile(r"/jobs/(?P<job>\d+)/key-images/(?P<number>\d+)\.png")
_THUMBNAIL_PX = 320
#: A backfill's validation export (``/backfills/3/report.csv``).
_BACKFILL_REPORT_PATH = re.compile(r"/backfills/(?P<backfill>\d+)/report\.csv")
#: What the studies page may show of the patient when the site turns it on.
_PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate")
#: An action's form is small; the route tester's upload holds a few DICOM files read in memory.
_FORM_LIMIT, _UPLOAD_LIMIT = 64 * 1024, 64 * 2**20
#: Action results kept for the page the browser is sent back to (the newest ones).
_NOTICES = 200
#: A client that stalls (or never finishes a TLS handshake) frees its server thread after this.
_CLIENT_TIMEOUT_SECONDS = 30.0
_HEADERS = {
    # No scripts at all, no framing, forms post only here: the page's whole attack surface.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    label: str  # the tooltip
    tick: str = ""  # the text under the bar


def bars(values: list[float], labels: list[str], ticks: list[str] | None = None, height: float = 60.0,
         width: float = 20.0) -> list[Bar]:
    """Bar geometry for an inline SVG chart, scaled to the largest value."""
    top = max(values, default=0.0) or 1.0
    ticks = ticks or [""] * len(values)
    return [Bar(i * (width + 4), height - height * value / top, height * value / top, label, tick)
            for i, (value, label, tick) in enumerate(zip(values, labels, ticks))]


class WebApp:
    """Page and action handlers over one index connection (guarded by a lock: server threads)."""

    def __init__(self, config: Config, children: ChildCounts) -> None:
        self.config = config
        self.children = children
        self.index = Index(config.node.index_path)
        self.watch = StudyWatch(config, self.index)
        self.lock = threading.Lock()
        self.csrf_secret = secrets.token_bytes(32)
        self._accepted: set[bytes] = set()  # digests of Authorization headers that passed scrypt
        self._notices: OrderedDict[str, str] = OrderedDict()
        self.templates = Environment(loader=PackageLoader("node.operate", "templates"),
                                     autoescape=select_autoescape(["html"]))
        self.templates.globals.update(when=admin.when, destination_prefix=DESTINATION_CHECK, json=json,
                                      machines=MACHINES, JobState=JobState,
                                      DeliveryState=DeliveryState, SeriesState=SeriesState, StudyState=StudyState)

    # ---- access ------------------------------------------------------------------------------

    def login(self, header: str | None, certificate: dict[str, Any] | None) -> str | None:
        """Who is asking, when every configured door let them through: the client certificate
        (the TLS handshake already checked it against ``[web.tls] ca_file``) and the password."""
        settings = self.config.web
        names = []
        if settings.client_certificates:
            name = certificate_name(certificate)
            if name is None:
                return None
            names.append(name)
        if settings.password_hash:
            user = self.authorized(header)
            if user is None:
                return None
            names.insert(0, user)
        return " / ".join(names) or None

    def authorized(self, header: str | None) -> str | None:
        """The user name when the Authorization header carries the configured user and password."""
        settings = self.config.web
        if not header or not header.startswith("Basic "):
            return None
        digest = hashlib.sha256(header.encode()).digest()
        if digest in self._accepted:
            return settings.user
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(user.encode(), settings.user.encode()):
            return None
        if not verify_password(password, settings.password_hash):
            return None
        self._accepted.add(digest)
        return user

    def csrf_token(self, user: str) -> str:
        """One token per user and server start: a page from this server is needed to act."""
        return hmac.new(self.csrf_secret, user.encode(), hashlib.sha256).hexdigest()

    def remember(self, outcome: admin.Outcome) -> str:
        """The key under which an action's sentence waits for the page the browser is sent back
        to: the URL carries this key, never the text, so a link cannot make the page say anything
        the node did not say."""
        key = secrets.token_urlsafe(12)
        with self.lock:
            self._notices[key] = ("" if outcome.ok else "refused: ") + outcome.message
            while len(self._notices) > _NOTICES:
                self._notices.popitem(last=False)
        return key

    def notice(self, query: dict[str, str]) -> str:
        """The sentence of the action the page's ``?notice=`` key names ("" for any other text)."""
        return self._notices.get(query.get("notice", ""), "")

    # ---- pages -------------------------------------------------------------------------------

    def render(self, name: str, user: str, **context: Any) -> bytes:
        return self.templates.get_template(name).render(
            csrf=self.csrf_token(user), node=self.config.node.ae_title, user=user, **context).encode()

    def overview(self, user: str, query: dict[str, str]) -> bytes:
        now = time.time()
        with self.lock:
            counts = self.index.state_counts()
            waits = wait_counts(self.watch.studies(now, detail=False))
            arrivals = self.index.arrivals_since(now - _HOUR)
            finished = self.index.jobs_finished_since(now - _HOUR)
            requeued_at = self.index.requeued_at()
            destinations = destination_checks(self.config, self.index)
            notify = admin.notify_rows(self.config, self.index)
            stow = stow_check(self.config, self.index, self.children)
        spool = self.config.node.spool
        free_mb = shutil.disk_usage(spool).free // 2**20
        bins = [0.0] * int(_HOUR / _BIN)
        for t in arrivals:
            bins[min(int((t - (now - _HOUR)) // _BIN), len(bins) - 1)] += 1
        bin_labels = [f"{time.strftime('%H:%M', time.localtime(now - _HOUR + i * _BIN))}: {int(v)} instances"
                      for i, v in enumerate(bins)]
        recent = finished[-_CHART_JOBS:]
        job_times = [round(max(0.0, (j.finished_at or now) - admin.queued_since(j, requeued_at)), 1) for j in recent]
        job_labels = [f"job {j.id} {j.pipeline}: {seconds} s" for j, seconds in zip(recent, job_times)]
        return self.render(
            "overview.html", user, page="overview", notice=self.notice(query),
            children=self.children(), stow=stow, destinations=destinations, notify=notify, counts=counts,
            studies=waits.studies, free_mb=free_mb,
            watermark_mb=self.config.node.min_free_disk_mb, received=len(arrivals),
            arrival_bars=bars(bins, bin_labels), job_bars=bars(job_times, job_labels, [str(j.id) for j in recent]),
            job_count=len(finished), job_max=max(job_times, default=0.0))

    def studies(self, user: str, query: dict[str, str]) -> bytes:
        now = time.time()
        with self.lock:
            views = self.watch.studies(now, settled_limit=_SETTLED_STUDIES)
            week = len(self.index.studies(since=now - STUDY_LOOKBACK_SECONDS))
            patients = ({v.study_uid: self._patient(v.study_uid) for v in views}
                        if self.config.web.show_patient_data else {})
        return self.render("studies.html", user, page="studies", notice=self.notice(query),
                           studies=views, patients=patients, week=week)

    def _patient(self, study_uid: str) -> dict[str, str]:
        return patient_of(self.index, study_uid, _PATIENT_KEYWORDS)

    def jobs(self, user: str, query: dict[str, str]) -> bytes:
        listing = _listing(query, named(JobState, query.get("state", "")))
        with self.lock:
            jobs = self.index.jobs_page(listing) if listing else []
            total = self.index.count_jobs(listing) if listing else 0
            replaces, replaced_by = admin.supersessions(self.index)
            notes, problems = self.index.notes(), self.index.problems()
            requeued_at = self.index.requeued_at()
        return self.render("jobs.html", user, page="jobs", notice=self.notice(query), jobs=jobs, total=total,
                           state=query.get("state", ""), pipeline=query.get("pipeline", ""),
                           pipelines=sorted(self.config.pipelines), older=_older(query, jobs, listing),
                           replaces=replaces, replaced_by=replaced_by,
                           stages=lambda job: admin.stage_seconds(job, requeued_at),
                           model=admin.model_identity, notes=notes, problems=problems)

    def job(self, user: str, job_id: int, query: dict[str, str]) -> bytes | None:
        with self.lock:
            job = self.index.job(job_id)
            if job is None:
                return None
            files = self.index.results(job_id)
            results = admin.result_groups(files)
            deliveries = [(d, self.index.delivery_attempts(d.id)) for d in self.index.deliveries_of(job_id)]
            replaces, replaced_by = admin.supersessions(self.index)
            stages = admin.stage_seconds(job, self.index.requeued_at())
        return self.render("job.html", user, page="jobs", notice=self.notice(query), job=job,
                           summary=admin.summary_rows(job.summary), findings=admin.finding_tables(job.summary),
                           key_images=len(_key_images(files)), results=results, deliveries=deliveries,
                           stages=stages,
                           model=admin.model_identity(job), replaces=replaces.get(job_id, ""),
                           replaced_by=replaced_by.get(job_id, ""))

    def key_image(self, job_id: int, number: int) -> bytes | None:
        """A job's ``number``-th key image (0 first: the summary) as a PNG thumbnail, or None.
        The key images carry no patient data in their pixels (``writers.key_images``)."""
        with self.lock:
            images = _key_images(self.index.results(job_id))
        if not 0 <= number < len(images):
            return None
        return _thumbnail(images[number].path)

    def deliveries(self, user: str, query: dict[str, str]) -> bytes:
        plain = {k: v for k, v in query.items() if k != "pipeline"}  # deliveries have no pipeline
        listing = _listing(plain, named(DeliveryState, query.get("state", "")))
        with self.lock:
            deliveries = self.index.deliveries_page(listing) if listing else []
            total = self.index.count_deliveries(listing) if listing else 0
            dead = self.index.count_deliveries(Listing(state=DeliveryState.DEAD))
        return self.render("deliveries.html", user, page="deliveries", notice=self.notice(query),
                           deliveries=deliveries, total=total, dead=dead, state=query.get("state", ""),
                           older=_older(query, deliveries, listing))

    def backfills(self, user: str, query: dict[str, str]) -> bytes:
        """Each backfill's figures (``radnode backfill --status``), its cancel button and export."""
        now = time.time()
        with self.lock:
            shown = [(b, self.index.progress(b.id)) for b in reversed(self.index.backfills())]
        return self.render("backfills.html", user, page="backfills", notice=self.notice(query), now=now,
                           backfills=shown, hours=self.config.backfill.hours, BackfillState=BackfillState,
                           duration=backfill_cli.duration)

    def backfill_report(self, user: str, backfill_id: int) -> bytes | None:
        """The validation export (CSV) of a backfill: accession numbers included, as the site
        asked for them; patient names only with ``[web] show_patient_data``."""
        with self.lock:
            if self.index.backfill(backfill_id) is None:
                return None
            text = validation_export.write_csv(self.index, backfill_id, self.config.web.show_patient_data)
        logs.info("web.backfill_report", user=user, backfill=backfill_id)
        return text.encode()

    def routes(self, user: str, query: dict[str, str]) -> bytes:
        folder = query.get("path", "").strip()
        found: list[admin.FileRoutes] = []
        error = ""
        roots = self.config.web.route_test_roots
        if folder:
            path = Path(folder)
            if not path.is_absolute():
                error = f"{folder} is not an absolute path on the node's machine"
            elif not admin.under_roots(path, roots):
                error = (f"{folder} is not under a folder the route tester may read ([web] route_test_roots: "
                         f"{', '.join(map(str, roots)) or 'none, upload the files instead'})")
            elif not path.exists():
                error = f"{folder} does not exist on the node's machine (or the node may not read it)"
            else:
                found = admin.route_test(self.config, path, roots)
                # the folder's name is not logged: sites name folders after patients
                logs.info("web.route_test", user=user, source="folder", series=len(found))
        return self.render("routes.html", user, page="routes", path=folder, found=found, error=error,
                           uploaded=0, routes=self.config.routes, roots=roots)

    def routes_uploaded(self, user: str, uploads: list[tuple[str, bytes]]) -> bytes:
        """The route tester on files the browser sent (the administrator's own copy of a series)."""
        error = "" if uploads else "choose one or more DICOM files to upload"
        found = admin.route_test_uploads(self.config, uploads)
        return self.render("routes.html", user, page="routes", path="", found=found, error=error,
                           uploaded=len(uploads), routes=self.config.routes, roots=self.config.web.route_test_roots)

    # ---- actions -----------------------------------------------------------------------------

    def act(self, action: str, form: dict[str, str]) -> admin.Outcome:
        """Run one button's action; a missing or malformed target is an answer, not a crash."""
        target = form.get("target", "").strip()
        handlers: dict[str, Callable[[Index, str], admin.Outcome]] = {
            "complete-series": admin.complete_series,
            "complete-study": admin.complete_study,
            "retry-delivery": lambda index, t: admin.retry_deliveries(index, int(t)),
            "retry-dead": lambda index, t: admin.retry_deliveries(index, None),
            "retry-job": lambda index, t: admin.retry_job(index, int(t)),
            "cancel-job": lambda index, t: admin.cancel_job(index, int(t)),
            "cancel-backfill": lambda index, t: admin.cancel_backfill(index, int(t)),
        }
        handler = handlers.get(action)
        if handler is None:
            return admin.Outcome(False, f"no action {action!r}")
        if not target and action != "retry-dead":
            return admin.Outcome(False, f"{action}: no target given")
        try:
            with self.lock:
                return handler(self.index, target)
        except ValueError:
            return admin.Outcome(False, f"{action}: target {target!r} is not a number")


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer, over TLS when configured: the handshake runs in the connection's own
    thread (``Handler.setup``), so one slow or refused client never holds up the others."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 context: ssl.SSLContext | None) -> None:
        super().__init__(address, handler)
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A refused TLS handshake (no or a wrong client certificate) or a dropped connection: one
        log line, not a traceback on stderr."""
        error = sys.exc_info()[1]
        event = "web.tls_refused" if isinstance(error, ssl.SSLError) else "web.request_failed"
        logs.warning(event, address=client_address[0], error=f"{type(error).__name__}: {error}")


class WebServer:
    def __init__(self, config: Config, children: ChildCounts) -> None:
        self.config = config
        self.app = WebApp(config, children)
        self._server: _Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        settings = self.config.web
        context = server_context(settings.tls) if settings.tls is not None else None
        self._server = _Server((settings.host, settings.port), _handler(self.app), context)
        threading.Thread(target=self._server.serve_forever, name="web", daemon=True).start()
        login = " and ".join(([] if not settings.password_hash else ["password"])
                             + (["client certificate"] if settings.client_certificates else []))
        logs.info("web.listening", host=settings.host, port=self.port, https=context is not None, login=login)
        if context is None and settings.host not in ("127.0.0.1", "::1", "localhost"):
            logs.warning("web.plain_http", host=settings.host,
                         advice="the password crosses the network readable: set [web.tls], or keep "
                                "host = 127.0.0.1 behind an SSH tunnel or a TLS reverse proxy")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """A multipart/form-data body as (fields, files), with the standard library's MIME parser."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    fields: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []
    if not message.is_multipart():
        return fields, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            if filename or data:
                files.append((Path(filename).name or "upload", data))
        elif isinstance(name, str):
            fields[name] = data.decode(errors="replace")
    return fields, files


_HTML = "text/html; charset=utf-8"


def _handler(app: WebApp) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_Handler,), {"app": app})


class _Handler(BaseHTTPRequestHandler):
    """The page's HTTP side: login, the routes table of GET pages, and POSTed actions."""

    app: WebApp
    server_version = "radnode"
    sys_version = ""
    timeout = _CLIENT_TIMEOUT_SECONDS

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def do_GET(self) -> None:
        user = self._user()
        if user is None:
            return
        url = urllib.parse.urlsplit(self.path)
        try:
            page = self._page(user, url.path, dict(urllib.parse.parse_qsl(url.query)))
        except Exception:  # noqa: BLE001 (a page that cannot be built says so; the log says why)
            logs.error("web.page_failed", page=url.path, exc_info=True)
            self._reply(500, b"this page failed: the node's log has the error (web.page_failed)\n",
                        "text/plain")
            return
        if page is None:
            self._reply(404, b"not found: the pages are /, /studies, /jobs, /deliveries, /routes, /backfills\n",
                        "text/plain")
        else:
            self._reply(200, *page)

    def _page(self, user: str, path: str, query: dict[str, str]) -> tuple[bytes, str] | None:
        """(body, content type) of the page at ``path``; None: there is none."""
        app = self.app
        pages: dict[str, Callable[[str, dict[str, str]], bytes]] = {
            "/": app.overview, "/studies": app.studies, "/jobs": app.jobs,
            "/deliveries": app.deliveries, "/routes": app.routes, "/backfills": app.backfills,
        }
        if path in pages:
            return pages[path](user, query), _HTML
        if path.startswith("/jobs/") and path[6:].isdigit():
            body = app.job(user, int(path[6:]), query)
            return None if body is None else (body, _HTML)
        if report := _BACKFILL_REPORT_PATH.fullmatch(path):
            body = app.backfill_report(user, int(report["backfill"]))
            return None if body is None else (body, "text/csv; charset=utf-8")
        if image := _KEY_IMAGE_PATH.fullmatch(path):
            body = app.key_image(int(image["job"]), int(image["number"]))
            return None if body is None else (body, "image/png")
        return None

    def do_POST(self) -> None:
        user = self._user()
        if user is None:
            return
        path = urllib.parse.urlsplit(self.path).path
        upload = path == "/routes"
        if not upload and not path.startswith("/actions/"):
            self._reply(404, b"actions are POSTed to /actions/<name>, route tests to /routes\n", "text/plain")
            return
        received = self._form(upload)
        if received is None:
            return
        form, files = received
        action = "route-test" if upload else path.removeprefix("/actions/")
        if not self._csrf_ok(user, action, form):
            return
        if upload:
            logs.info("web.route_test", user=user, address=self.client_address[0], source="upload",
                      files=len(files), bytes=sum(len(data) for _, data in files))
            self._reply(200, self.app.routes_uploaded(user, files))
            return
        outcome = self.app.act(action, form)
        logs.info("web.action", action=action, target=form.get("target", ""), user=user,
                  address=self.client_address[0], ok=outcome.ok, result=outcome.message)
        self._see_other(form.get("back", "/"), outcome)

    def _form(self, upload: bool) -> tuple[dict[str, str], list[tuple[str, bytes]]] | None:
        """The POSTed form and uploaded files; None when refused as too large (answered)."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > (_UPLOAD_LIMIT if upload else _FORM_LIMIT):
            self.close_connection = True
            self._reply(413, b"too large: upload at most 64 MB to the route tester; for a bigger series "
                             b"give it the series' folder on the node's machine\n", "text/plain")
            return None
        body = self.rfile.read(length)
        if upload:
            return _multipart(self.headers.get("Content-Type", ""), body)
        return dict(urllib.parse.parse_qsl(body.decode(errors="replace"))), []

    def _csrf_ok(self, user: str, action: str, form: dict[str, str]) -> bool:
        if hmac.compare_digest(form.get("csrf", "").encode(), self.app.csrf_token(user).encode()):
            return True
        logs.warning("web.action_refused", action=action, user=user, address=self.client_address[0],
                     reason="CSRF token missing or wrong")
        self._reply(403, b"refused: the form's CSRF token is missing or out of date; reload the page "
                         b"and press the button again\n", "text/plain")
        return False

    def _see_other(self, back: str, outcome: admin.Outcome) -> None:
        """Back to the page the action came from, with its notice."""
        if not back.startswith("/") or back[1:2] in ("/", "\\"):  # "//host" or "/\\host" would leave the node
            back = "/"
        separator = "&" if "?" in back else "?"
        self.send_response(303)
        self.send_header("Location", back + separator + urllib.parse.urlencode({"notice": self.app.remember(outcome)}))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _user(self) -> str | None:
        header = self.headers.get("Authorization")
        certificate = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        user = self.app.login(header, certificate)
        if user is None:
            if header:  # a browser's first request carries none: only a wrong login is news
                logs.warning("web.login_refused", address=self.client_address[0])
            body = b"radnode: log in with the [web] user and its password\n"
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="radnode", charset="UTF-8"')
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        return user

    def _reply(self, status: int, body: bytes, content_type: str = _HTML) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in _HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:  # page views are not worth a log line; actions are
        pass


def _listing(query: dict[str, str], state: JobState | DeliveryState | None) -> Listing | None:
    """The page a listing's query asks for (``state`` as the page's machine read it, ``pipeline``,
    ``before``); None when the query names a state the machine does not have, or a ``before``
    that is not an id."""
    before = query.get("before", "")
    if (query.get("state") and state is None) or (before and not before.isdigit()):
        return None
    return Listing(state=state, pipeline=query.get("pipeline") or None,
                   before_id=int(before) if before else None, limit=_PAGE_ROWS)


def _older(query: dict[str, str], rows: Sequence[Job | Delivery], listing: Listing | None) -> str:
    """The link to the next page of older rows ("" on the last page)."""
    if listing is None or len(rows) < listing.limit:
        return ""
    kept = {k: v for k, v in query.items() if k in ("state", "pipeline") and v}
    return "?" + urllib.parse.urlencode({**kept, "before": rows[-1].id})


def _key_images(files: Sequence[ResultFile]) -> list[ResultFile]:
    """A job's key images (Secondary Capture results) by InstanceNumber: the summary first,
    then one a finding (the files are named by their UIDs, in no order people know)."""
    images = [f for f in files if format_of(f.sop_class) == "key-images"]
    return sorted(images, key=lambda f: _instance_number(f.path))


def _instance_number(path: Path) -> int:
    """A result file's InstanceNumber (0 when it has none or cannot be read: listed first)."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["InstanceNumber"])
        return int(header.get("InstanceNumber", 0) or 0)
    except (OSError, InvalidDicomError, ValueError):
        return 0


def _thumbnail(path: Path) -> bytes:
    """A key image, scaled to fit ``_THUMBNAIL_PX``, as PNG bytes."""
    from PIL import Image

    pixels = pydicom.dcmread(path).pixel_array
    if pixels.ndim == 2:  # a grey image: stretched to 8 bits
        low, high = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - low) * (255.0 / max(high - low, 1.0))).astype("uint8")
    picture = Image.fromarray(pixels.astype("uint8"))
    picture.thumbnail((_THUMBNAIL_PX, _THUMBNAIL_PX))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()
