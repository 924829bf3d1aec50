"""A job's page shows what was sent: its findings as a table with units, and its key images as
thumbnails, summary first (issue #71: the page showed a Python literal and no picture).

The key images are the real writer's (``writers.key_images``) on Lung-PET-CT-Dx A0002 B70f, the
job is a real index row finished with them, and the page is the node's own ``WebApp``.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from node.config import parse_config
from node.index.store import Index, JobSpec, ResultFile
from node.operate.web import WebApp
from pipelines.base import JobSummary
from pipelines.volume import load_series
from pipelines.writers.identity import Algorithm, Identity
from pipelines.writers.key_images import LUNG_WINDOW, YELLOW, KeyFinding, Page, Region, make_key_images
from pipelines.writers.output import write_datasets
from tests.conftest import DATA
from tests.support.harness import node_config

pytestmark = [pytest.mark.data]

CHEST = DATA / "ct-chest" / "lung-pet-ct-dx-A0002" / "B70f"
NODULES = [{"score": 0.999, "diameter_mm": 28.24, "volume_mm3": 5518.6},
           {"score": 0.81, "diameter_mm": 6.1, "volume_mm3": None}]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[WebApp, int, str]:
    folder = tmp_path_factory.mktemp("job")
    config = parse_config(node_config(folder))
    volume = load_series(sorted(CHEST.glob("*.dcm")))
    marks = np.zeros((2, 20, 20), bool)
    marks[:, 5:15, 5:15] = True
    findings = [KeyFinding(f"Nodule {n}", (Region((slice(10 + n, 12 + n), slice(200, 220), slice(100, 120)),
                                                    marks, YELLOW),)) for n in (1, 2)]
    images = make_key_images(volume, findings, Page(Algorithm("radnode nodule-detection", "test"),
                                                      "radnode nodule-detection", "Lung nodules: 2 found",
                                                      ("Nodule 1", "Nodule 2"), body_part="CHEST", window=LUNG_WINDOW),
                             Identity(uid_root="1.2.826.0.1.3680043.8.498.778"))
    written = write_datasets(reversed(images), folder / "results")  # stored in no particular order
    index = Index(config.node.index_path)
    index.add_job(JobSpec(route="lung", pipeline="nodule-detection", subject="1.1.1", study_uid="1.1",
                          generation=0, inputs={"series": "1.1.1"}, destinations=[]))
    job = index.claim_job(pid=1, timeout=60)
    assert job is not None
    results = [ResultFile(w.path, w.sop_uid, w.sop_class) for w in written]
    summary = JobSummary.from_stored({"nodules": NODULES, "candidates": 14, "lung_ml": 4180})
    assert index.finish_job(job.id, results, "3 objects", summary, attempt=job.attempts)
    app = WebApp(config, dict)
    html = app.job("admin", job.id, {})
    assert html is not None
    return app, job.id, html.decode()


def test_the_findings_are_a_table_with_units_not_a_python_literal(page: tuple[WebApp, int, str]) -> None:
    _, _, html = page
    table = re.search(r'<table class="findings" id="findings-1">(.*?)</table>', html, re.S)
    assert table, "a findings table"
    headers = re.findall(r"<th>(.*?)</th>", table.group(1))
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r'<tr class="finding">(.*?)</tr>', table.group(1))]
    assert headers == ["#", "score", "diameter (mm)", "volume (mm³)"]
    assert rows == [["1", "0.999", "28.2", "5519"], ["2", "0.810", "6.1", "-"]]
    assert "{'score'" not in html and "&#39;score&#39;" not in html
    assert "<th>candidates</th><td>14</td>" in html, "the other summary keys stay in the summary table"


def test_the_key_images_are_thumbnails_summary_first(page: tuple[WebApp, int, str], tmp_path: Path) -> None:
    app, job_id, html = page
    links = re.findall(rf'<img class="key-image" src="/jobs/{job_id}/key-images/(\d+)\.png" alt="([^"]+)"', html)
    assert links == [("0", "summary of the findings"), ("1", "finding 1"), ("2", "finding 2")]
    thumbnails = [Image.open(io.BytesIO(app.key_image(job_id, k) or b"")) for k in range(3)]
    assert all(max(t.size) == 320 and t.mode == "RGB" for t in thumbnails)
    # the summary is the picture of the findings' list; each key image outlines its own slice
    assert len({t.tobytes() for t in thumbnails}) == 3
    assert app.key_image(job_id, 3) is None and app.key_image(job_id + 1, 0) is None
