"""STOW-RS ingest speed: radnode's STOW-RS receiver vs Orthanc's DICOMweb plugin, receiving the
same CT uploads, and vs radnode's own C-STORE receiver taking the same series from dcmtk storescu.

A ``--slices`` 512x512 CT (bench.ct_series: real slices repeated with new UIDs) is uploaded as one
STOW-RS request and as four concurrent requests of a quarter each, ``--repeat`` times (medians
printed); every upload is a series of its own UIDs, and the receivers take turns at each, so that
a shared machine that slows down for a while slows all of them alike. The client streams the
multipart body from the files (http.client, no re-encoding), so the rates are the receivers'.
radnode writes durably (fsync before the 200), Orthanc as shipped.

    python3 bench/stow_ingest.py [--slices 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ct_series import repeated_series  # noqa: E402
from bench.ingest import send, split  # noqa: E402
from tests.support.harness import NodeProcess, node_config  # noqa: E402
from tests.support.peers import Orthanc, free_port  # noqa: E402

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class OrthancDicomweb(Orthanc):
    """The tests' Orthanc with its DICOMweb plugin at /dicom-web/."""

    def _write_config(self) -> Path:
        path = super()._write_config()
        config = json.loads(path.read_text())
        config.update(Plugins=[DICOMWEB_PLUGIN], DicomWeb={"Enable": True, "Root": "/dicom-web/"})
        path.write_text(json.dumps(config))
        return path


def upload(port: int, path: str, files: list[Path]) -> float:
    """Seconds for one STOW-RS request of ``files`` to be answered (all stored, or an error)."""
    boundary = uuid.uuid4().hex
    heads = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() for _ in files]
    tail = f"--{boundary}--\r\n".encode()
    length = sum(len(h) + f.stat().st_size + 2 for h, f in zip(heads, files)) + len(tail)

    def body() -> Iterator[bytes]:
        for head, file in zip(heads, files):
            yield head + file.read_bytes() + b"\r\n"
        yield tail

    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", path, body=body(), headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Content-Length": str(length), "Accept": "application/dicom+json"})
    response = connection.getresponse()
    answer = response.read()
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"STOW-RS to port {port} answered {response.status}: {answer[:300]!r}")
    return time.perf_counter() - started


def concurrent(port: int, path: str, groups: list[list[Path]]) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(len(groups)) as pool:
        list(pool.map(lambda group: upload(port, path, group), groups))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stow-bench-") as scratch:
        work = Path(scratch)
        (work / "node").mkdir()
        (work / "orthanc").mkdir()
        node = NodeProcess(node_config(work / "node", dicomweb={"port": free_port()},
                                       completion={"settle_seconds": 600.0, "quiet_seconds": 600.0}),
                           work / "node").start()
        orthanc = OrthancDicomweb(work / "orthanc").start()
        assert node.stow_port is not None
        targets = {"radnode": (node.stow_port, "/studies"), "orthanc": (orthanc.http_port, "/dicom-web/studies")}
        try:
            warm = repeated_series(work / "warm", 10)
            for port, path in targets.values():
                upload(port, path, warm)
            send(node.port, "RADNODE", [warm])
            rates: dict[str, dict[str, list[float]]] = {name: {"one": [], "four": []} for name in
                                                        [*targets, "radnode C-STORE"]}
            for turn in range(args.repeat):
                names = list(targets)[turn % 2:] + list(targets)[:turn % 2]
                for name in names:
                    series = repeated_series(work / f"{name}-{turn}-one", args.slices)
                    rates[name]["one"].append(len(series) / upload(*targets[name], series))
                    series = repeated_series(work / f"{name}-{turn}-four", args.slices)
                    rates[name]["four"].append(len(series) / concurrent(*targets[name], split(series, 4)))
                series = repeated_series(work / f"dimse-{turn}-one", args.slices)
                rates["radnode C-STORE"]["one"].append(len(series) / send(node.port, "RADNODE", [series]))
                series = repeated_series(work / f"dimse-{turn}-four", args.slices)
                rates["radnode C-STORE"]["four"].append(len(series) / send(node.port, "RADNODE", split(series, 4)))
        finally:
            node.stop()
            orthanc.stop()
    medians = {name: {k: statistics.median(v) for k, v in by.items()} for name, by in rates.items()}
    print(f"{args.slices} slices, median of {args.repeat} (img/s; one request or association / four at once)")
    for name, by in medians.items():
        print(f"  {name:16s} {by['one']:7.1f} / {by['four']:7.1f}   ({' '.join(f'{v:.0f}' for v in rates[name]['one'])}"
              f" / {' '.join(f'{v:.0f}' for v in rates[name]['four'])})")
    for kind in ("one", "four"):
        print(f"  {kind}: radnode STOW-RS / Orthanc STOW-RS = {medians['radnode'][kind] / medians['orthanc'][kind]:.2f}x"
              f"   radnode STOW-RS / radnode C-STORE = "
              f"{medians['radnode'][kind] / medians['radnode C-STORE'][kind]:.2f}x")


if __name__ == "__main__":
    main()
