"""Real DICOM peers for the tests: dcmtk tools, Orthanc as the PACS, dciodvfy and Pixelmed as validators.

Everything listens on loopback ports picked free at start, so tests can run side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

#: dcmtk's Debian binaries. pynetdicom installs Python scripts with the same names (storescu,
#: echoscu, ...) that can shadow them on PATH, so the tests never resolve them through PATH.
DCMTK_DIR = Path("/usr/bin")


def dcmtk_bin(name: str) -> str:
    """Path of a dcmtk tool; fails loudly if dcmtk is not installed (apt-get install dcmtk)."""
    path = DCMTK_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: install the Debian package dcmtk")
    return str(path)


def dcmtk_env() -> dict[str, str]:
    """dcmtk (and Orthanc, built on it) stalls on Nagle's algorithm at about 16-20 images/s
    unless told to set TCP_NODELAY."""
    return {**os.environ, "TCP_NODELAY": "1"}


#: Every port ``free_port`` handed out in this test run.
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on and that this test run has not handed out before.

    Why the second condition: the OS may give a just-released port again, and once it gave a
    node's DICOM port and its monitoring port the same number; storescu then reached the metrics
    server and failed with "DUL network read timeout".
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def storescu(
    port: int,
    paths: list[Path] | list[str],
    *,
    called_aet: str = "RADNODE",
    calling_aet: str = "STORESCU",
    propose: tuple[str, ...] = ("--required",),
    extra: tuple[str, ...] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Send files with dcmtk storescu over one association.

    By default storescu proposes each file's own SOP class and transfer syntax (--required);
    dcmtk has no JPEG 2000 codec, so J2K files need ``propose=("-xv",)`` instead.
    """
    cmd = [
        dcmtk_bin("storescu"),
        *propose,
        "--aetitle", calling_aet,
        "--call", called_aet,
        *extra,
        "127.0.0.1", str(port),
        *[str(p) for p in paths],
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=dcmtk_env(), timeout=timeout)


def send(port: int, paths: list[Path] | list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    """``storescu`` that must succeed: the sending step of a test, not the thing tested."""
    sent = storescu(port, paths, **options)
    assert sent.returncode == 0, sent.stderr[-2000:]
    return sent


class BitPreservingStorescp:
    """dcmtk storescp writing exactly the bytes it received (-B): the reference for what an
    SCU really put on the wire, which can differ from the file the SCU read."""

    def __init__(self, folder: Path, prefer: str = "+x=", max_pdu: int = 16384) -> None:
        self.folder = folder
        self.prefer = prefer  # storescp accepts one compressed syntax at a time, e.g. +xt for JPEG-LS
        self.max_pdu = max_pdu  # the largest PDU it accepts: 4096 to 131072 bytes
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BitPreservingStorescp:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [dcmtk_bin("storescp"), "--bit-preserving", self.prefer, "--output-directory", str(self.folder),
             "--max-pdu", str(self.max_pdu), "--aetitle", "RADNODE", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dcmtk_env(),
        )
        wait_for_port(self.port)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        self._proc.wait(timeout=10)


@dataclass
class DciodvfyReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def dciodvfy(path: Path | str) -> DciodvfyReport:
    """Validate one object against its IOD with dicom3tools' dciodvfy."""
    exe = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
    proc = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=120)
    report = DciodvfyReport()
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("Error"):
            report.errors.append(line)
        elif line.startswith("Warning"):
            report.warnings.append(line)
    return report


#: Debian's orthanc-dicomweb: QIDO-RS, STOW-RS and WADO-RS under ``/dicom-web/``
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
#: QIDO-RS, STOW-RS and WADO-RS at /dicom-web/, WADO-URI at /wado, full metadata (what OHIF reads)
_DICOMWEB = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
             "StudiesMetadata": "Full", "SeriesMetadata": "Full"}

#: Pixelmed's validators, as Debian's pixelmed-apps installs them. JDK 17 caps XPath expressions at
#: 10,000 operators, which their compiled stylesheets exceed (JAXP0801003, nothing validated): the
#: caps are lifted. The C1 compiler alone starts them about a third faster.
PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
_PIXELMED_JAVA = ("java", "-XX:TieredStopAtLevel=1", "-Djdk.xml.xpathExprGrpLimit=0",
                  "-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0", "-cp", str(PIXELMED_JAR))
_SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: Pixelmed (2022) asks for General Series Laterality whenever no Image or Frame Laterality is
#: present; PS3.3 C.7.3.1 asks for it only for a paired body part, and dciodvfy rejects it on a SEG
#: without one. Kept as a warning, so that the two validators do not ask for opposite things.
PIXELMED_DISPUTED = ("Error: GeneralSeriesModule/Laterality/: : Missing conditional attribute",)


