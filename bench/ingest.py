"""Ingest speed: radnode vs dcmtk storescp vs Orthanc, receiving the same CT from dcmtk storescu.

A 300-slice 512x512 CT (real slices of ../shared/data/ct-chest/cptac-luad-C3N-00247, repeated
with new UIDs) is sent over one association, then split over 4 concurrent storescu processes.
Every dcmtk process runs with TCP_NODELAY=1 (without it dcmtk stalls on Nagle at ~16 img/s).
radnode runs with its durable writes (fsync before the ack) on; storescp and Orthanc as shipped.

    python3 bench/ingest.py [--slices 300] [--receivers 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ct_series import repeated_series  # noqa: E402
from node.spool import Spool  # noqa: E402
from tests.harness import NodeProcess, node_config  # noqa: E402
from tests.peers import Orthanc, dcmtk_bin, dcmtk_env, free_port, wait_for_port  # noqa: E402

def send(port: int, aet: str, groups: list[list[Path]]) -> float:
    """Seconds for all groups to be stored, one storescu process (association) per group."""
    started = time.perf_counter()
    procs = [subprocess.Popen([dcmtk_bin("storescu"), "-aec", aet, "127.0.0.1", str(port), *map(str, g)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dcmtk_env())
             for g in groups]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - started


def split(paths: list[Path], parts: int) -> list[list[Path]]:
    return [paths[i::parts] for i in range(parts)]


def measure(name: str, port: int, aet: str, paths: list[Path]) -> dict[str, float]:
    send(port, aet, [paths[:10]])  # warm-up: first association, caches
    one = len(paths) / send(port, aet, [paths])
    four = len(paths) / send(port, aet, split(paths, 4))
    print(f"{name:10s} 1 association: {one:7.1f} img/s   4 associations: {four:7.1f} img/s", flush=True)
    return {"one": one, "four": four}


def durable_write_seconds(folder: Path, sample: Path, count: int = 60) -> float:
    """Median seconds of the spool's durable write (write, fsync, rename, fsync the folder) of
    one image on this disk: the floor under every acknowledgement of one association."""
    spool = Spool(folder)
    data = sample.read_bytes()
    times = []
    for i in range(count):
        started = time.perf_counter()
        spool.write(spool.instance_path("1.2", "1.2.3", f"1.2.3.{i}"), data)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--receivers", type=int, default=2, help="radnode receiver processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "series").mkdir()
        paths = repeated_series(tmp / "series", args.slices)
        results = {}

        (tmp / "radnode").mkdir()
        node = NodeProcess(node_config(tmp / "radnode", node={"receivers": args.receivers},
                                       completion={"settle_seconds": 3600, "quiet_seconds": 3600}),
                           tmp / "radnode").start()
        try:
            results["radnode"] = measure("radnode", node.port, "RADNODE", paths)
        finally:
            node.stop()

        port = free_port()
        (tmp / "storescp").mkdir()
        scp = subprocess.Popen([dcmtk_bin("storescp"), "--output-directory", str(tmp / "storescp"), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dcmtk_env())
        wait_for_port(port)
        try:
            results["storescp"] = measure("storescp", port, "STORESCP", paths)
        finally:
            scp.terminate()
            scp.wait()

        orthanc = Orthanc(tmp / "orthanc").start()
        try:
            results["orthanc"] = measure("orthanc", orthanc.dicom_port, orthanc.aet, paths)
        finally:
            orthanc.stop()

        flush = durable_write_seconds(tmp / "flush", paths[0])

    ours = results["radnode"]
    per_image = 1 / results["storescp"]["one"]
    print(f"spool durable write of one image on this disk: {flush * 1000:.2f} ms (median); storescp "
          f"takes {per_image * 1000:.2f} ms per image in all, so one association of radnode is bounded near "
          f"{1 / (per_image + flush):.0f} img/s here ({per_image / (per_image + flush):.2f}x storescp)")
    print(f"radnode/storescp: 1 association {ours['one'] / results['storescp']['one']:.2f}x, "
          f"4 associations {ours['four'] / results['storescp']['four']:.2f}x")
    print(f"radnode/orthanc:  1 association {ours['one'] / results['orthanc']['one']:.2f}x, "
          f"4 associations {ours['four'] / results['orthanc']['four']:.2f}x")


if __name__ == "__main__":
    main()
