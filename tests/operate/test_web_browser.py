"""The administrator's web page in a real browser (headless Chromium driven by Selenium) over a
real node: a series sent with storescu, a threshold job, results stored in Orthanc, a delivery
that goes dead while the PACS is down and is sent again by the page's retry button.

Screenshots of every page land in <tmp_path>/screenshots (the test's artefacts), and are copied
to $RADNODE_SCREENSHOTS when that is set (to look at them after a run).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pydicom
import pytest

from node.config import load_config
from node.operate.web import WebApp
from node.passwords import hash_password
from tests.run.test_node_e2e import pacs_destination
from tests.support.harness import NodeProcess, node_config, threshold_pipeline, threshold_route, wait_until
from tests.support.peers import free_port, storescu

pytestmark = [pytest.mark.peers, pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PASSWORD = "web page test password"
CT = ("ct-chest", "lung-pet-ct-dx-A0002")


def _browser(shots: Path):
    """Headless Chromium that sends the basic-auth header with every request (as a browser does
    once the user typed the password into its login prompt)."""
    try:
        from selenium import webdriver
    except ImportError:
        pytest.fail("selenium is missing: python3 -m pip install -e '.[test]'")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.fail(f"{path} not found: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1200", f"--user-data-dir={shots.parent / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
    return driver


class Pages:
    """Loads pages, keeps their HTML for the patient-data check and screenshots them."""

    def __init__(self, driver, base: str, shots: Path) -> None:
        self.driver, self.base, self.shots = driver, base, shots
        self.seen: dict[str, str] = {}
        shots.mkdir(parents=True, exist_ok=True)

    def open(self, path: str, shot: str) -> str:
        self.driver.get(self.base + path)
        return self.keep(shot)

    def keep(self, shot: str) -> str:
        html = self.driver.page_source
        self.seen[shot] = html
        self.driver.save_screenshot(str(self.shots / f"{shot}.png"))
        return html

    def click(self, action: str, target: object, shot: str) -> str:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, f'button[data-action="{action}"][data-target="{target}"]').click()
        return self.keep(shot)

    def text(self, css: str) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css).text

    def upload(self, files: list[Path], shot: str) -> str:
        """The route tester's file input and its button, as a user picks files and presses it."""
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.ID, "upload").send_keys("\n".join(str(f) for f in files))
        self.driver.find_element(By.ID, "test-upload").click()
        return self.keep(shot)


def kernels_route() -> dict:
    """A study route that wants both reconstructions of the chest CT: with only B40f it waits."""
    return {"name": "kernels", "pipeline": "hu-threshold-study", "destinations": ["pacs"], "level": "study",
            "study_timeout_seconds": 600, "match": {"Modality": "CT"},
            "inputs": {"soft": {"match": {"SeriesDescription": {"regex": "B40f"}}},
                       "sharp": {"match": {"SeriesDescription": {"regex": "B70f"}}}}}