def pixelmed(path: Path | str) -> DciodvfyReport:
    """Pixelmed's DicomInstanceValidator on any object and its DicomSRValidator (TID and IOD) on
    SR and KOS objects: the validators IHE AI Results names. A validator that fails to run is an
    error, so that a broken Java set-up never passes as "0 errors"."""
    if not PIXELMED_JAR.exists():
        raise FileNotFoundError(f"{PIXELMED_JAR} not found: install the Debian package pixelmed-apps")
    validators = ["DicomInstanceValidator"]
    if str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID).startswith(_SR_CLASS_PREFIX):
        validators.append("DicomSRValidator")
    report = DciodvfyReport()
    for validator in validators:
        proc = subprocess.run([*_PIXELMED_JAVA, f"com.pixelmed.validate.{validator}", str(path)],
                              capture_output=True, text=True, timeout=300)
        output = proc.stdout + proc.stderr
        if proc.returncode != 0 or "Exception" in output:
            report.errors.append(f"{validator} did not run (exit {proc.returncode}): {output[-500:]}")
        for line in output.splitlines():
            if line.startswith("Error") and not line.startswith(PIXELMED_DISPUTED):
                report.errors.append(f"{validator}: {line}")
            elif line.startswith(("Warning", "Error")):
                report.warnings.append(f"{validator}: {line}")
    return report


def conformance(path: Path | str) -> DciodvfyReport:
    """dciodvfy and Pixelmed on one result object, their findings together."""
    checked, second = dciodvfy(path), pixelmed(path)
    checked.errors += second.errors
    checked.warnings += second.warnings
    return checked


class Orthanc:
    """An Orthanc PACS on free loopback ports with a throw-away storage folder. ``modalities``:
    Orthanc's DicomModalities (name -> [AE title, host, port]), the peers it may C-MOVE to;
    ``options``: more of Orthanc's configuration (``RegisteredUsers``, ``SslEnabled``,
    ``LuaScripts``...); ``dicomweb=True`` loads its DICOMweb plugin (``dicomweb_url``)."""

    def __init__(self, workdir: Path, aet: str = "ORTHANC", modalities: dict[str, list] | None = None,
                 dicomweb: bool = False, **options: Any) -> None:
        self.workdir = workdir
        self.aet = aet
        self.modalities = modalities or {}
        self.options = {"Plugins": [DICOMWEB_PLUGIN], "DicomWeb": _DICOMWEB, **options} if dicomweb else options
        self.dicom_port = free_port()
        self.http_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    def destination(self, name: str = "pacs", **extra: Any) -> dict[str, Any]:
        """This Orthanc as a node's ``[[destinations]]`` entry (``extra``: formats, tls...)."""
        return {"name": name, "ae_title": self.aet, "host": "127.0.0.1", "port": self.dicom_port, **extra}

    @property
    def url(self) -> str:
        scheme = "https" if self.options.get("SslEnabled") else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def _write_config(self) -> Path:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "radnode-test-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True,
            "Plugins": [],
            "StableAge": 1,
            "SaveJobs": False,
            "DicomModalities": self.modalities,
            **self.options,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        return path

    def start(self) -> Orthanc:
        exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        config = self._write_config()
        log = open(self.workdir / "orthanc.log", "ab")
        # Orthanc's DICOM layer is dcmtk's: without TCP_NODELAY it stalls on Nagle at ~20 img/s
        self._proc = subprocess.Popen([exe, str(config)], stdout=log, stderr=log, env=dcmtk_env())
        wait_for_port(self.dicom_port)
        wait_for_port(self.http_port)
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Down at once: mid-request for an outage (SIGTERM lets Orthanc finish the requests of an
        open keep-alive connection first), or a PACS a test is done with (``stop`` takes 2.5 s:
        Orthanc's WebDAV, DICOM and jobs threads each wait out a poll)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return json.loads(resp.read())

    def get_bytes(self, path: str) -> bytes:
        """A REST answer as it came (a rendered PNG of ``/instances/{id}/preview``)."""
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return bytes(resp.read())

    def result_files(self, study_uid: str, folder: Path, modalities: set[str], timeout: float = 60.0) -> dict[str, Path]:
        """Wait until the study holds an instance of every one of ``modalities`` (results arrive
        one C-STORE at a time), then download them: {modality: file} (the last of each)."""
        def arrived(pacs: Orthanc) -> list[dict] | None:
            found = pacs.instances_of_study(study_uid)
            have = {pacs.get(f"/instances/{i['ID']}/tags?simplify").get("Modality") for i in found}  # type: ignore[union-attr]
            return found if modalities <= have else None

        files = {}
        for instance in self.wait_for(arrived, timeout=timeout):
            path = folder / f"{instance['ID']}.dcm"
            path.write_bytes(self.get_bytes(f"/instances/{instance['ID']}/file"))
            files[str(pydicom.dcmread(path, stop_before_pixels=True).Modality)] = path
        return files

    def instances_of_study(self, study_uid: str) -> list[dict]:
        """Orthanc's instance records (with MainDicomTags) of one StudyInstanceUID."""
        out: list[dict] = []
        for study_id in self.get("/studies"):  # type: ignore[union-attr]
            study = self.get(f"/studies/{study_id}")
            if study["MainDicomTags"].get("StudyInstanceUID") != study_uid:  # type: ignore[index]
                continue
            out.extend(self.get(f"/studies/{study_id}/instances"))  # type: ignore[arg-type]
        return out

    def wait_for(self, predicate, timeout: float = 60.0, interval: float = 0.25):
        """Poll the PACS until ``predicate(self)`` returns something truthy, and return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate(self)
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"Orthanc did not reach the expected state within {timeout} s")
