"""Ray executor: throughput with 2 Ray nodes against 2 local workers, and the per-job overhead of
the Ray path on a 300-slice CT.

Both on this one machine: a local Ray cluster of a head and a second node (``--num-cpus 1``
each, started as separate processes like the tests do) against ``[workers] engine = "local"``
with ``count = 2``. The pipeline is the tests' HU threshold (decode, threshold, a DICOM SEG), so
the numbers show what the Ray path costs around a pipeline, not a model's speed.

1. Overhead: the same 300-slice CT run by ``run_pipeline`` in this process (the local path,
   files already in the spool) and through a Ray actor the way a driver runs it: read and
   ship the series (object store), the actor unpacks and runs it, the result bytes come back and
   are written durably on the node. Medians of ``--repeats`` runs after a warm-up.
2. Throughput: ``--series`` series of ``--slices`` slices sent with storescu to a real
   ``radnode serve`` (results to Orthanc), jobs per minute from the first job's start to the
   last job's end, for each engine, and their ratio.

    python3 bench/ray_throughput.py [--series 6] [--slices 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ct_series import repeated_series  # noqa: E402
from node.config import parse_config  # noqa: E402
from node.receive.spool import Spool  # noqa: E402
from node.run.invoke import load_pipeline, pipeline_settings, run_pipeline  # noqa: E402
from node.run.ray_actor import ActorOutcome, PipelineActor  # noqa: E402
from node.run.ray_executor import ship  # noqa: E402
from tests.support.harness import NodeProcess, node_config, threshold_pipeline, threshold_route, wait_until  # noqa: E402
from tests.support.peers import Orthanc, storescu  # noqa: E402
from tests.support.ray_cluster import RayCluster  # noqa: E402


def config_dict(tmp: Path, pacs_port: int, workers: dict) -> dict:
    return node_config(tmp, routes=[threshold_route()], pipelines=threshold_pipeline(),
                       destinations=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                      "port": pacs_port}],
                       workers=workers)


class TimedActor(PipelineActor):
    """The production actor, answering also when its task began on the actor's clock: the
    bench's split of the time, kept out of the node's own record."""

    def run_timed(self, series: dict, job_id: str) -> tuple[float, ActorOutcome]:
        received_at = time.time()
        return received_at, self.run(series, job_id)


def overhead(cluster: RayCluster, files: list[Path], tmp: Path, repeats: int) -> None:
    import ray

    config = parse_config(config_dict(tmp, 104, {}))
    entry, settings = pipeline_settings(config, "hu-threshold")
    local = load_pipeline(entry, settings)
    run_pipeline(local, {"series": files}, tmp / "local", "warm-up")
    local_seconds = []
    for i in range(repeats):
        started = time.perf_counter()
        run_pipeline(local, {"series": files}, tmp / "local", str(i))
        local_seconds.append(time.perf_counter() - started)

    ray.init(address=cluster.address, log_to_driver=False, logging_level="warning")
    actor = ray.remote(TimedActor).options(num_cpus=1).remote(entry, settings)
    spool = Spool(tmp / "spool")
    parts: dict[str, list[float]] = {k: [] for k in ("total", "ship", "to_actor", "on_actor", "back", "keep")}
    for i in range(repeats + 1):  # the first run is the warm-up (actor start, pipeline load)
        started = time.perf_counter()
        submitted_at = time.time()
        series = {"series": ship(files)}
        ref = actor.run_timed.remote(ray.put(series), str(i))
        shipped = time.perf_counter()
        received_at, outcome = ray.get(ref)
        returned_at = time.time()
        got = time.perf_counter()
        for name, data in outcome.files:
            spool.write(spool.result_dir(i) / name, data)
        kept = time.perf_counter()
        if i == 0:
            continue
        parts["total"].append(kept - started)
        parts["ship"].append(shipped - started)
        parts["to_actor"].append(received_at - submitted_at - (shipped - started))
        parts["on_actor"].append(outcome.seconds)
        parts["back"].append(returned_at - received_at - outcome.seconds)
        parts["keep"].append(kept - got)
    ray.shutdown()
    median = {k: statistics.median(v) for k, v in parts.items()}
    local_median = statistics.median(local_seconds)
    print(f"{len(files)}-slice CT, HU threshold pipeline, median of {repeats}:")
    print(f"  local (run_pipeline on spool files): {local_median:6.2f} s")
    print(f"  Ray actor, node to node:             {median['total']:6.2f} s   overhead {median['total'] - local_median:+.2f} s")
    print(f"    read + ray.put {median['ship']:.2f} s | submit -> actor starts run {median['to_actor']:.2f} s"
          f" | unpack + pipeline on actor {median['on_actor']:.2f} s"
          f" | result back {median['back']:.2f} s | durable write on node {median['keep']:.2f} s")


def send_and_wait(node: NodeProcess, series: list[list[Path]], done_before: int) -> None:
    for files in series:
        if storescu(node.port, files).returncode != 0:
            raise RuntimeError("storescu failed")
    index = node.index()
    wait_until(lambda: len(index.jobs("done")) == done_before + len(series) or index.jobs("failed"), 900,
               what="every job done")
    if index.jobs("failed"):
        raise RuntimeError(f"jobs failed: {[j.outcome for j in index.jobs('failed')]}")


def throughput(name: str, workers: dict, warm_up: list[list[Path]], series: list[list[Path]], tmp: Path) -> float:
    """Jobs per minute once every worker (or actor) has loaded its pipeline."""
    orthanc = Orthanc(tmp / "orthanc").start()
    node = NodeProcess(config_dict(tmp, orthanc.dicom_port, workers), tmp).start()
    try:
        send_and_wait(node, warm_up, 0)
        send_and_wait(node, series, len(warm_up))
        jobs = node.index().jobs()[len(warm_up):]
        span = max(j.finished_at for j in jobs) - min(j.started_at for j in jobs)
        per_minute = 60 * len(jobs) / span
        print(f"  {name:32s} {len(jobs)} jobs in {span:6.1f} s: {per_minute:5.1f} jobs/min", flush=True)
        return per_minute
    finally:
        node.stop()
        orthanc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=6)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        ct = repeated_series(tmp / "ct300", 300)
        series = [repeated_series(tmp / f"s{i}", args.slices) for i in range(args.series)]
        warm_up = [repeated_series(tmp / f"w{i}", 5) for i in range(2)]  # one per worker
        cluster = RayCluster()
        try:
            started = time.perf_counter()
            cluster.start_head().start_second_node()
            print(f"local Ray cluster (head + second node) started in {time.perf_counter() - started:.1f} s",
                  flush=True)
            overhead(cluster, ct, tmp / "overhead", args.repeats)
            print(f"throughput, {args.series} series of {args.slices} slices:")
            local = throughput("local, 2 worker processes", {"engine": "local", "count": 2}, warm_up,
                               series, tmp / "local")
            on_ray = throughput("ray, 2 nodes x 1 CPU, 2 drivers",
                                {"engine": "ray", "count": 2, "ray": {"address": cluster.address}},
                                warm_up, series, tmp / "ray")
            print(f"  ratio ray / local: {on_ray / local:.2f}")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
