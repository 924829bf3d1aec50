"""config.toml: one file that says who the node is, who may talk to it, where results go and
which series go to which pipeline.

The whole file is validated before anything listens on a port: a node that starts with a typo
in a route would silently send nothing to the AI, which is worse than not starting. Every error
names the key (``routes[1].destinations``) and what is wrong with it.
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import re
import ssl
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from node.http_auth import HttpAuth
from node.result_formats import FORMATS, ResultFormat, format_of
from node.route.matcher import Condition, parse_condition
from node.tls import ClientTls, ServerTls, client_context, server_context
from pipelines.validation import not_valid, problem_line

if TYPE_CHECKING:
    from pipelines.base import InputSpec, PipelineOptions


class ConfigError(Exception):
    """A config the node refuses to start with; the message is meant for the administrator."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]*[^ ]$")]
Port = Annotated[int, Field(ge=1, le=65535)]


class NodeSettings(_Strict):
    ae_title: AETitle = "RADNODE"
    host: str = "0.0.0.0"
    port: Port = 11112
    spool: Path = Path("spool")
    index: Path | None = Field(
        default=None, description="SQLite index; defaults to <spool>/index.sqlite"
    )
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 32
    #: associations one peer address may hold at once (node-wide)
    max_associations_per_peer: Annotated[int, Field(ge=1, le=1000)] = 8
    max_pdu: Annotated[int, Field(ge=0)] = 4 * 1024 * 1024
    min_free_disk_mb: Annotated[int, Field(ge=0)] = 1024
    accept_all_storage: bool = False
    receivers: Annotated[int, Field(ge=1, le=64)] = 2
    network_timeout_seconds: Annotated[float, Field(gt=0)] = 60.0
    #: an accepted association that has sent nothing since its A-ASSOCIATE-AC is aborted after this
    #: (or network_timeout_seconds, if shorter)
    idle_association_seconds: Annotated[float, Field(gt=0)] = 10.0
    uid_root: str = Field(default="1.2.826.0.1.3680043.8.498.", pattern=r"^[0-9.]+\.$")
    tls: ServerTls | None = None
    require_called_ae: bool = Field(
        default=True,
        description="refuse associations whose called AE title is not ae_title (A-ASSOCIATE-RJ)",
    )

    @property
    def index_path(self) -> Path:
        return self.index if self.index is not None else self.spool / "index.sqlite"


class CompletionSettings(_Strict):
    settle_seconds: Annotated[float, Field(ge=0)] = 2.0
    quiet_seconds: Annotated[float, Field(gt=0)] = 30.0
    study_timeout_seconds: Annotated[float, Field(gt=0)] = 600.0
    #: how long a series whose headers say instances are missing waits after its last one
    incomplete_timeout_seconds: Annotated[float, Field(gt=0)] = 300.0


class RaySettings(_Strict):
    """Where the Ray cluster is (``engine = "ray"``); see README "Running jobs on a Ray cluster"."""

    #: the Ray head's GCS address (``head:6379``), ``auto`` (the cluster this machine joined
    #: with ``ray start``), or a Ray Client address (``ray://head:10001``, needs ``radnode[ray-client]``).
    address: str = "auto"
    namespace: str = "radnode"
    #: attempts of a job lost with the machine that ran them before the job is failed.
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    #: Ray's token authentication (Ray >= 2.52): the token, read from this file (kept out of
    #: config.toml); every machine of the cluster runs with the same token.
    token_file: FilePath | None = None
    #: Ray's TLS between its processes: CA, this machine's certificate and key (all or none).
    tls_ca_cert: FilePath | None = None
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None

    @model_validator(mode="after")
    def _tls_complete(self) -> RaySettings:
        given = [self.tls_ca_cert, self.tls_cert, self.tls_key]
        if any(given) and not all(given):
            raise ValueError("tls_ca_cert, tls_cert and tls_key go together (Ray's RAY_TLS_CA_CERT, "
                             "RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY)")
        return self


