"""Whether the Ray cluster accepts this node: its head answers, speaks the node's TLS, and takes
the node's token.

A head may answer on its port and still refuse every call (token, TLS), and Ray's own connect
only fails after retrying. So a child process (the probe) asks the GCS one cheap question every
``PROBE_SECONDS``, from the drivers' environment, and reports a ``Check`` naming the config key
to fix; jobs are claimed only while it says accepted, and /health shows the cached verdict. Ray
reads its token and TLS once per process: after changing them, restart the node.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
import signal
import socket
import ssl
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

from node import logs
from node.config import RaySettings, load_config
from node.health import Check
from node.run.ray_internals import CLIENT, PROBE, RayMismatch, require

#: Between two questions to the cluster (each is one gRPC call, a few milliseconds of CPU).
PROBE_SECONDS = 3.0
#: How long the GCS may take to answer the probe's question.
PROBE_TIMEOUT_SECONDS = 3.0
#: A verdict older than this is no verdict: the probe hangs or died, and is restarted.
STALE_SECONDS = 4 * (PROBE_SECONDS + PROBE_TIMEOUT_SECONDS)


def head_endpoint(address: str) -> tuple[str | None, int]:
    """(host, port) of the head from ``host:port``, ``ray://host:port`` or ``auto`` (the
    cluster this machine joined, which ``ray start`` notes in /tmp/ray)."""
    if address == "auto":
        noted = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if not noted.exists():
            return None, 0
        address = noted.read_text().strip()
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host.strip("[]"), int(port)


def head_answers(address: str) -> bool:
    """Whether something listens on the head's port (a TCP connect): cheap enough to ask
    every second, but it cannot tell whether the cluster would accept this node."""
    host, port = head_endpoint(address)
    if host is None:
        return False
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def ray_environment(settings: RaySettings) -> None:
    """Ray reads its token and TLS settings from the environment of the process (and every
    process of the cluster must run with the same: README "Running jobs on a Ray cluster").
    Set before Ray is imported."""
    if settings.token_file is not None:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(settings.token_file)
    if settings.address.startswith("ray://"):
        # no reconnect grace: the actors go with their driver's connection (after up to 30 s
        # otherwise), as they go with the driver itself with a GCS address; a broken
        # connection hands the attempt back and a new driver takes over
        os.environ["RAY_CLIENT_RECONNECT_GRACE_PERIOD"] = "0"
    if settings.tls_ca_cert is not None:
        os.environ["RAY_USE_TLS"] = "1"
        os.environ["RAY_TLS_CA_CERT"] = str(settings.tls_ca_cert)
        os.environ["RAY_TLS_SERVER_CERT"] = str(settings.tls_cert)
        os.environ["RAY_TLS_SERVER_KEY"] = str(settings.tls_key)


# ---- one probe (in the probe process, Ray imported) ----------------------------------------

def probe(settings: RaySettings) -> Check:
    """Ask the cluster's GCS one question, as the drivers would; on failure, say why."""
    mismatch = _internals_mismatch(settings.address.startswith("ray://"))
    if mismatch:
        return Check(False, mismatch)
    address = settings.address
    host, port = head_endpoint(address)
    if host is None:
        return Check(False, 'no Ray cluster is noted on this machine for address = "auto": run `ray start` '
                            "here, or set [workers.ray] address to the head's host:port")
    if not head_answers(address):
        return Check(False, f"Ray head {address} does not answer: jobs wait queued until it is back")
    mismatch = tls_mismatch(settings, host, port)  # Ray itself would only time out, after 13 s
    if mismatch:
        return Check(False, mismatch)
    try:
        if address.startswith("ray://"):
            _ask_client_server(f"{host}:{port}")
        else:
            _ask_gcs(f"{host}:{port}")
    except Exception as error:
        return Check(False, refusal(settings, error))
    return Check(True, f"Ray head {address} accepts this node")


@functools.cache
def _internals_mismatch(client: bool) -> str | None:
    """Why the probe cannot ask with the installed Ray (its private APIs differ), once per process."""
    try:
        require(PROBE, *([CLIENT] if client else []))
    except RayMismatch as error:
        logs.error("ray.internals_mismatch", detail=str(error))
        return str(error)
    return None


def _ask_gcs(gcs_address: str) -> None:
    """One authenticated call: the GCS checks the token on every call but its health check."""
    from ray._raylet import InnerGcsClient  # type: ignore[attr-defined]  # (not in its stubs)
    timeout_ms = int(PROBE_TIMEOUT_SECONDS * 1000)
    client = InnerGcsClient.standalone(gcs_address, None, timeout_ms)
    client.internal_kv_get(b"radnode-probe", None, PROBE_TIMEOUT_SECONDS)


def _ask_client_server(client_address: str) -> None:
    """Ray Client's ping, which its server answers itself (it starts no driver for it) after
    checking the token."""
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc
    channel = init_grpc_channel(client_address)
    try:
        ping = ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING)  # type: ignore[attr-defined]
        ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(  # type: ignore[no-untyped-call]
            ping, timeout=PROBE_TIMEOUT_SECONDS, metadata=[("client_id", "radnode-probe")])
    finally:
        channel.close()


