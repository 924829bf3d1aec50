"""The node on a pynetdicom whose internals differ from the ones radnode's speed-ups were written
against: it starts, says so once, and stores durably through stock pynetdicom (node.dicomnet.patches,
node.receive.stock_store). The different pynetdicom is the installed one with
``DIMSEServiceProvider.send_msg`` given one more parameter at interpreter start (a sitecustomize
on the node's PYTHONPATH), as a later release might: the real peers send and receive."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest

from tests.support.harness import REPO, NodeProcess, node_config, threshold_pipeline, threshold_route, wait_until
from tests.support.kill_trials import acknowledged, fresh_series
from tests.support.peers import BitPreservingStorescp, storescu

pytestmark = [pytest.mark.peers]

#: Adjacent slices, so that the series is complete without the rest.
SLICES = 8

#: Run in every process of the node (supervisor, receivers, workers) before radnode is imported.
OTHER_PYNETDICOM = '''
from pynetdicom.dimse import DIMSEServiceProvider

_send_msg = DIMSEServiceProvider.send_msg


def send_msg(self, primitive, context_id, chunked=None):
    return _send_msg(self, primitive, context_id)


DIMSEServiceProvider.send_msg = send_msg
'''


class NodeOnOtherPynetdicom(NodeProcess):
    @property
    def env(self) -> dict[str, str]:
        site = self.workdir / "other-pynetdicom"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(OTHER_PYNETDICOM)
        return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}


@pytest.fixture
def pacs(tmp_path: Path):
    with BitPreservingStorescp(tmp_path / "pacs") as storescp:
        yield storescp


@pytest.mark.slow
def test_on_a_pynetdicom_whose_internals_differ_the_node_stores_durably_on_stock_pynetdicom(
        tmp_path: Path, data_dir: Path, pacs: BitPreservingStorescp) -> None:
    config = node_config(tmp_path, destinations=[{"name": "pacs", "ae_title": "RADNODE", "host": "127.0.0.1",
                                                  "port": pacs.port}],
                         routes=[threshold_route()], pipelines=threshold_pipeline(),
                         completion={"settle_seconds": 1.0, "quiet_seconds": 3.0})
    node = NodeOnOtherPynetdicom(config, tmp_path).start()
    series_files = (data_dir / "ct-chest" / "cptac-luad-C3N-00247").glob("*.dcm")
    sources = sorted(series_files, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))[:SLICES]
    study, series, files = fresh_series(sources, tmp_path / "series")
    try:
        sent = storescu(node.port, files, extra=("-v",))
        assert sent.returncode == 0, sent.stderr
        assert len(acknowledged(sent.stdout + sent.stderr)) == SLICES
        node.kill_group()  # right after the last success status: nothing after it may be needed
        index = node.index()
        for path in files:
            row = index.instance(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
            assert row is not None, f"{path.name} acknowledged but not indexed"
            kept = row.path
            assert kept.is_relative_to(Path(config["node"]["spool"])), kept
            assert pydicom.dcmread(kept) == pydicom.dcmread(path)  # storescu may re-encode on the way
            assert pydicom.dcmread(kept, stop_before_pixels=True).file_meta.SourceApplicationEntityTitle == "STORESCU"
        log = node.logs()
        assert "pynetdicom.stock" in log
        assert "DIMSEServiceProvider.send_msg" in log

        node.start()  # still on the other pynetdicom: the series completes, runs and is delivered
        job = wait_until(lambda: [j for j in index.jobs() if j.state in ("done", "failed")], 90, what="job end")[0]
        assert job.state == "done", job.outcome
        wait_until(lambda: any(pacs.folder.iterdir()), 60, what="result at the PACS")
    finally:
        if node.proc is not None:
            node.stop()