class WorkerSettings(_Strict):
    #: ``local``: worker processes on this machine; ``ray``: actors on a Ray cluster.
    engine: Literal["local", "ray"] = "local"
    #: local: worker processes; ray: jobs in flight on the cluster at once.
    count: Annotated[int, Field(ge=1, le=64)] = 1
    job_timeout_seconds: Annotated[float, Field(gt=0)] = 1800.0
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 30.0
    ray: RaySettings = RaySettings()

    @model_validator(mode="after")
    def _ray_installed(self) -> WorkerSettings:
        """Said at start, not as jobs that never leave the queue."""
        if self.engine != "ray":
            return self
        if importlib.util.find_spec("ray") is None:
            raise ValueError("engine = \"ray\" needs Ray on this machine: pip install 'radnode[ray]'")
        if self.ray.address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
            raise ValueError(f"[workers.ray] address = \"{self.ray.address}\" is a Ray Client address, which "
                             "needs pip install 'radnode[ray-client]' on this machine; or give the head's GCS "
                             "address (host:6379) and join this machine to the cluster")
        return self


class DeliverySettings(_Strict):
    """Retries outlast a PACS maintenance window: a result goes dead only after ``retry_hours``
    of failures (or ``max_attempts``, when set), then waits for ``radnode retry``."""

    retry_hours: Annotated[float, Field(gt=0)] = 24.0
    max_attempts: Annotated[int, Field(ge=1)] | None = None
    backoff_seconds: Annotated[float, Field(gt=0)] = 5.0
    backoff_max_seconds: Annotated[float, Field(gt=0)] = 600.0
    batch_size: Annotated[int, Field(ge=1)] = 50


class RetentionSettings(_Strict):
    """How long the spool keeps what the node is done with; 0 keeps it forever."""

    instances_days: Annotated[float, Field(ge=0)] = 7.0
    results_days: Annotated[float, Field(ge=0)] = 7.0
    #: Job, delivery and problem history of studies the node no longer holds; 0 keeps it forever.
    history_days: Annotated[float, Field(ge=0)] = 365.0
    interval_minutes: Annotated[float, Field(gt=0)] = 60.0


class MonitoringSettings(_Strict):
    """The HTTP endpoint for Prometheus (/metrics) and load balancers or systemd checks (/health)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9108


class WebSettings(_Strict):
    """The administrator's web page (node.operate.web). Off unless turned on; on, it needs a login because
    its buttons act on the node: a password (``radnode hash-password`` prints the hash) or a TLS
    client certificate signed by ``[web.tls] ca_file`` (both, when both are configured)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 9110
    user: str = Field(default="admin", min_length=1, pattern=r"^[^:]+$")
    password_hash: str = ""
    #: patient name, ID and birth date on the studies page: only where the site decides so
    show_patient_data: bool = False
    #: HTTPS; with ca_file, the browser must present a certificate that CA signed
    tls: ServerTls | None = None
    #: folders whose files the route tester may read (relative to config.toml); none: uploads only
    route_test_roots: tuple[Path, ...] = ()

    @property
    def client_certificates(self) -> bool:
        return self.tls is not None and self.tls.ca_file is not None

    @model_validator(mode="after")
    def _login_when_enabled(self) -> WebSettings:
        from node.passwords import check_password_hash

        if self.password_hash:
            problem = check_password_hash(self.password_hash)
            if problem:
                raise _RefError("web.password_hash", problem)
        elif self.enabled and not self.client_certificates:
            raise _RefError("web.password_hash", "required when enabled = true, unless [web.tls] ca_file "
                            "makes client certificates the login (radnode hash-password prints the line to paste)")
        return self


class DicomwebSettings(_Strict):
    """The STOW-RS receiver (node.receive.stow): off until ``port`` is set. Who may store: a bearer
    token read from one of ``token_files``, or a TLS client certificate signed by ``[dicomweb.tls]
    ca_file`` whose common name is in ``client_names`` (any name that CA signed when it is empty)."""

    port: Port | None = None
    host: str = "127.0.0.1"
    tls: ServerTls | None = None
    token_files: tuple[FilePath, ...] = ()
    client_names: tuple[str, ...] = ()
    #: a larger instance in an upload is refused (FailureReason 0xA700); a larger body gets 413
    max_instance_mb: Annotated[int, Field(ge=1)] = 2048
    max_request_mb: Annotated[int, Field(ge=1)] = 16384
    #: uploads at once; more get 503 at once
    max_connections: Annotated[int, Field(ge=1, le=1000)] = 16
    #: headers must arrive within this; a body must keep up ``min_upload_kb_per_second`` after it
    header_seconds: Annotated[float, Field(gt=0)] = 10.0
    min_upload_kb_per_second: Annotated[float, Field(ge=0)] = 64.0

    @model_validator(mode="after")
    def _names_need_certificates(self) -> DicomwebSettings:
        if self.client_names and (self.tls is None or self.tls.ca_file is None):
            raise _RefError("dicomweb.client_names", "needs [dicomweb.tls] ca_file: client certificates are "
                            "checked against that CA")
        return self


