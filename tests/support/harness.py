"""Running a real ``radnode serve`` in the tests: config in a temp folder, process, index."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.index.store import Index
from tests.support.peers import Orthanc, free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_toml(data: dict[str, Any], path: Path) -> Path:
    """A small TOML writer (tomllib only reads): sections, arrays of tables, inline tables."""
    lines: list[str] = []

    def section(header: str, body: dict[str, Any]) -> None:
        lines.append(header)
        lines.extend(f"{k} = {toml_value(v)}" for k, v in body.items())
        lines.append("")

    for key, value in data.items():
        if isinstance(value, list):
            for item in value:
                section(f"[[{key}]]", item)
        elif key == "pipelines":
            for name, body in value.items():
                section(f"[pipelines.{name}]", body)
        else:
            section(f"[{key}]", value)
    path.write_text("\n".join(lines))
    tomllib.loads(path.read_text())  # the writer must produce what the node will read
    return path


def node_config(tmp: Path, *, routes: list[dict] | None = None, destinations: list[dict] | None = None,
                pipelines: dict | None = None, **sections: dict) -> dict[str, Any]:
    port = free_port()
    config: dict[str, Any] = {
        "node": {"ae_title": "RADNODE", "host": "127.0.0.1", "port": port, "spool": str(tmp / "spool"),
                 "min_free_disk_mb": 1, "receivers": 1},
        "completion": {"settle_seconds": 1.0, "quiet_seconds": 20.0},
        "delivery": {"backoff_seconds": 0.5, "backoff_max_seconds": 2.0, "max_attempts": 20},
        "monitoring": {"host": "127.0.0.1", "port": free_port()},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    if destinations:
        config["destinations"] = destinations
    if routes:
        config["routes"] = routes
    if pipelines:
        config["pipelines"] = pipelines
    return config


def threshold_route(name: str = "threshold", **extra: Any) -> dict[str, Any]:
    return {"name": name, "pipeline": "hu-threshold", "destinations": ["pacs"],
            "match": {"Modality": "CT"}, **extra}


def threshold_pipeline(**options: Any) -> dict[str, Any]:
    """The tests' threshold pipeline as ``hu-threshold`` (series routes) and ``hu-threshold-study``."""
    return {"hu-threshold": {"entry": "tests.support.hu_threshold:HUThreshold", "options": options},
            "hu-threshold-study": {"entry": "tests.support.hu_threshold:StudyThreshold", "options": options}}


class NodeProcess:
    """``radnode serve`` as a child process with its own config and spool, running the code of
    ``code`` (this checkout by default; a bench's ``--baseline`` gives another)."""

    def __init__(self, config: dict[str, Any], workdir: Path, code: Path = REPO) -> None:
        self.config = config
        self.code = code
        self.workdir = workdir
        self.config_path = write_toml(config, workdir / "config.toml")
        self.port: int = config["node"]["port"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "node.log"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.code)}

    def start(self) -> NodeProcess:
        return self.launch().wait_started()

    def launch(self) -> NodeProcess:
        """Start ``radnode serve`` without waiting for it (several nodes start at once)."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node.operate.cli", "serve", "--config", str(self.config_path)],
                stdout=log, stderr=log, env=self.env, cwd=self.workdir, start_new_session=True,
            )
        return self

    def wait_started(self) -> NodeProcess:
        """Return once the node takes associations; raise with its log if it exited."""
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"radnode serve exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            try:
                for port in (self.port, self.stow_port):
                    if port is not None:
                        wait_for_port(port, timeout=0.5)
                return self
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    @property
    def stow_port(self) -> int | None:
        """The STOW-RS receiver's port, when ``[dicomweb] port`` is set."""
        return self.config.get("dicomweb", {}).get("port")

    def stop(self, timeout: float = 60) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL the supervisor, as a crash would; its children die with it (PDEATHSIG)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        time.sleep(0.5)

    def kill_group(self) -> None:
        """SIGKILL every process of the node at once (supervisor, receivers, workers), as a power
        loss or the OOM killer taking the whole service would; returns when all are gone."""
        assert self.proc is not None
        group = self.proc.pid  # start_new_session: the supervisor leads its own process group
        os.killpg(group, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        wait_until(lambda: not _group_alive(group), 10, 0.02, "the node's processes gone after SIGKILL")

    def index(self) -> Index:
        return Index(Path(self.config["node"]["spool"]) / "index.sqlite")

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "node.operate.cli", *args, "--config", str(self.config_path)],
            capture_output=True, text=True, env=self.env, timeout=timeout,
        )

    def http(self, path: str) -> tuple[int, str]:
        """GET from the node's monitoring endpoint: (HTTP status, body)."""
        monitoring = self.config["monitoring"]
        url = f"http://{monitoring['host']}:{monitoring['port']}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_node(tmp: Path, orthanc: Orthanc | None = None, *, routes: list[dict] | None = None,
               pipelines: dict | None = None, **sections: dict) -> NodeProcess:
    """A started node (``sections`` as in ``node_config``). With ``orthanc``, it sends its results
    there as "pacs", by the threshold route and pipeline unless ``routes``/``pipelines`` are given;
    without, it only receives."""
    if orthanc is not None:
        routes = [threshold_route()] if routes is None else routes
        pipelines = threshold_pipeline() if pipelines is None else pipelines
    config = node_config(tmp, destinations=[orthanc.destination()] if orthanc else None, routes=routes,
                         pipelines=pipelines, **sections)
    return NodeProcess(config, tmp).start()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.2,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")
