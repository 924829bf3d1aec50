"""The /backfills page: the figures of ``radnode backfill --status``, a cancel button that needs the
login and the page's CSRF token, and the export; accession numbers only in the export."""

from __future__ import annotations

import csv
import io

from node.index.backfills import FoundStudy
from node.index.states import BackfillState
from tests.operate.test_web_access import _auth, _csrf, _notice, _request, _text, password_hash, web  # noqa: F401 (fixtures)


def test_the_backfills_page_shows_progress_cancels_with_csrf_and_exports_accessions_only_in_the_csv(web):  # noqa: F811
    url, index = web
    backfill_id = index.create_backfill("pacs", {"accessions": ["ACC-SECRET-1", "ACC-SECRET-2"]})
    index.record_found(backfill_id, [FoundStudy("1.2.1", "ACC-SECRET-1"), FoundStudy("1.2.2", "ACC-SECRET-2")])
    (taken,) = index.take_studies(1)
    index.mark_retrieved(taken.id, 3)

    assert _request(url + "/backfills")[0] == 401
    assert _request(url + f"/backfills/{backfill_id}/report.csv")[0] == 401
    status, page, _ = _request(url + "/backfills", _auth())
    assert status == 200
    start = page.index(f'id="backfill-{backfill_id}">')
    row = _text(page[page.index(">", start) + 1:page.index("</tr>", start)])
    # queried, retrieved, run (no route took the retrieved one: nothing came), delivered, failed
    assert row.startswith(f"{backfill_id} pacs retrieving 2 1 1 1 0"), row
    assert 'class="queried">2<' in page and 'class="retrieved">1<' in page and 'class="run">1<' in page
    assert "ACC-SECRET" not in page, "accession numbers never reach a page"

    status, exported, headers = _request(url + f"/backfills/{backfill_id}/report.csv", _auth())
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [(r["accession"], r["outcome"]) for r in rows] == [
        ("ACC-SECRET-1", "retrieved; no route ran for it (yet)"), ("ACC-SECRET-2", "not run: found")]
    assert "PatientName" not in rows[0]

    refused = _request(url + "/actions/cancel-backfill", _auth(), {"target": str(backfill_id), "csrf": "0" * 64})
    assert refused[0] == 403 and index.backfill(backfill_id).state == BackfillState.RETRIEVING
    token = _csrf(page)
    status, _, headers = _request(url + "/actions/cancel-backfill", _auth(),
                                  {"target": str(backfill_id), "csrf": token, "back": "/backfills"})
    assert status == 303 and index.backfill(backfill_id).state == BackfillState.CANCELLED
    assert _notice(url, headers).startswith(f"backfill {backfill_id} cancelled, with 0 queued jobs")
    assert "data-action=\"cancel-backfill\"" not in _request(url + "/backfills", _auth())[1]