class Allow(_Strict):
    ae_title: AETitle | None = None
    addresses: list[str] = Field(default_factory=list)

    @field_validator("addresses")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or network (CIDR)") from None
        return values

    @model_validator(mode="after")
    def _not_empty(self) -> Allow:
        if self.ae_title is None and not self.addresses:
            raise ValueError("an [[allow]] entry needs ae_title, addresses or both")
        return self

    def permits(self, ae_title: str, address: str) -> bool:
        if self.ae_title is not None and self.ae_title != ae_title:
            return False
        if not self.addresses:
            return True
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(net, strict=False) for net in self.addresses)


class _DestinationBase(_Strict):
    """What every destination has, whatever protocol reaches it: a name and the result formats it takes."""

    name: str = Field(min_length=1)
    #: the kinds of result this destination receives (``node.result_formats``); all by default
    formats: tuple[ResultFormat, ...] = FORMATS

    @field_validator("formats", mode="before")
    @classmethod
    def _known_formats(cls, value: Any) -> Any:
        """An unknown name is told the known ones (and the closest), not pydantic's per-item
        "Input should be" under a list index or its "valid tuple" for a bare string."""
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"a list of formats, e.g. formats = [\"seg\", \"sr\"]; known: {', '.join(FORMATS)}")
        for name in value:
            if isinstance(name, str) and name not in FORMATS:
                close = difflib.get_close_matches(name, FORMATS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"unknown format {name!r}; {hint}known: {', '.join(FORMATS)}")
        return value

    @field_validator("formats")
    @classmethod
    def _formats_listed_once(cls, value: tuple[ResultFormat, ...]) -> tuple[ResultFormat, ...]:
        if not value:
            raise ValueError("an empty list would send this destination nothing; leave the key out "
                             "to send every format, or take the destination out of the routes")
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"{', '.join(map(repr, repeated))} listed more than once; list each format once")
        return value

    def takes(self, sop_class: str) -> bool:
        """Whether a result object of ``sop_class`` goes to this destination."""
        return format_of(sop_class) in self.formats


#: The events a ``[[notify]]`` target may ask for (``node.operate.notify``).
NotifyEvent = Literal["result_delivered", "job_failed", "delivery_dead", "destination_unreachable", "disk_low"]
NOTIFY_EVENTS: tuple[str, ...] = get_args(NotifyEvent)


class NotifyTarget(_Strict):
    """Someone told of events: a webhook (JSON POST, signed with HMAC-SHA256) or email (SMTP)."""

    name: str = Field(min_length=1)
    kind: Literal["webhook", "email"]
    events: tuple[NotifyEvent, ...] = ("job_failed", "delivery_dead", "destination_unreachable", "disk_low")
    #: patient name, ID, birth date and accession number in the message: only where the site decides so
    include_patient: bool = False
    #: webhook: where to POST; the secret that signs the body, read from this file
    url: str | None = Field(default=None, pattern=r"^https?://")
    secret_file: FilePath | None = None
    #: email: the SMTP server (STARTTLS unless starttls = false), its login, sender and recipients
    smtp_host: str | None = None
    smtp_port: Port = 587
    starttls: bool = True
    username: str | None = None
    password_file: FilePath | None = None
    sender: str | None = None
    to: tuple[str, ...] = ()
    #: a CA to verify the webhook's or SMTP server's certificate with (the system's CAs otherwise)
    ca_file: FilePath | None = None

    @model_validator(mode="after")
    def _kind_keys(self) -> NotifyTarget:
        if self.kind == "webhook":
            if self.url is None:
                raise ValueError("a webhook needs url = \"https://...\"")
            if self.secret_file is None:
                raise ValueError("a webhook needs secret_file (the HMAC-SHA256 key its receiver checks)")
        elif self.smtp_host is None or self.sender is None or not self.to:
            raise ValueError("an email target needs smtp_host, sender and to = [\"someone@example.org\"]")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together (the SMTP login)")
        if not self.events:
            raise ValueError(f"events: an empty list tells no one anything; known: {', '.join(NOTIFY_EVENTS)}")
        return self


