"""The administrator's web page in a real browser (headless Chromium driven by Selenium) over a
real node: a series sent with storescu, a threshold job, results stored in Orthanc, a delivery
that goes dead while the PACS is down and is sent again by the page's retry button.

The story is told in steps, one test each, over one node and one browser session (the module's
``story`` fixture); after a failed step the later ones are skipped. Screenshots of every page
land in <tmp>/web-browser*/screenshots, and are copied to $RADNODE_SCREENSHOTS when that is set.
"""

from __future__ import annotations

import base64
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.config import load_config
from node.index.store import Index
from node.operate.web import WebApp
from node.passwords import hash_password
from tests.support.harness import NodeProcess, start_node, threshold_pipeline, threshold_route, wait_until
from tests.support.peers import Orthanc, free_port, send

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


@dataclass
class Story:
    """The node, its PACS and the browser every step of this module shares, and what the steps
    found that a later step looks at again."""

    node: NodeProcess
    index: Index
    orthanc: Orthanc
    pages: Pages
    header: pydicom.Dataset
    b40f: list[Path]
    b70f: list[Path]
    patient: list[str]
    found: dict[str, Any] = field(default_factory=dict)
    failed_step: str = ""


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, data_dir: Path):
    """One node and one browser session for the whole story, each step a test.

    The threshold route waits 10 min for its series (the page's "complete" button ends the
    wait); the kernels study route waits for both reconstructions; a B70f-only route fails,
    for the failure reason and traceback; a 1.8 s retry window makes a delivery dead while
    the PACS is down."""
    tmp_path = tmp_path_factory.mktemp("web-browser")
    b40f = sorted(data_dir.joinpath(*CT, "B40f").glob("*.dcm"))[:5]
    b70f = sorted(data_dir.joinpath(*CT, "B70f").glob("*.dcm"))[:5]
    header = pydicom.dcmread(b40f[0], stop_before_pixels=True)
    # (this anonymised scan has no birth date: name and ID are what could leak)
    patient = [str(header.PatientName), str(header.PatientID)]
    assert all(len(value) >= 6 for value in patient), "values long enough to be found if they leaked"
    web_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc").start()
    node = start_node(
        tmp_path, orthanc,
        routes=[threshold_route(settle_seconds=600, quiet_seconds=600), kernels_route(),
                threshold_route("broken", pipeline="broken", match={"SeriesDescription": {"regex": "B70f"}})],
        pipelines={**threshold_pipeline(),
                   "broken": {"entry": "tests.support.hu_threshold:HUThreshold", "options": {"fail": True}}},
        delivery={"retry_hours": 0.0005, "backoff_seconds": 0.3, "backoff_max_seconds": 0.5},
        web={"enabled": True, "host": "127.0.0.1", "port": web_port, "password_hash": hash_password(PASSWORD),
             "route_test_roots": [str(data_dir)]})
    shots = tmp_path / "screenshots"
    driver = _browser(shots)
    try:
        pages = Pages(driver, f"http://127.0.0.1:{web_port}", shots)
        yield Story(node, node.index(), orthanc, pages, header, b40f, b70f, patient)
    finally:
        driver.quit()
        node.stop()
        orthanc.kill()
        if os.environ.get("RADNODE_SCREENSHOTS"):
            shutil.copytree(shots, os.environ["RADNODE_SCREENSHOTS"], dirs_exist_ok=True)


@pytest.fixture(autouse=True)
def in_order(story: Story, request: pytest.FixtureRequest):
    """The steps are one story: after a failed step the later ones are skipped, not failed again."""
    if story.failed_step:
        pytest.skip(f"an earlier step failed: {story.failed_step}")
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        story.failed_step = request.node.name


def test_a_series_that_waits_is_shown_with_what_it_waits_for_and_its_button_completes_it(story: Story):
    pages, header, index = story.pages, story.header, story.index
    send(story.node.port, story.b40f)
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


def test_a_study_route_names_the_role_it_still_waits_for_and_until_when(story: Story):
    story.pages.open("/studies", "03-studies-route-waiting-for-a-role")
    kernels = story.pages.text("tr.study-route")
    assert kernels.startswith("kernels waiting soft role sharp 20"), \
        f"the study route names the missing role and until when: {kernels}"


def test_with_the_pacs_down_the_study_button_completes_the_study_and_its_results_go_dead(story: Story):
    pages, header, index = story.pages, story.header, story.index
    story.orthanc.stop()
    send(story.node.port, story.b70f)
    wait_until(lambda: len(index.series_of_study(str(header.StudyInstanceUID))) == 2, 30, what="B70f indexed")
    pages.open("/studies", "04-studies-second-series")
    pages.click("complete-study", header.StudyInstanceUID, "05-study-completed")
    assert "1 receiving series completed" in pages.text("#notice")
    story.found["dead"] = wait_until(lambda: len(index.deliveries("dead")) == 2 and index.deliveries("dead"), 60,
                                     what="two dead deliveries (threshold of B70f, kernels)")
    (story.found["failed"],) = wait_until(lambda: index.jobs("failed"), 60, what="the broken route's job failing")


