"""Fixtures shared by the tests, and the marks that split them into tiers.

Markers (registered in pyproject.toml): ``data`` (reads the shared data folder), ``peers`` (starts
a real peer: dcmtk, Orthanc, dciodvfy, Ray, Chromium), ``slow`` (takes more than a few seconds on
2 cores). A test that asks for one of the fixtures in ``DATA_FIXTURES`` or ``PEER_FIXTURES`` gets
its mark here, so nobody has to remember it; the others carry theirs in their module's
``pytestmark`` or on the test. ``python3 -m pytest -m "not slow"`` is the fast loop, ``-m "not
peers"`` / ``-m "not data"`` run on a machine without the peers or without the data folder.

The marks are checked as the tests run: an audit hook (``sys.addaudithook``) sees every file the
test process opens or lists and every program it starts, and a test that read the data folder or
started a peer without carrying the mark fails at teardown, naming the mark to add. A forgotten
mark is found by the next run that includes the test, not on the machine that lacks the data.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.cpu_share import share_cores

share_cores()  # before anything below imports torch or numpy

from tests.support.peers import Orthanc  # noqa: E402
from tests.support.pki import Pki, make_pki  # noqa: E402
from training.data_folder import DATA_ROOT  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = DATA_ROOT

#: Fixtures that hand a test the shared data folder: a test asking for one (directly or through
#: another fixture) is marked ``data``.
DATA_FIXTURES = frozenset({"data_dir"})
#: Fixtures that start a real peer (Orthanc here, the Ray cluster of test_ray_cluster.py): a test
#: asking for one is marked ``peers``, and ``slow`` too: starting and stopping Orthanc alone takes
#: 3-5 s on 2 cores (measured: 3.5 s to stop it after test_writers.py), a Ray cluster far longer.
PEER_FIXTURES = frozenset({"orthanc", "cluster"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the fixtures it uses, before ``-m`` deselects by marks (tryfirst: this
    runs ahead of pytest's own deselection). A ``long`` test is ``slow`` as well: a ``-m`` on the
    command line replaces the ``-m 'not long'`` of addopts, and the fast loop must still leave it out."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & DATA_FIXTURES:
            item.add_marker(pytest.mark.data)
        if fixtures & PEER_FIXTURES:
            item.add_marker(pytest.mark.peers)
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("long") is not None:
            item.add_marker(pytest.mark.slow)


#: Programs whose start makes a test a ``peers`` test, besides dcmtk's and dicom3tools' own
#: (``is_peer_program``): Orthanc, Ray's command, Chromium and the driver Selenium starts it with.
PEER_PROGRAMS = frozenset({"Orthanc", "ray", "chromium", "chromedriver"})
#: The audit events by which a test reaches the data folder or starts a program: open(),
#: os.listdir/os.scandir (Path.iterdir and Path.glob use them) and subprocess.Popen.
WATCHED_EVENTS = frozenset({"open", "os.listdir", "os.scandir", "subprocess.Popen"})


def is_peer_program(program: str) -> bool:
    """Whether starting ``program`` starts a real peer: dcmtk's network tools end in scu/scp
    (storescu, echoscu, storescp), its file tools carry "dcm" (dcmcjpeg, img2dcm), dicom3tools'
    begin with "dc" (dciodvfy)."""
    name = os.path.basename(program)
    return name in PEER_PROGRAMS or name.startswith("dc") or "dcm" in name or name.endswith(("scu", "scp"))


@dataclass
class MarkWatch:
    """What the test now running reached that its marks must declare: mark -> first evidence."""

    data_prefixes: tuple[str, ...]
    running: bool = False
    reached: dict[str, str] = field(default_factory=dict)

    def in_data(self, path: Any) -> bool:
        if path is None or isinstance(path, int):
            return False
        return os.path.join(os.path.abspath(os.fsdecode(path)), "").startswith(self.data_prefixes)

    def started(self, executable: Any, args: Any) -> None:
        argv = [os.fsdecode(a) for a in args] if isinstance(args, (list, tuple)) else [os.fsdecode(args)]
        program = os.fsdecode(executable) if executable is not None else argv[0].split()[0]
        if is_peer_program(program):
            self.reached.setdefault("peers", f"it started {program}")
        in_data = [arg for arg in argv if any(prefix in arg for prefix in self.data_prefixes)]
        if in_data:
            self.reached.setdefault("data", f"it started {os.path.basename(program)} on {in_data[0]}")

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        """The audit hook. It never raises: an exception here would fail the call it audits."""
        if not self.running or event not in WATCHED_EVENTS:
            return
        try:
            if event == "subprocess.Popen":
                self.started(args[0], args[1])
            elif "data" not in self.reached and self.in_data(args[0]):
                self.reached["data"] = f"it read {os.fsdecode(args[0])}"
        except Exception:  # noqa: BLE001 (see the docstring)
            pass

    def missing(self, item: pytest.Item) -> list[str]:
        """One line for each mark ``item`` needs and lacks, saying how to add it."""
        return [f"{item.nodeid} is not marked `{mark}` but {why}: add pytest.mark.{mark} to the module's "
                f"pytestmark (or to the test), so that -m 'not {mark}' leaves it out"
                for mark, why in self.reached.items() if item.get_closest_marker(mark) is None]


WATCH = MarkWatch(tuple({os.path.join(str(DATA), ""), os.path.join(os.path.realpath(DATA), "")}))
sys.addaudithook(WATCH.audit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """Watch the test from its setup (fixtures read data too) to its teardown."""
    WATCH.reached.clear()
    WATCH.running = True
    try:
        yield
    finally:
        WATCH.running = False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Fail a test at teardown when it reached the data folder or a peer without the mark."""
    outcome = yield
    report = outcome.get_result()
    if call.when == "teardown" and report.passed and (missing := WATCH.missing(item)):
        report.outcome = "failed"
        report.longrepr = "\n".join(missing)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"test data not found at {DATA}: the shared data folder must sit beside the repository (or set RADNODE_DATA)")
    return DATA


@pytest.fixture(scope="session")
def nnunet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the nnU-Net tests' folders are built once per session (``tests/support/nnunet_folder.py``):
    planning takes about 20 s, so every test that needs a folder shares these."""
    return tmp_path_factory.mktemp("nnunet")


@pytest.fixture
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield pacs
    pacs.kill()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates made for the module's tests with openssl (``tests.support.pki.make_pki``)."""
    return make_pki(tmp_path_factory.mktemp("pki"))