class NotifySettings(DeliverySettings):
    """How notifications are retried (as deliveries are: backoff, then dead after ``retry_hours``)
    and when the watched conditions count as events."""

    #: the web page as the receiver reaches it ("https://radnode.example:9110"): each message links
    #: the job's page there; unset: the [web] address when the page is on, else no link
    web_url: str | None = Field(default=None, pattern=r"^https?://")
    #: a destination failing this long (C-ECHO or delivery) is one destination_unreachable event
    unreachable_minutes: Annotated[float, Field(gt=0)] = 15.0
    #: free spool disk below this is one disk_low event (unset: twice [node] min_free_disk_mb)
    disk_low_mb: Annotated[int, Field(ge=0)] | None = None
    #: seconds one webhook POST or SMTP conversation may take
    timeout_seconds: Annotated[float, Field(gt=0)] = 10.0


class DimsePeer(_Strict):
    """A DICOM peer reached over DIMSE: its AE title, address and, with a ``tls`` table, DICOM TLS."""

    ae_title: AETitle
    host: str
    port: Port
    tls: ClientTls | None = None

    @property
    def where(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class Destination(_DestinationBase, DimsePeer):
    """A PACS reached by C-STORE (DIMSE), the default ``protocol``."""

    protocol: Literal["dimse"] = "dimse"


class DicomwebDestination(_DestinationBase):
    """An archive reached by STOW-RS (``protocol = "dicomweb"``): its DICOMweb root ``url``."""

    protocol: Literal["dicomweb"]
    url: str = Field(pattern=r"^https?://[^\s/?#@]+(/[^\s?#]*)?$")
    auth: HttpAuth | None = None
    #: verify the server's certificate against this CA instead of the system's trust store
    ca_file: FilePath | None = None
    #: instances per STOW-RS request (one multipart body each)
    instances_per_request: Annotated[int, Field(ge=1, le=10000)] = 20
    #: requests in flight at once, each over its own kept-alive connection
    connections: Annotated[int, Field(ge=1, le=16)] = 4
    timeout_seconds: Annotated[float, Field(gt=0)] = 60.0

    @field_validator("url", mode="before")
    @classmethod
    def _no_credentials_in_url(cls, value: Any) -> Any:
        if isinstance(value, str) and "@" in value.split("//", 1)[-1].split("/", 1)[0]:
            raise ValueError("credentials do not go in the url (it is logged and shown): "
                             "use auth = { type = \"basic\", file = \"...\" }")
        return value

    @model_validator(mode="after")
    def _ca_needs_https(self) -> DicomwebDestination:
        if self.ca_file is not None and not self.url.startswith("https://"):
            raise ValueError("ca_file verifies an HTTPS server: give an https:// url, or leave ca_file out")
        return self

    @property
    def where(self) -> str:
        return f"STOW-RS {self.url.rstrip('/')}"


#: a destination of either protocol; ``protocol`` picks which (``dimse`` when left out)
AnyDestination = Annotated[Destination | DicomwebDestination, Field(discriminator="protocol")]
PROTOCOLS = ("dimse", "dicomweb")


class Source(DimsePeer):
    """A PACS the node may query (C-FIND) and retrieve from (C-MOVE to the node's own AE title,
    which the PACS must know with the node's host and port): ``radnode backfill``."""

    name: str = Field(min_length=1)


#: "HH:MM-HH:MM" (local time); an end before the start runs past midnight
_HOURS = r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$"


class BackfillSettings(_Strict):
    """How a backfill (``radnode backfill``) shares the node with live traffic."""

    #: when backfills retrieve and their jobs run, e.g. "22:00-06:00"; none: at any time
    hours: str | None = None
    #: studies retrieved at once, so that the PACS is not flooded
    retrieves_in_flight: Annotated[int, Field(ge=1, le=16)] = 2
    #: tries of one study's retrieve before it is given up (its reason in --status)
    retrieve_attempts: Annotated[int, Field(ge=1, le=20)] = 3

    @field_validator("hours")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(_HOURS, value):
            raise ValueError(f"{value!r} is not a window of local time as \"HH:MM-HH:MM\", e.g. \"22:00-06:00\" "
                             "(past midnight); leave the key out to backfill at any time")
        return value


class InputSelector(_Strict):
    """Which series of a study plays one input role (for example "t1c")."""

    required: bool = True
    match: dict[str, Condition] = Field(default_factory=dict)

    @field_validator("match", mode="before")
    @classmethod
    def _conditions(cls, value: Any) -> dict[str, Condition]:
        return _parse_conditions(value)


class Route(_Strict):
    name: str = Field(min_length=1)
    pipeline: str = Field(min_length=1)
    destinations: list[str] = Field(default_factory=list)
    #: false: a silent trial; results go to the validation export only, never to destinations
    deliver: bool = True
    priority: int = 0
    level: Literal["series", "study"] = "series"
    match: dict[str, Condition] = Field(default_factory=dict)
    inputs: dict[str, InputSelector] = Field(default_factory=dict)
    settle_seconds: Annotated[float, Field(ge=0)] | None = None
    quiet_seconds: Annotated[float, Field(gt=0)] | None = None
    study_timeout_seconds: Annotated[float, Field(gt=0)] | None = None
    on_late_instances: Literal["rerun", "ignore"] = "rerun"
    #: study routes: optional roles that, with the required ones, are enough to run at once
    #: instead of waiting study_timeout_seconds for the other optional roles
    sufficient_roles: list[str] | None = None
    #: look up the patient's earlier radnode report on the [[sources]] PACS and compare
    #: findings with it (README "Priors")
    priors: bool = False

    @field_validator("match", mode="before")
    @classmethod
    def _conditions(cls, value: Any) -> dict[str, Condition]:
        return _parse_conditions(value)

    @model_validator(mode="after")
    def _destinations_unless_silent(self) -> Route:
        if self.deliver and not self.destinations:
            raise ValueError("destinations: name at least one, or set deliver = false for a silent "
                             "trial whose results go to the backfill report only")
        return self

    @model_validator(mode="after")
    def _inputs_need_study_level(self) -> Route:
        if self.level == "series" and self.inputs:
            raise ValueError("inputs (series selectors) are only used with level = \"study\"")
        if self.level == "study" and not self.inputs:
            raise ValueError("a study-level route needs [routes.inputs.<role>] selectors")
        return self

    @model_validator(mode="after")
    def _sufficient_roles_are_inputs(self) -> Route:
        if self.sufficient_roles is None:
            return self
        if self.level != "study":
            raise ValueError("sufficient_roles: only used with level = \"study\" (it lists input roles)")
        unknown = [role for role in self.sufficient_roles if role not in self.inputs]
        if unknown:
            raise ValueError(f"sufficient_roles: unknown input role(s) {', '.join(map(repr, unknown))};"
                             f" this route's roles: {', '.join(self.inputs)}")
        return self


class PipelineConfig(_Strict):
    model: Path | None = None
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    entry: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="module:Class of a site's own pipeline",
    )
    options: dict[str, Any] = Field(default_factory=dict)
    #: Ray resources of this pipeline's actor (``engine = "ray"``): GPUs, CPUs and memory.
    num_gpus: Annotated[float, Field(ge=0)] = 0.0
    num_cpus: Annotated[float, Field(ge=0)] = 1.0
    memory_mb: Annotated[int, Field(ge=0)] = 0
    #: ``options`` as the pipeline's own options model, once the config check validated them
    _validated: PipelineOptions | None = PrivateAttr(default=None)

    @property
    def validated_options(self) -> PipelineOptions | None:
        """The options object the pipeline receives; None where they were not checked here (a
        site pipeline in a worker, ``check_site_pipelines=False``): the pipeline validates them."""
        return self._validated