def test_the_overview_shows_processes_disk_the_pacs_down_counts_and_throughput(story: Story):
    pages = story.pages
    html = pages.open("/", "06-overview")
    assert "receivers 1 1" in pages.text("#processes") and "workers 1 1" in pages.text("#processes")
    assert "MB free; C-STORE is refused below 1 MB" in pages.text("#disk")
    assert "pacs unreachable (degraded)" in pages.text("#destinations"), "the PACS is down"
    counts = pages.text("#counts")
    assert "dead 2" in counts and "sent 1" in counts and "failed 1" in counts and "done 3" in counts, counts
    assert "10 instances received" in pages.text("#throughput")
    assert "4 jobs finished" in pages.text("#jobtimes")
    assert html.count("<rect") == 12 + 4, "12 five-minute bars and one bar per finished job"


def test_the_job_pages_show_stages_and_the_failure_and_a_failed_job_is_retried_by_its_button(story: Story):
    pages, index, failed = story.pages, story.index, story.found["failed"]
    pages.open("/jobs", "07-jobs")
    done = next(j for j in index.jobs("done")
                if j.route == "threshold" and str(story.header.SeriesInstanceUID) in j.inputs.values())
    story.found["done"] = done
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


def test_a_dead_delivery_is_listed_and_its_retry_button_delivers_it_once_the_pacs_is_back(story: Story):
    pages, index, done = story.pages, story.index, story.found["done"]
    pages.open("/deliveries", "11-deliveries-dead")
    threshold_job = next(j for j in index.jobs("done") if j.route == "threshold" and j.id != done.id)
    (retried,) = [d for d in story.found["dead"] if d.job_id == threshold_job.id]
    row = pages.text(f"#delivery-{retried.id}")
    assert "dead" in row and "no association" in row and "none (dead: retry)" in row, row

    story.orthanc.start()
    pages.click("retry-delivery", retried.id, "12-delivery-retried")
    assert f"delivery {retried.id} to pacs queued again" in pages.text("#notice")
    wait_until(lambda: len(index.deliveries("sent")) == 2, 30, what="delivery after the retry button")
    pages.open("/deliveries", "13-deliveries-sent")
    assert "sent" in pages.text(f"#delivery-{retried.id}")
    assert [d.state for d in index.deliveries() if d.id != retried.id and d.job_id != done.id] == ["dead"], \
        "the button retried that one delivery, not the other dead one"
    ours = story.node.config["node"].get("uid_root", "1.2.826.0.1.3680043.8.498.")
    study_uid = str(story.header.StudyInstanceUID)
    story.orthanc.wait_for(lambda pacs: len([i for i in pacs.instances_of_study(study_uid)
                                             if i["MainDicomTags"]["SOPInstanceUID"].startswith(ours)]) == 2, 30)
    # both threshold SEGs in the PACS: B40f's sent at once, B70f's by the retry button


def test_the_route_tester_says_which_routes_match_a_folder_and_uploaded_files_and_why_not(story: Story):
    pages = story.pages
    pages.open("/routes?path=" + str(story.b70f[0].parent), "14-route-tester-folder")
    verdicts = [e.text for e in pages.driver.find_elements("css selector", "tr.verdict")]
    assert any(v.startswith("threshold match") for v in verdicts), verdicts
    assert any(v.startswith("broken match") for v in verdicts), verdicts
    assert any(v.startswith("kernels match study input role: sharp") for v in verdicts), verdicts
    pages.upload(story.b40f[:2], "15-route-tester-upload")
    assert "2 uploaded files, 1 series" in pages.text("#uploaded")
    verdicts = [e.text for e in pages.driver.find_elements("css selector", "tr.verdict")]
    assert any(v.startswith("broken no match SeriesDescription =") and "does not match /B70f/" in v
               for v in verdicts), verdicts
    assert any(v.startswith("threshold match") for v in verdicts), verdicts


def test_no_page_and_no_log_line_shows_the_patient_and_every_action_is_logged(story: Story):
    assert len(story.pages.seen) == 15
    for shot, html in story.pages.seen.items():
        for value in story.patient:
            assert value not in html, f"{shot} shows a patient value"
    logs = story.node.logs()
    assert "web.action" in logs and all(value not in logs for value in story.patient), \
        "every action is logged, without patient data"


def test_show_patient_data_puts_the_patient_name_on_the_studies_page(story: Story):
    config = load_config(story.node.config_path)
    with_names = config.model_copy(update={"web": config.web.model_copy(update={"show_patient_data": True})})
    assert story.patient[0] in WebApp(with_names, dict).studies("admin", {}).decode(), \
        "show_patient_data = true puts the patient name on the studies page"
