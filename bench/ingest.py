"""Ingest speed: radnode vs dcmtk storescp vs Orthanc, receiving the same CT from dcmtk storescu;
and delivery speed: radnode's dispatcher vs dcmtk storescu, sending a derived series to Orthanc,
and the dispatcher's STOW-RS vs its C-STORE to the same Orthanc.

A 300-slice 512x512 CT (real slices of ../shared/data/ct-chest/cptac-luad-C3N-00247, repeated
with new UIDs) is sent over one association, then split over 4 concurrent storescu processes,
``--repeat`` times each (medians are printed); then the same series compressed with JPEG-LS
lossless (dcmtk dcmcjpls). Every send is a series of its own UIDs, the same series to every
receiver, so that every receiver stores every image it is sent: Orthanc, by default
(OverwriteInstances false), keeps the copy of an instance it already has. The three receivers
run side by side and take turns at each send, so that a shared machine that slows down for a
while slows all three alike. Every dcmtk-based
process (storescu, storescp, Orthanc) runs with TCP_NODELAY=1: without it dcmtk stalls on
Nagle's algorithm at ~16-20 img/s and a comparison means nothing. radnode runs with its
durable writes (fsync before the ack); storescp as shipped (no fsync), Orthanc as shipped.

The durable floor of one association is what storescp takes per image plus what the spool's
durable write of that image takes on this disk (measured here, in the same run): the fastest
radnode could be if its own work cost nothing beyond storescp's. Targets: one
association >= 0.85 of that floor and >= 2x Orthanc, four associations >= 2x Orthanc; the
dispatcher delivers a 300-slice derived series at >= 0.7x storescu's rate, and by STOW-RS to
Orthanc's DICOMweb plugin at >= 0.9x its own C-STORE rate to the same Orthanc.

    python3 bench/ingest.py [--slices 300] [--repeat 3] [--receivers 2] [--delivery-only]
                            [--stow-only] [--per-request 20] [--connections 4]
                            [--baseline CHECKOUT] [--receive-only]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ct_series import repeated_series  # noqa: E402
from node.config import Route, parse_config  # noqa: E402
from node.deliver.dispatcher import Dispatcher  # noqa: E402
from node.index.store import Index, ResultFile  # noqa: E402
from node.receive.spool import Spool  # noqa: E402
from node.route.router import job_spec  # noqa: E402
from tests.support.harness import NodeProcess, node_config, threshold_pipeline, threshold_route  # noqa: E402
from tests.support.peers import Orthanc, dcmtk_bin, dcmtk_env, free_port, wait_for_port  # noqa: E402

Rates = dict[str, float]


def send(port: int, aet: str, groups: list[list[Path]], propose: tuple[str, ...] = ()) -> float:
    """Seconds for all groups to be stored, one storescu process (association) per group;
    ``propose``: storescu's transfer syntax options (its default: uncompressed)."""
    started = time.perf_counter()
    procs = [subprocess.Popen([dcmtk_bin("storescu"), *propose, "-aec", aet, "127.0.0.1", str(port),
                               *map(str, g)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dcmtk_env())
             for g in groups]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - started


def split(paths: list[Path], parts: int) -> list[list[Path]]:
    return [paths[i::parts] for i in range(parts)]


@dataclass(frozen=True)
class Sends:
    """What every receiver is sent: a short warm-up, then a series of its own UIDs per send."""

    warm_up: list[Path]
    one: list[list[Path]]  # one series per send over one association
    four: list[list[Path]]  # one series per send split over four associations


def fresh_sends(folder: Path, slices: int, repeat: int) -> Sends:
    series = [repeated_series(folder / f"series-{i}", slices) for i in range(2 * repeat)]
    return Sends(repeated_series(folder / "warm-up", 10), series[:repeat], series[repeat:])


@dataclass(frozen=True)
class Peer:
    """A receiver under test: its name, DICOM port and AE title."""

    name: str
    port: int
    aet: str


def measure(peers: list[Peer], sends: Sends, propose: tuple[str, ...], flush_folder: Path,
            sample: Path) -> tuple[dict[str, Rates], float]:
    """Every peer on every send, interleaved (each round's sends go to the peers in turn, a
    different one first each round), so that a machine that slows down for a while slows all
    of them alike; the spool's durable write is timed in every round too. The page cache is
    written out after each send, untimed: a receiver that does not fsync (storescp, Orthanc as
    shipped) leaves 150 MB to the disk, which the next receiver in the turn would otherwise pay. Returns the median
    rates per peer and the median durable write (seconds)."""
    for peer in peers:
        send(peer.port, peer.aet, [sends.warm_up], propose)  # first association, caches
    one: dict[str, list[float]] = {peer.name: [] for peer in peers}
    four: dict[str, list[float]] = {peer.name: [] for peer in peers}
    flushes: list[float] = []
    for turn, (single, split_four) in enumerate(zip(sends.one, sends.four)):
        order = peers[turn % len(peers):] + peers[:turn % len(peers)]
        for peer in order:
            one[peer.name].append(len(single) / send(peer.port, peer.aet, [single], propose))
            os.sync()
        for peer in order:
            four[peer.name].append(len(split_four) / send(peer.port, peer.aet, split(split_four, 4), propose))
            os.sync()
        flushes += durable_write_times(flush_folder / str(turn), sample)
    rates = {}
    for peer in peers:
        rates[peer.name] = {"one": statistics.median(one[peer.name]), "four": statistics.median(four[peer.name])}
        print(f"  {peer.name:10s} 1 association: {rates[peer.name]['one']:7.1f} img/s   4 associations: "
              f"{rates[peer.name]['four']:7.1f} img/s   (median of {len(one[peer.name])}; "
              f"{_rates(one[peer.name])} / {_rates(four[peer.name])})", flush=True)
    return rates, statistics.median(flushes)


def _rates(values: list[float]) -> str:
    return " ".join(f"{v:.0f}" for v in values)


def durable_write_times(folder: Path, sample: Path, count: int = 20) -> list[float]:
    """Seconds of the spool's durable write (write, fsync, rename, fsync the folder) of one
    image on this disk, ``count`` times: the floor under every acknowledgement of one association."""
    spool = Spool(folder)
    data = sample.read_bytes()
    times = []
    for i in range(count):
        started = time.perf_counter()
        spool.write(spool.instance_path("1.2", "1.2.3", f"1.2.3.{i}"), data)
        times.append(time.perf_counter() - started)
    return times


def jpeg_ls(paths: list[Path], folder: Path) -> list[Path]:
    """The series compressed with JPEG-LS lossless by dcmtk's dcmcjpls (same UIDs)."""
    folder.mkdir()
    out = [folder / p.name for p in paths]

    def compress(pair: tuple[Path, Path]) -> None:
        subprocess.run([dcmtk_bin("dcmcjpls"), str(pair[0]), str(pair[1])], check=True, capture_output=True)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(compress, zip(paths, out)))
    return out


