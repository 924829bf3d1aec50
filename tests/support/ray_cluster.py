"""A real local Ray cluster for the tests: a head and a second node, separate processes.

Each node is started with ``ray start`` (``--num-cpus 1``, a small object store, no dashboard,
no usage stats; token authentication when given a token, TLS when given certificates, and on the
head a Ray Client server on a free loopback port) in a temp folder of its own, so that the test
can find a node's processes (the folder is on their command lines; actors are children of the
node's raylet), kill one node with SIGKILL as a machine that dies, and stop everything it
started, by process id, in teardown.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.harness import REPO
from tests.support.peers import free_port, wait_for_port
from tests.support.pki import issue, make_ca

#: Ray's smallest object store (it refuses less): enough for the tests' series of a few MB.
OBJECT_STORE_BYTES = 80 * 2**20


@dataclass(frozen=True)
class RayTls:
    """The cluster's CA and one certificate it issued (for 127.0.0.1), which every Ray process
    of the test presents, as README "Running jobs on a Ray cluster" sets up TLS."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, folder: Path) -> RayTls:
        """Ray's gRPC clients check the server's certificate against this machine's own address
        as Ray finds it (that of the default route), whatever ``--node-ip-address`` says: the
        certificate names it too (nothing listens there for it)."""
        from ray._common.network_utils import node_ip_address_from_perspective
        ca = make_ca(folder, "ray-ca")
        cert, key = issue(folder, ca, "ray-node", ips=(node_ip_address_from_perspective(),))
        return cls(ca[0], cert, key)

    def env(self) -> dict[str, str]:
        return {"RAY_USE_TLS": "1", "RAY_TLS_CA_CERT": str(self.ca), "RAY_TLS_SERVER_CERT": str(self.cert),
                "RAY_TLS_SERVER_KEY": str(self.key)}

    def settings(self) -> dict[str, str]:
        """The node's ``[workers.ray]`` keys for these files."""
        return {"tls_ca_cert": str(self.ca), "tls_cert": str(self.cert), "tls_key": str(self.key)}


def ray_env(token_file: Path | None = None, tls: RayTls | None = None) -> dict[str, str]:
    """The environment of ``ray start``; with ``token_file``, Ray's token authentication (the
    variables README "Running jobs on a Ray cluster" shows), so only holders of it may connect;
    with ``tls``, TLS between every process of the cluster."""
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)} if token_file else {}
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_DISABLE_USAGE_STATS": "1", **auth, **(tls.env() if tls else {})}


def has_ray_client() -> bool:
    """Whether Ray Client (``pip install 'ray[client]'``: grpcio) is installed; ``ray start
    --head`` then starts its server, on port 10001 unless told another."""
    return importlib.util.find_spec("grpc") is not None


class RayCluster:
    def __init__(self, token_file: Path | None = None, tls: RayTls | None = None) -> None:
        self.port = free_port()
        #: the head's Ray Client server (``ray://127.0.0.1:client_port``), where Ray Client is installed
        self.client_port = free_port() if has_ray_client() else None
        self.token_file = token_file
        self.tls = tls
        #: a fresh folder (short: Ray's socket paths live in it) for each start of a node, so
        #: that a restart never meets the sockets and session files its killed predecessor left
        self.head_dirs: list[Path] = []
        self.node_dirs: list[Path] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ray_start(self, *args: str) -> None:
        proc = subprocess.run(
            [shutil.which("ray") or "ray", "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
             "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats", *args],
            capture_output=True, text=True, env=ray_env(self.token_file, self.tls), timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    def start_head(self) -> RayCluster:
        self.head_dirs.append(Path(tempfile.mkdtemp(prefix="rn-rayh-", dir="/tmp")))
        client = ["--ray-client-server-port", str(self.client_port)] if self.client_port else []
        self._ray_start("--head", "--port", str(self.port), "--include-dashboard=false",
                        "--temp-dir", str(self.head_dirs[-1]), *client)
        wait_for_port(self.port, timeout=60)
        return self

    def start_second_node(self) -> RayCluster:
        self.node_dirs.append(Path(tempfile.mkdtemp(prefix="rn-rayn-", dir="/tmp")))
        self._ray_start("--address", self.address, "--temp-dir", str(self.node_dirs[-1]))
        return self

    def kill_head(self) -> None:
        for folder in self.head_dirs:
            kill_tree(str(folder))

    def kill_second_node(self) -> None:
        """SIGKILL the second node's raylet, its workers (the actors on it) and its helpers."""
        for folder in self.node_dirs:
            kill_tree(str(folder))

    def running_tasks(self, node: str = "") -> list[int]:
        """Pids of actor processes running a task now (Ray titles them ``ray::Class.method``), on
        every node or on one (``head`` or ``second``)."""
        folders = {"head": self.head_dirs, "second": self.node_dirs, "": [*self.head_dirs, *self.node_dirs]}
        pids = set().union(*(tree_of(str(folder)) for folder in folders[node]))
        return [pid for pid in pids if command_line(pid).startswith("ray::PipelineActor.run")]

    def actors(self) -> list[int]:
        """Pids of the pipeline actors alive on the cluster, busy or idle."""
        pids = set().union(*(tree_of(str(folder)) for folder in [*self.head_dirs, *self.node_dirs]))
        return [pid for pid in pids if command_line(pid).startswith("ray::PipelineActor")]

    def stop(self) -> None:
        self.kill_second_node()
        self.kill_head()
        for folder in [*self.head_dirs, *self.node_dirs]:
            shutil.rmtree(folder, ignore_errors=True)


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    """The parent's pid; -1 for a process gone or dead (a zombie waiting to be reaped)."""
    try:
        state, parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        return -1 if state == "Z" else int(parent)
    except (OSError, IndexError, ValueError):
        return -1


def tree_of(tag: str) -> set[int]:
    """Processes whose command line names ``tag`` (a node's temp folder), and their descendants."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    parents = {pid: _parent(pid) for pid in pids}
    tree = {pid for pid in pids if parents[pid] != -1 and tag in command_line(pid)}
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree and parent != -1} - tree
        tree |= children
        grew = bool(children)
    return tree


def kill_tree(tag: str, timeout: float = 15.0) -> None:
    """SIGKILL the processes of ``tag`` and wait until they are gone (a dying raylet may still
    start a worker: sweep until nothing is left)."""
    deadline = time.monotonic() + timeout
    while pids := tree_of(tag):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray processes {sorted(pids)} of {tag} outlived SIGKILL")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)