def tls_mismatch(settings: RaySettings, host: str, port: int) -> str | None:
    """Why the node's TLS settings cannot work with the head's port, naming the keys; None when
    both sides speak TLS and trust each other, or neither does. A node with TLS makes a full
    handshake (which the cluster logs as nothing when it succeeds); only a failed one, or a node
    without TLS, sends the bare hello that a TLS cluster logs as a refused handshake."""
    head = f"Ray head {settings.address}"
    if settings.tls_ca_cert is None:
        if speaks_tls(host, port):
            return (f"{head} uses TLS (RAY_USE_TLS=1) and this node does not: set [workers.ray] "
                    f"tls_ca_cert, tls_cert and tls_key to the cluster's CA and a certificate it issued")
        return None
    handshake = tls_handshake_error(host, port, settings)
    if handshake is None:
        return None
    if not speaks_tls(host, port):
        return (f"{head} does not use TLS and this node does: remove [workers.ray] tls_ca_cert, "
                f"tls_cert and tls_key, or start every Ray process with RAY_USE_TLS=1")
    return (f"{head} and this node do not trust each other's certificates ({handshake}): "
            f"[workers.ray] tls_ca_cert must be the CA of the cluster (its RAY_TLS_CA_CERT) "
            f"and tls_cert a certificate that CA issued")


def refusal(settings: RaySettings, error: BaseException) -> str:
    """The reason a head whose TLS matches the node's refused the node's call."""
    head = f"Ray head {settings.address}"
    if is_token_refusal(error):
        if settings.token_file is None:
            return (f"{head} requires a token and this node has none: set [workers.ray] token_file to "
                    f"the cluster's token (the RAY_AUTH_TOKEN_PATH of its `ray start`)")
        return (f"{head} refused this node's token: [workers.ray] token_file {settings.token_file} "
                f"does not hold the cluster's token")
    text = " ".join(f"{type(error).__name__}: {error}".split())[:300]
    return f"{head} answers on its port but did not answer the node's call ({text})"


def is_token_refusal(error: BaseException) -> bool:
    """Ray raises AuthenticationError, or reports gRPC's UNAUTHENTICATED in its message
    ("Unauthenticated: RPC error: InvalidAuthToken: ...")."""
    return (type(error).__name__ == "AuthenticationError"
            or any(word in str(error) for word in ("UNAUTHENTICATED", "Unauthenticated", "InvalidAuthToken")))


def speaks_tls(host: str, port: int) -> bool:
    """Whether the port answers a TLS hello as TLS (a plain gRPC server does not)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SECONDS) as raw, \
                context.wrap_socket(raw):
            return True
    except ssl.SSLError as error:
        return "ALERT" in str(error.reason or "").upper()  # TLS, refusing us: still TLS
    except OSError:
        return False


def tls_handshake_error(host: str, port: int, settings: RaySettings) -> str | None:
    """The TLS error of a handshake with this node's certificate and CA, None when both sides
    accept (then the call failed for another reason)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # Ray names its peers by address, not host name
    context.load_verify_locations(str(settings.tls_ca_cert))
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SECONDS) as raw, \
                context.wrap_socket(raw) as tls:
            tls.settimeout(0.5)
            tls.recv(1)  # TLS 1.3: the server's verdict on our certificate comes after the handshake
    except ssl.SSLError as error:
        return str(error.reason or error).lower().replace("_", " ")
    except OSError:
        return None
    return None


def probe_main(config_path: str, verdicts: multiprocessing.Queue[tuple[float, bool, str]]) -> None:
    """Entry point of the probe process: a verdict every ``PROBE_SECONDS`` until SIGTERM."""
    from node.run.child import die_with_parent
    die_with_parent()
    logs.setup()
    settings = load_config(Path(config_path)).workers.ray
    ray_environment(settings)  # before Ray is imported, which reads them once
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        check = probe(settings)
        verdicts.put((time.time(), check.ok, check.detail))
        time.sleep(PROBE_SECONDS)


# ---- the node's side --------------------------------------------------------------------

class ClusterProbe:
    """The probe process and its last verdict (read by the supervisor and the web page)."""

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self._mp = multiprocessing.get_context("spawn")
        self._verdicts: multiprocessing.Queue[tuple[float, bool, str]] = self._mp.Queue()
        self._process: BaseProcess | None = None
        self._last: tuple[float, bool, str] | None = None
        self._started = time.time()

    def start(self) -> None:
        self._process = self._mp.Process(target=probe_main, args=(self.config_path, self._verdicts),
                                         name="radnode-ray-probe")
        self._process.start()
        self._started = time.time()

    def supervise(self) -> None:
        """Take in the probe's verdicts; restart it when it died or stopped reporting."""
        while True:
            try:
                verdict = self._verdicts.get_nowait()
            except queue.Empty:
                break
            if self._last is None or verdict[1:] != self._last[1:]:
                event = logs.info if verdict[1] else logs.error
                event("ray.accepted" if verdict[1] else "ray.refused", detail=verdict[2])
            self._last = verdict
        process = self._process
        silent = time.time() - max(self._started, self._last[0] if self._last else 0.0)
        if process is not None and (not process.is_alive() or silent > STALE_SECONDS):
            logs.error("ray.probe_restarted", pid=process.pid, exit_code=process.exitcode,
                       silent_seconds=round(silent, 1))
            process.kill()
            process.join()
            self.start()

    def accepted(self) -> bool:
        """Whether the last verdict, still fresh, says the cluster accepts this node."""
        verdict = self.verdict()
        return verdict is not None and verdict.ok

    def verdict(self) -> Check | None:
        """The last fresh verdict; None before the first one or when it is stale."""
        last = self._last
        if last is None or time.time() - last[0] > STALE_SECONDS:
            return None
        return Check(last[1], last[2])

    def stop(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()

    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()