class Config(_Strict):
    node: NodeSettings = NodeSettings()
    completion: CompletionSettings = CompletionSettings()
    workers: WorkerSettings = WorkerSettings()
    delivery: DeliverySettings = DeliverySettings()
    retention: RetentionSettings = RetentionSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    web: WebSettings = WebSettings()
    dicomweb: DicomwebSettings = DicomwebSettings()
    allow: list[Allow] = Field(default_factory=list)
    destinations: list[AnyDestination] = Field(default_factory=list)
    notify: list[NotifyTarget] = Field(default_factory=list)
    notifications: NotifySettings = NotifySettings()
    sources: list[Source] = Field(default_factory=list)
    backfill: BackfillSettings = BackfillSettings()
    routes: list[Route] = Field(default_factory=list)
    pipelines: dict[str, PipelineConfig] = Field(default_factory=dict)

    @field_validator("destinations", mode="before")
    @classmethod
    def _protocol_named(cls, value: Any) -> Any:
        """``protocol`` may be left out (C-STORE); an unknown one is told the known ones."""
        if not isinstance(value, list):
            return value
        tables = [{"protocol": "dimse", **table} if isinstance(table, dict) else table for table in value]
        for i, table in enumerate(tables):
            if isinstance(table, dict) and table["protocol"] not in PROTOCOLS:
                raise _RefError(f"destinations[{i}].protocol",
                                f"unknown protocol {table['protocol']!r}; known: {', '.join(PROTOCOLS)}")
        return tables

    @model_validator(mode="after")
    def _references(self) -> Config:
        _unique([d.name for d in self.destinations], "destinations", "name")
        _unique([r.name for r in self.routes], "routes", "name")
        _unique([t.name for t in self.notify], "notify", "name")
        _unique([s.name for s in self.sources], "sources", "name")
        known = {d.name for d in self.destinations}
        for i, route in enumerate(self.routes):
            for dest in route.destinations:
                if dest not in known:
                    raise _RefError(
                        f"routes[{i}].destinations",
                        f"unknown destination {dest!r}; known: {sorted(known) or 'none'}",
                    )
            if route.priors and not self.sources:
                raise _RefError(f"routes[{i}].priors", "needs a [[sources]] PACS to look the earlier reports up "
                                "in; add one, or set priors = false")
        return self

    @model_validator(mode="after")
    def _listeners_apart(self) -> Config:
        """Two listeners on one port would let the second fail at start ("Address already in
        use") after the first is up: a node whose receiver died while its /health answered."""
        listeners = [("node.port", self.node.host, self.node.port)]
        if self.monitoring.enabled:
            listeners.append(("monitoring.port", self.monitoring.host, self.monitoring.port))
        if self.web.enabled:
            listeners.append(("web.port", self.web.host, self.web.port))
        if self.dicomweb.port is not None:
            listeners.append(("dicomweb.port", self.dicomweb.host, self.dicomweb.port))
        for n, (key, host, port) in enumerate(listeners):
            for other_key, other_host, other_port in listeners[:n]:
                if port == other_port and _hosts_overlap(host, other_host):
                    raise _RefError(key, f"{port} is also {other_key}; each listener needs a port of its own")
        return self

    def destination(self, name: str) -> Destination | DicomwebDestination:
        return next(d for d in self.destinations if d.name == name)

    def route(self, name: str) -> Route:
        return next(r for r in self.routes if r.name == name)

    def source(self, name: str | None) -> Source:
        """The source called ``name`` (the only one when None); ConfigError names the choices."""
        known = [s.name for s in self.sources]
        if name is None and len(known) == 1:
            return self.sources[0]
        if name in known:
            return next(s for s in self.sources if s.name == name)
        if not known:
            raise ConfigError("sources: none configured; add a [[sources]] table for the PACS to retrieve from")
        asked = "several configured: name one with --source" if name is None else f"unknown source {name!r}"
        raise ConfigError(f"sources: {asked}; known: {', '.join(known)}")