def jpeg_ls_sends(sends: Sends, folder: Path) -> Sends:
    folder.mkdir()
    return Sends(jpeg_ls(sends.warm_up, folder / "warm-up"),
                 [jpeg_ls(series, folder / f"one-{i}") for i, series in enumerate(sends.one)],
                 [jpeg_ls(series, folder / f"four-{i}") for i, series in enumerate(sends.four)])


def ingest(series: str, sends: Sends, tmp: Path, receivers: int, propose: tuple[str, ...] = (),
           baseline: Path | None = None) -> None:
    """Every receiver on the same sends, then the ratios the targets are stated in (module docstring);
    with ``baseline`` (another checkout), its radnode too, as a fourth receiver in the same turns."""
    paths = sends.one[0]
    print(f"{series}: {len(paths)} images, {sum(p.stat().st_size for p in paths) / len(paths) / 1024:.0f} KiB "
          "each on average", flush=True)
    (tmp / "radnode").mkdir()
    (tmp / "storescp").mkdir()
    with contextlib.ExitStack() as running:
        node = NodeProcess(node_config(tmp / "radnode", node={"receivers": receivers},
                                       completion={"settle_seconds": 3600, "quiet_seconds": 3600}),
                           tmp / "radnode").start()
        running.callback(node.stop)
        port = free_port()
        scp = subprocess.Popen([dcmtk_bin("storescp"), "+xa", "--output-directory", str(tmp / "storescp"),
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dcmtk_env())
        running.callback(scp.wait)
        running.callback(scp.terminate)
        wait_for_port(port)
        orthanc = Orthanc(tmp / "orthanc").start()
        running.callback(orthanc.stop)
        peers = [Peer("radnode", node.port, "RADNODE"), Peer("storescp", port, "STORESCP"),
                 Peer("orthanc", orthanc.dicom_port, orthanc.aet)]
        if baseline is not None:
            (tmp / "baseline").mkdir()
            before = NodeProcess(node_config(tmp / "baseline", node={"receivers": receivers},
                                           completion={"settle_seconds": 3600, "quiet_seconds": 3600}),
                               tmp / "baseline", baseline.resolve()).start()
            running.callback(before.stop)
            peers.append(Peer("baseline", before.port, "RADNODE"))
        results, flush = measure(peers, sends, propose, tmp / "flush", paths[0])
    scp_rates, orthanc_rates = results["storescp"], results["orthanc"]
    floor = {k: 1 / (1 / scp_rates[k] + flush) for k in ("one", "four")}
    print(f"  spool durable write of one image here: {flush * 1000:.2f} ms (median); storescp takes "
          f"{1000 / scp_rates['one']:.2f} ms per image over one association, so the durable floor is "
          f"{floor['one']:.0f} img/s (1 association), {floor['four']:.0f} img/s (4)")
    for node_name in [name for name in ("radnode", "baseline") if name in results]:
        ours = results[node_name]
        for name, reference in (("storescp", scp_rates), ("orthanc", orthanc_rates), ("durable floor", floor)):
            print(f"  {node_name}/{name + ':':15s} 1 association {ours['one'] / reference['one']:5.2f}x   "
                  f"4 associations {ours['four'] / reference['four']:5.2f}x", flush=True)


def derived_series(paths: list[Path], folder: Path) -> list[Path]:
    """A derived copy of the series (ImageType DERIVED, new UIDs): what a pipeline delivers."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir()
    series_uid = generate_uid()
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / path.name)
        out.append(folder / path.name)
    return out


def c_store_to(orthanc: Orthanc) -> dict[str, object]:
    return {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}


def dispatcher_seconds(tmp: Path, destination: dict[str, object], files: list[Path]) -> tuple[float, float]:
    """Seconds for the dispatcher to deliver one finished job's ``files`` to ``destination``
    (a ``[[destinations]]`` table without its name), the job of the files' study, and the CPU
    seconds this process spent meanwhile (the dispatcher's threads only: nothing else runs)."""
    import pydicom

    spool = Spool(tmp / "spool")
    index = Index(spool.root / "index.sqlite")
    config = parse_config({"node": {"spool": str(spool.root)}, "destinations": [{"name": "pacs", **destination}],
                           "routes": [threshold_route()], "pipelines": threshold_pipeline()})
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    index.add_job(job_spec(Route.model_validate(threshold_route()), subject="1.2.3", study_uid=study,
                           generation=0, inputs={}))
    job = index.claim_job(None, 600)
    assert job is not None
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    # as the node's writers record them: the dispatcher does not open a file to choose its context
    results = [ResultFile(p, str(h.SOPInstanceUID), str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID))
               for p, h in zip(files, headers)]
    index.finish_job(job.id, results, f"{len(files)} objects", attempt=job.attempts)
    started, cpu = time.perf_counter(), time.process_time()
    sent = Dispatcher(config, index).tick()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    if sent != 1 or [d.state for d in index.deliveries()] != ["sent"]:
        raise RuntimeError(f"the dispatcher did not deliver: {index.deliveries()}")
    return seconds, cpu


@contextlib.contextmanager
def warmed_orthanc(tmp: Path, paths: list[Path], name: str, dicomweb: bool = False) -> Iterator[Orthanc]:
    """An Orthanc that has already stored 10 derived slices (its first images are slower)."""
    warm = derived_series(paths[:10], tmp / f"{name}-warm-up")
    orthanc = Orthanc(tmp / name, dicomweb=dicomweb).start()
    try:
        send(orthanc.dicom_port, orthanc.aet, [warm])
        yield orthanc
    finally:
        orthanc.stop()


def in_turns(rounds: int, first: str, second: str, rate: Callable[[str, int], float]) -> dict[str, list[float]]:
    """``rate(sender, turn)`` of two senders, ``rounds`` times, taking turns at going first
    (Orthanc slows as its index grows)."""
    rates: dict[str, list[float]] = {first: [], second: []}
    for turn in range(rounds):
        for sender in (first, second) if turn % 2 == 0 else (second, first):
            rates[sender].append(rate(sender, turn))
    return rates


def delivery(paths: list[Path], tmp: Path, rounds: int = 3) -> None:
    """The dispatcher and storescu each send a derived series (their own UIDs) to one Orthanc,
    ``rounds`` times, taking turns at going first; the medians are compared, and the
    dispatcher's own CPU time per image is printed beside them."""
    cpu_ms: list[float] = []
    with warmed_orthanc(tmp, paths, "orthanc-delivery") as orthanc:
        def rate(sender: str, turn: int) -> float:
            files = derived_series(paths, tmp / f"derived-{sender}-{turn}")
            if sender == "storescu":
                return len(paths) / send(orthanc.dicom_port, orthanc.aet, [files])
            seconds, cpu = dispatcher_seconds(tmp / f"dispatcher-{turn}", c_store_to(orthanc), files)
            cpu_ms.append(cpu / len(paths) * 1000)
            return len(paths) / seconds

        rates = in_turns(rounds, "storescu", "dispatcher", rate)
    storescu_rate, dispatcher_rate = statistics.median(rates["storescu"]), statistics.median(rates["dispatcher"])
    print(f"derived series of {len(paths)} slices to Orthanc, median of {rounds}: dcmtk storescu "
          f"{storescu_rate:.1f} img/s, radnode dispatcher {dispatcher_rate:.1f} img/s "
          f"({statistics.median(cpu_ms):.2f} ms CPU per image): dispatcher/storescu "
          f"{dispatcher_rate / storescu_rate:.2f}x", flush=True)


def stow_delivery(paths: list[Path], tmp: Path, rounds: int = 3, per_request: int = 20, connections: int = 4) -> None:
    """The dispatcher delivers a derived series (its own UIDs each time) to one Orthanc with its
    DICOMweb plugin by C-STORE and by STOW-RS, ``rounds`` times, taking turns at going first;
    the medians are compared (target: STOW-RS >= 0.9x C-STORE)."""
    with warmed_orthanc(tmp, paths, "orthanc-stow", dicomweb=True) as orthanc:
        stow = {"protocol": "dicomweb", "url": orthanc.dicomweb_url, "instances_per_request": per_request,
                "connections": connections}

        def rate(protocol: str, turn: int) -> float:
            files = derived_series(paths, tmp / f"derived-{protocol}-{turn}")
            destination = c_store_to(orthanc) if protocol == "C-STORE" else stow
            return len(paths) / dispatcher_seconds(tmp / f"{protocol}-{turn}", destination, files)[0]

        rates = in_turns(rounds, "C-STORE", "STOW-RS", rate)
    c_store, stow_rs = statistics.median(rates["C-STORE"]), statistics.median(rates["STOW-RS"])
    print(f"derived series of {len(paths)} slices by the dispatcher to one Orthanc, median of {rounds}: "
          f"C-STORE (one association) {c_store:.1f} img/s, STOW-RS ({per_request} per request, "
          f"{connections} kept-alive connections) {stow_rs:.1f} img/s: STOW-RS/C-STORE {stow_rs / c_store:.2f}x",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="sends of each kind per receiver (medians)")
    parser.add_argument("--receivers", type=int, default=2, help="radnode receiver processes")
    parser.add_argument("--delivery-only", action="store_true", help="only the dispatcher vs storescu part")
    parser.add_argument("--stow-only", action="store_true", help="only the dispatcher's STOW-RS vs C-STORE part")
    parser.add_argument("--per-request", type=int, default=20, help="STOW-RS instances per request")
    parser.add_argument("--connections", type=int, default=4, help="STOW-RS requests in flight at once")
    parser.add_argument("--baseline", type=Path, help="another checkout: its radnode receives too, in the same turns")
    parser.add_argument("--receive-only", action="store_true", help="only the uncompressed CT's receiving part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.delivery_only:
            delivery(repeated_series(tmp / "series", args.slices), tmp, args.repeat)
            return
        if args.stow_only:
            stow_delivery(repeated_series(tmp / "series", args.slices), tmp, args.repeat, args.per_request,
                          args.connections)
            return
        sends = fresh_sends(tmp / "series", args.slices, args.repeat)
        if args.receive_only:
            ingest("CT, explicit VR little endian", sends, tmp, args.receivers, baseline=args.baseline)
            return
        compressed = jpeg_ls_sends(sends, tmp / "series-jpeg-ls")
        (tmp / "ct").mkdir()
        ingest("CT, explicit VR little endian", sends, tmp / "ct", args.receivers, baseline=args.baseline)
        (tmp / "jls").mkdir()
        ingest("CT, JPEG-LS lossless", compressed, tmp / "jls", args.receivers, propose=("--propose-jls-lossless",),
               baseline=args.baseline)
        delivery(sends.one[0], tmp, args.repeat)
        stow_delivery(sends.one[0], tmp, args.repeat, args.per_request, args.connections)


if __name__ == "__main__":
    main()
