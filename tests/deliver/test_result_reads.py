"""Between the pipeline writing a result file and the PACS having it, only the C-STORE that
sends it reads it. The writer already knows what the node records of it (SOP instance UID,
class, series, study, transfer syntax) and passes that along, so neither the worker nor the
dispatcher reads the file back (before the writer passed it along: 4 reads of every result
file, 3 of them before the C-STORE)."""

from __future__ import annotations

import builtins
import io
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.config import Route, parse_config
from node.deliver.dispatcher import Dispatcher
from node.index.states import DeliveryState, JobState
from node.index.store import Index, InstanceRecord
from node.receive.spool import Spool
from node.route.router import job_spec
from node.run.invoke import PipelineCache
from node.run.worker import execute
from pipelines.base import SERIES_ROLE
from tests.support.harness import threshold_pipeline, threshold_route
from tests.support.peers import BitPreservingStorescp
from tests.support.probes import ct_files

pytestmark = [pytest.mark.peers]


def _indexed_series(index: Index, files: list[Path]) -> tuple[str, str]:
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        index.record_instance(InstanceRecord.from_header(header, str(header.file_meta.TransferSyntaxUID),
                                                         path, path.stat().st_size), None)
    return str(header.StudyInstanceUID), str(header.SeriesInstanceUID)


def _sending() -> bool:
    """Whether the caller runs inside the dispatcher's C-STORE of a delivery's files."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "_send_files" and frame.f_code.co_filename.endswith("cstore.py"):
            return True
        frame = frame.f_back
    return False


def _count_reads(monkeypatch: Any, folder: Path) -> Counter[tuple[Path, str]]:
    """Every open for reading of a file in ``folder`` from now on, by (file, "C-STORE" or
    "elsewhere"); pydicom, pynetdicom, pathlib and the standard library all open files through
    ``io.open``."""
    reads: Counter[tuple[Path, str]] = Counter()
    real_open = io.open

    def counting_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, Path)) and Path(file).parent == folder and not set(mode) & set("wax+"):
            reads[Path(file), "C-STORE" if _sending() else "elsewhere"] += 1
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    return reads


def test_only_the_c_store_that_sends_a_result_file_reads_it_between_its_write_and_its_delivery(
        tmp_path, data_dir, monkeypatch):
    spool = Spool(tmp_path / "spool")
    index = Index(spool.root / "index.sqlite")
    study, series = _indexed_series(index, ct_files(data_dir, 4))
    route = threshold_route()
    index.add_job(job_spec(Route.model_validate(route), subject=series, study_uid=study, generation=0,
                           inputs={SERIES_ROLE: series}))
    job = index.claim_job(None, 60)
    assert job is not None
    reads = _count_reads(monkeypatch, spool.result_dir(job.id))
    with BitPreservingStorescp(tmp_path / "pacs") as pacs:
        config = parse_config({"node": {"spool": str(spool.root)}, "routes": [route],
                               "destinations": [{"name": "pacs", "ae_title": "RADNODE", "host": "127.0.0.1",
                                                 "port": pacs.port}],
                               "pipelines": threshold_pipeline(report=True)})
        execute(job, index, spool, PipelineCache(config))
        assert index.job(job.id).state == JobState.DONE, index.job(job.id).outcome
        assert Dispatcher(config, index).tick() == 1
    assert [d.state for d in index.deliveries()] == [DeliveryState.SENT]
    written = sorted(spool.result_dir(job.id).glob("*.dcm"))
    assert len(written) == 2, "a SEG and its TID 1500 report"
    assert len(list((tmp_path / "pacs").iterdir())) == 2, "the PACS has both"
    # measured: each file read once, by the C-STORE; before the writer passed its record along,
    # 3 reads of each elsewhere (the worker twice, the dispatcher's presentation contexts once)
    # and 1 by the C-STORE
    elsewhere = {path: n for (path, where), n in reads.items() if where == "elsewhere"}
    assert elsewhere == {}, f"result files read back before their C-STORE: {elsewhere}"
    assert {path for path, _ in reads} == set(written), "the C-STORE reads each file it sends"