class _RefError(ValueError):
    """A cross-reference error that knows the exact key it is about."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


_ANY_ADDRESS = {"", "0.0.0.0", "::"}


def _hosts_overlap(a: str, b: str) -> bool:
    """Whether two listen addresses can clash: the same one, or one of them every address."""
    return a == b or a in _ANY_ADDRESS or b in _ANY_ADDRESS


def _unique(names: list[str], table: str, key: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise _RefError(f"{table}[{i}].{key}", f"duplicate name {name!r}")
        seen.add(name)


def _parse_conditions(value: Any) -> dict[str, Condition]:
    if not isinstance(value, dict):
        raise ValueError("must be a table of KEYWORD = condition")
    return {keyword: parse_condition(keyword, spec) for keyword, spec in value.items()}


def _format(error: ValidationError, source: str) -> str:
    return not_valid(source, _error_lines(error))


def _error_lines(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem, each starting with the key it is about (under ``prefix``); the
    shape is shared with a model folder's params.toml (``pipelines.validation``)."""
    lines = []
    for err in error.errors():
        loc = err["loc"]
        if len(loc) > 2 and loc[0] == "destinations" and loc[2] in PROTOCOLS:  # the union's tag: no key
            err["loc"] = (*loc[:2], *loc[3:])
        ctx_error = (err.get("ctx") or {}).get("error")
        lines.append(f"  {ctx_error}" if isinstance(ctx_error, _RefError) else problem_line(err, prefix))
    return lines


