"""A result file is read once between the pipeline writing it and the PACS having it: by the
C-STORE that sends it. The writer already knows what the node records of it (SOP instance UID,
class, series, study, transfer syntax) and passes that along, so neither the worker nor the
dispatcher reads the file back (before issue 19: 4 reads of every result file)."""

from __future__ import annotations

import builtins
import io
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom

from node.config import Route, parse_config
from node.dispatcher import Dispatcher
from node.router import job_spec
from node.spool import Spool
from node.states import DeliveryState, JobState
from node.store import Index, InstanceRecord
from node.worker import PipelineCache, execute
from pipelines.base import SERIES_ROLE
from tests.harness import threshold_pipeline, threshold_route
from tests.peers import BitPreservingStorescp
from tests.test_hostile_input import ct_files


def _indexed_series(index: Index, files: list[Path]) -> tuple[str, str]:
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        index.record_instance(InstanceRecord.from_header(header, str(header.file_meta.TransferSyntaxUID),
                                                         path, path.stat().st_size), None)
    return str(header.StudyInstanceUID), str(header.SeriesInstanceUID)


def _count_reads(monkeypatch: Any, folder: Path) -> Counter[Path]:
    """Every open for reading of a file in ``folder`` from now on (pydicom, pathlib and the
    standard library all open files through ``io.open``)."""
    reads: Counter[Path] = Counter()
    real_open = io.open

    def counting_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, Path)) and Path(file).parent == folder and not set(mode) & set("wax+"):
            reads[Path(file)] += 1
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    return reads


def test_each_result_file_is_read_once_from_its_write_to_its_delivery_by_the_c_store_that_sends_it(
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
    # measured: 1 read of each (the C-STORE's); 4 of each before issue 19
    assert dict(reads) == {path: 1 for path in written}, f"reads of each result file: {dict(reads)}"