def test_the_web_page_shows_the_node_and_its_retry_button_delivers_a_dead_result(tmp_path, orthanc, data_dir):
    b40f = sorted(data_dir.joinpath(*CT, "B40f").glob("*.dcm"))[:5]
    b70f = sorted(data_dir.joinpath(*CT, "B70f").glob("*.dcm"))[:5]
    header = pydicom.dcmread(b40f[0], stop_before_pixels=True)
    # (this anonymised scan has no birth date: name and ID are what could leak)
    patient = [str(header.PatientName), str(header.PatientID)]
    assert all(len(value) >= 6 for value in patient), "values long enough to be found if they leaked"
    web_port = free_port()
    # The threshold route waits 10 min for its series (the page's "complete" button ends the
    # wait); the kernels study route waits for both reconstructions; a B70f-only route fails,
    # for the failure reason and traceback; a 1.8 s retry window makes a delivery dead while
    # the PACS is down.
    config = node_config(
        tmp_path, destinations=pacs_destination(orthanc),
        routes=[threshold_route(settle_seconds=600, quiet_seconds=600), kernels_route(),
                threshold_route("broken", pipeline="broken", match={"SeriesDescription": {"regex": "B70f"}})],
        pipelines={**threshold_pipeline(),
                   "broken": {"entry": "tests.support.hu_threshold:HUThreshold", "options": {"fail": True}}},
        delivery={"retry_hours": 0.0005, "backoff_seconds": 0.3, "backoff_max_seconds": 0.5},
        web={"enabled": True, "host": "127.0.0.1", "port": web_port, "password_hash": hash_password(PASSWORD),
             "route_test_roots": [str(data_dir)]})
    node = NodeProcess(config, tmp_path).start()
    index = node.index()
    shots = tmp_path / "screenshots"
    driver = _browser(shots)
    pages = Pages(driver, f"http://127.0.0.1:{web_port}", shots)
    try:
        # 1. A series that arrived and waits: the studies page says for what and until when.
        assert storescu(node.port, b40f).returncode == 0
        wait_until(lambda: (s := index.series(str(header.SeriesInstanceUID))) and s.instance_count == 5, 30,
                   what="B40f indexed")
        html = pages.open("/studies", "01-studies-series-waiting")
        assert "receiving" in html and "B40f" in html and "settle" in html
        date = str(header.StudyDate)
        title = f"{' '.join(str(header.get('StudyDescription', '')).split()) or '(no study description)'}, " \
                f"{date[:4]}-{date[4:6]}-{date[6:]}"
        assert pages.text("h2").startswith(title), "a study is shown by its description and date, not its UID"
        assert pages.text("p.study-summary").startswith("CT, 1 series: "), pages.text("p.study-summary")
        row = pages.text(f'tr.series:has(button[data-target="{header.SeriesInstanceUID}"])')
        assert " CT " in f" {row} " and " 5 " in f" {row} ", row
        pages.click("complete-series", header.SeriesInstanceUID, "02-series-completed")
        assert "complete; the running node routes it" in pages.text("#notice")
        wait_until(lambda: index.deliveries("sent"), 60, what="the B40f result delivered")
        pages.open("/studies", "03-studies-route-waiting-for-a-role")
        kernels = pages.text("tr.study-route")
        assert kernels.startswith("kernels waiting soft role sharp 20"), \
            f"the study route names the missing role and until when: {kernels}"

        # 2. The PACS goes down: B70f's results go dead, the broken route fails.
        orthanc.stop()
        assert storescu(node.port, b70f).returncode == 0
        wait_until(lambda: len(index.series_of_study(str(header.StudyInstanceUID))) == 2, 30, what="B70f indexed")
        pages.open("/studies", "04-studies-second-series")
        pages.click("complete-study", header.StudyInstanceUID, "05-study-completed")
        assert "1 receiving series completed" in pages.text("#notice")
        dead = wait_until(lambda: len(index.deliveries("dead")) == 2 and index.deliveries("dead"), 60,
                          what="two dead deliveries (threshold of B70f, kernels)")
        (failed,) = wait_until(lambda: index.jobs("failed"), 60, what="the broken route's job failing")

        # 3. Overview, jobs, one job, deliveries as the administrator sees them.
        html = pages.open("/", "06-overview")
        assert "receivers 1 1" in pages.text("#processes") and "workers 1 1" in pages.text("#processes")
        assert "MB free; C-STORE is refused below 1 MB" in pages.text("#disk")
        assert "pacs unreachable (degraded)" in pages.text("#destinations"), "the PACS is down"
        counts = pages.text("#counts")
        assert "dead 2" in counts and "sent 1" in counts and "failed 1" in counts and "done 3" in counts, counts
        assert "10 instances received" in pages.text("#throughput")
        assert "4 jobs finished" in pages.text("#jobtimes")
        assert html.count("<rect") == 12 + 4, "12 five-minute bars and one bar per finished job"

        pages.open("/jobs", "07-jobs")
        done = next(j for j in index.jobs("done")
                    if j.route == "threshold" and str(header.SeriesInstanceUID) in j.inputs.values())
        row = pages.text(f"#job-{done.id}")
        assert "queued" in row and "load" in row and "threshold" in row and "radnode-test-threshold, 1" in row, row
        assert "the test pipeline was told to fail" in pages.text(f"#job-{failed.id}")
        pages.open(f"/jobs/{done.id}", "08-done-job")
        assert "radnode-test-threshold, 1" in pages.text("#job") and "write" in pages.text("#stages")
        pages.open(f"/jobs/{failed.id}", "09-failed-job")
        assert "RuntimeError: the test pipeline was told to fail" in pages.text("#traceback")
        assert "hu_threshold.py" in pages.text("#traceback")
        pages.click("retry-job", failed.id, "10-failed-job-retried")
        assert f"job {failed.id} queued again" in pages.text("#notice")
        wait_until(lambda: (j := index.job(failed.id)).state == "failed" and j.attempts == 2, 60,
                   what="the retried job running (and failing) again")

        pages.open("/deliveries", "11-deliveries-dead")
        threshold_job = next(j for j in index.jobs("done") if j.route == "threshold" and j.id != done.id)
        (retried,) = [d for d in dead if d.job_id == threshold_job.id]
        row = pages.text(f"#delivery-{retried.id}")
        assert "dead" in row and "no association" in row and "none (dead: retry)" in row, row

        # 4. The PACS is back: the page's retry button delivers that dead result to Orthanc.
        orthanc.start()
        pages.click("retry-delivery", retried.id, "12-delivery-retried")
        assert f"delivery {retried.id} to pacs queued again" in pages.text("#notice")
        wait_until(lambda: len(index.deliveries("sent")) == 2, 30, what="delivery after the retry button")
        pages.open("/deliveries", "13-deliveries-sent")
        assert "sent" in pages.text(f"#delivery-{retried.id}")
        assert [d.state for d in index.deliveries() if d.id != retried.id and d.job_id != done.id] == ["dead"], \
            "the button retried that one delivery, not the other dead one"
        ours = config["node"].get("uid_root", "1.2.826.0.1.3680043.8.498.")
        orthanc.wait_for(lambda pacs: len([i for i in pacs.instances_of_study(str(header.StudyInstanceUID))
                                           if i["MainDicomTags"]["SOPInstanceUID"].startswith(ours)]) == 2, 30)
        # both threshold SEGs in the PACS: B40f's sent at once, B70f's by the retry button

        # 5. The route tester says which routes match and why not: a folder of the node's
        # machine, then files uploaded from the browser.
        pages.open("/routes?path=" + str(b70f[0].parent), "14-route-tester-folder")
        verdicts = [e.text for e in driver.find_elements("css selector", "tr.verdict")]
        assert any(v.startswith("threshold match") for v in verdicts), verdicts
        assert any(v.startswith("broken match") for v in verdicts), verdicts
        assert any(v.startswith("kernels match study input role: sharp") for v in verdicts), verdicts
        pages.upload(b40f[:2], "15-route-tester-upload")
        assert "2 uploaded files, 1 series" in pages.text("#uploaded")
        verdicts = [e.text for e in driver.find_elements("css selector", "tr.verdict")]
        assert any(v.startswith("broken no match SeriesDescription =") and "does not match /B70f/" in v
                   for v in verdicts), verdicts
        assert any(v.startswith("threshold match") for v in verdicts), verdicts

        # 6. No patient name or ID on any page by default.
        assert len(pages.seen) == 15
        for shot, html in pages.seen.items():
            for value in patient:
                assert value not in html, f"{shot} shows a patient value"
    finally:
        driver.quit()
        node.stop()
        if os.environ.get("RADNODE_SCREENSHOTS"):
            shutil.copytree(shots, os.environ["RADNODE_SCREENSHOTS"], dirs_exist_ok=True)
    assert "web.action" in node.logs() and all(value not in node.logs() for value in patient), \
        "every action is logged, without patient data"
    with_names = load_config(node.config_path).model_copy(update={"web": load_config(node.config_path).web
                                                          .model_copy(update={"show_patient_data": True})})
    assert patient[0] in WebApp(with_names, dict).studies("admin", {}).decode(), \
        "show_patient_data = true puts the patient name on the studies page"