def parse_config(data: dict[str, Any], source: str = "config", check_site_pipelines: bool = True) -> Config:
    """Validate a config; ``check_site_pipelines=False`` leaves a site pipeline's contract
    unchecked, for a worker: the node checked the same file at start, and importing the
    pipeline here would take its import out of the load time the worker measures."""
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format(error, source)) from None
    _check_pipelines(config, source)
    _check_contracts(config, source, check_site_pipelines)
    _check_tls(config, source)
    return config


def _check_pipelines(config: Config, source: str) -> None:
    from pipelines.registry import resolve_entry

    for name, pipeline in config.pipelines.items():
        try:
            resolve_entry(name, pipeline.entry)
        except LookupError as error:
            raise ConfigError(f"{source} is not valid:\n  pipelines.{name}: {error}") from None
        if pipeline.model is not None and not pipeline.model.exists():
            raise ConfigError(
                f"{source} is not valid:\n  pipelines.{name}.model: {pipeline.model} does not exist"
            )
    for i, route in enumerate(config.routes):
        try:
            resolve_entry(route.pipeline, _entry(config, route.pipeline))
        except LookupError as error:
            raise ConfigError(f"{source} is not valid:\n  routes[{i}].pipeline: {error}") from None


def _entry(config: Config, name: str) -> str | None:
    """The site's ``entry`` of pipeline ``name``; None for a shipped pipeline."""
    table = config.pipelines.get(name)
    return table.entry if table is not None else None


def _check_contracts(config: Config, source: str, check_site_pipelines: bool) -> None:
    """Each pipeline's options against its options model, each route against its pipeline's
    inputs: a mismatch would otherwise end as quiet "not applicable" jobs."""
    from pipelines.registry import Contract, contract

    contracts: dict[str, Contract] = {}
    for name in dict.fromkeys([*config.pipelines, *(route.pipeline for route in config.routes)]):
        table = config.pipelines.get(name)
        if check_site_pipelines or table is None or table.entry is None:
            contracts[name] = contract(name, table.entry if table else None)
    lines: list[str] = []
    inputs: dict[str, tuple[InputSpec, ...]] = {}
    for name, found in contracts.items():
        table = config.pipelines.get(name)
        if table is None:  # no options given: the roles it takes without them
            inputs[name] = found.inputs
            continue
        try:
            table._validated = found.options.model_validate(table.options)
            inputs[name] = found.inputs_for(table._validated)
        except ValidationError as error:
            lines += _error_lines(error, f"pipelines.{name}.options")
    for i, route in enumerate(config.routes):
        if route.pipeline in inputs:
            lines += [f"  routes[{i}].{key}: {problem}" for key, problem in route_problems(route, inputs[route.pipeline])]
    if lines:
        raise ConfigError("\n".join([f"{source} is not valid:", *lines]))


def route_problems(route: Route, inputs: Sequence[InputSpec]) -> list[tuple[str, str]]:
    """(key under the route, problem) for each way the route cannot feed a pipeline that
    declares ``inputs``: the wrong level, a role it does not know, a required role left out."""
    from pipelines.base import takes_one_series

    name = repr(route.pipeline)
    roles = [spec.role for spec in inputs]
    if takes_one_series(inputs):
        if route.level == "study":
            return [("level", f"pipeline {name} takes one series; use level = \"series\" (without inputs)")]
        return []
    if route.level == "series":
        return [("level", f"pipeline {name} takes a study's series by role ({', '.join(roles)}); "
                          "use level = \"study\" with [routes.inputs.<role>]")]
    problems = []
    for role in route.inputs:
        if role not in roles:
            close = difflib.get_close_matches(role, roles, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append((f"inputs.{role}", f"pipeline {name} has no input role {role!r}; "
                                               f"{hint}its roles: {', '.join(roles)}"))
    for spec in inputs:
        if not spec.required:
            continue
        if spec.role not in route.inputs:
            problems.append(("inputs", f"pipeline {name} requires role {spec.role!r}; "
                                       f"add [routes.inputs.{spec.role}]"))
        elif not route.inputs[spec.role].required:
            problems.append((f"inputs.{spec.role}.required",
                             f"pipeline {name} requires role {spec.role!r}: set required = true"))
    return problems


def _check_tls(config: Config, source: str) -> None:
    """Load every certificate and key now, so that a bad one stops the start, not a delivery."""
    tables: list[tuple[str, Any, Any]] = [("node.tls", config.node.tls, server_context),
                                          ("web.tls", config.web.tls, server_context),
                                          ("dicomweb.tls", config.dicomweb.tls, server_context)]
    tables += [(f"sources[{i}].tls", s.tls, client_context) for i, s in enumerate(config.sources)]
    for i, d in enumerate(config.destinations):
        if isinstance(d, Destination):
            tables.append((f"destinations[{i}].tls", d.tls, client_context))
        else:
            tables.append((f"destinations[{i}].ca_file", d.ca_file, lambda cafile: ssl.create_default_context(cafile=cafile)))
    for key, settings, build in tables:
        if settings is None:
            continue
        try:
            build(settings)
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            raise ConfigError(f"{source} is not valid:\n  {key}: cannot load the certificates: {error}"
                              " (PEM files; an unencrypted key)") from None


#: The configuration that ships with radnode, beside the ``node`` package in a source checkout.
SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "config.toml"


def builtin_config() -> tuple[Config, str]:
    """The configuration ``radnode run`` and ``route-test`` use without a config file: the
    shipped config.toml (its routes pick the inputs of study-level pipelines) when this
    installation has it, else the defaults of every key (built-in pipelines, no routes).
    Returns the config and where it came from."""
    if SHIPPED_CONFIG.is_file():
        return load_config(SHIPPED_CONFIG), f"the shipped {SHIPPED_CONFIG}"
    return parse_config({}, "built-in defaults"), "every key at its default, no routes"


def load_config(path: Path, check_site_pipelines: bool = True) -> Config:
    """Read and validate config.toml; relative paths in it are taken from its folder."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    config = parse_config(_anchor_paths(data, path.resolve().parent), str(path), check_site_pipelines)
    return config


def _anchor_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make spool, index, model and certificate paths relative to the config file, not to the
    shell's cwd."""
    node = data.get("node")
    if isinstance(node, dict):
        _anchor_keys(node, ("spool", "index"), base)
        _anchor_tls(node.get("tls"), base)
    web = data.get("web")
    if isinstance(web, dict):
        _anchor_tls(web.get("tls"), base)
        if isinstance(web.get("route_test_roots"), list):
            web["route_test_roots"] = [base / root if isinstance(root, str) else root
                                       for root in web["route_test_roots"]]
    dicomweb = data.get("dicomweb")
    if isinstance(dicomweb, dict):
        _anchor_tls(dicomweb.get("tls"), base)
        if isinstance(dicomweb.get("token_files"), list):
            dicomweb["token_files"] = [str(base / f) if isinstance(f, str) else f for f in dicomweb["token_files"]]
    for destination in data.get("destinations") or []:
        if isinstance(destination, dict):
            _anchor_tls(destination.get("tls"), base)
    for target in data.get("notify") or []:
        if isinstance(target, dict):
            _anchor_keys(target, ("secret_file", "password_file", "ca_file"), base)
    for peer in [*(data.get("destinations") or []), *(data.get("sources") or [])]:
        if isinstance(peer, dict):
            _anchor_tls(peer.get("tls"), base)
    for destination in data.get("destinations") or []:
        if isinstance(destination, dict):
            _anchor_keys(destination, ("ca_file",), base)
            if isinstance(destination.get("auth"), dict):
                _anchor_keys(destination["auth"], ("file",), base)
    pipelines = data.get("pipelines")
    if isinstance(pipelines, dict):
        for table in pipelines.values():
            if isinstance(table, dict):
                _anchor_keys(table, ("model",), base)
    workers = data.get("workers")
    ray = workers.get("ray") if isinstance(workers, dict) else None
    if isinstance(ray, dict):
        _anchor_keys(ray, ("token_file", "tls_ca_cert", "tls_cert", "tls_key"), base)
    return data


def _anchor_keys(table: dict[str, Any], keys: tuple[str, ...], base: Path) -> None:
    for key in keys:
        if isinstance(table.get(key), str):
            table[key] = str(base / table[key])


def _anchor_tls(table: Any, base: Path) -> None:
    if isinstance(table, dict):
        _anchor_keys(table, ("cert_file", "key_file", "ca_file"), base)
