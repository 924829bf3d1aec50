"""OHIF v3 (the prebuilt viewer of the npm package ``@ohif/app``) over a test Orthanc's DICOMweb, for
tests that look at radnode's results as a radiologist does.

``ohif_dist`` unpacks the package once into a cache folder (``npm pack``, or the tarball named by
$RADNODE_OHIF_TGZ); ``ViewerServer`` serves it and proxies /dicom-web to Orthanc on one loopback
origin (no CORS; cross-origin isolated, as OHIF wants for its volume loading); ``Viewer`` drives it
in headless Chromium and reads OHIF's own state (its services on ``window.services``).
"""

from __future__ import annotations

import http.client
import mimetypes
import os
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.peers import free_port

OHIF_VERSION = "3.13.2"
CACHE = Path(os.environ.get("RADNODE_OHIF_CACHE", Path.home() / ".cache" / "radnode" / "ohif"))
HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "content-length"}
APP_CONFIG = """window.config = {
  routerBasename: null, extensions: [], modes: [], customizationService: {}, showStudyList: true,
  maxNumberOfWebWorkers: 2, showWarningMessageForCrossOrigin: false, showCPUFallbackMessage: false,
  showLoadingIndicator: true, strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' }, defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb', sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc', name: 'orthanc', wadoUriRoot: window.location.origin + '/wado',
      qidoRoot: window.location.origin + '/dicom-web', wadoRoot: window.location.origin + '/dicom-web',
      qidoSupportsIncludeField: true, supportsReject: false, imageRendering: 'wadors',
      thumbnailRendering: 'wadors', enableStudyLazyLoad: true, supportsFuzzyMatching: false,
      supportsWildcard: true, staticWado: false, dicomUploadEnabled: false,
      bulkDataURI: { enabled: true }, omitQuotationForMultipartRequest: true,
    },
  }],
};
"""


def ohif_dist(cache: Path = CACHE) -> Path:
    """The viewer's static files, with our app-config.js (one DICOMweb source on the same origin)."""
    dist = cache / f"ohif-app-{OHIF_VERSION}" / "package" / "dist"
    if not (dist / "index.html").exists():
        cache.mkdir(parents=True, exist_ok=True)
        tgz = Path(os.environ.get("RADNODE_OHIF_TGZ", cache / f"ohif-app-{OHIF_VERSION}.tgz"))
        if not tgz.exists():
            npm = shutil.which("npm")
            if npm is None:
                raise RuntimeError("npm not found: apt-get install npm (the OHIF test unpacks @ohif/app with it)")
            subprocess.run([npm, "pack", f"@ohif/app@{OHIF_VERSION}", "--pack-destination", str(cache)],
                           check=True, capture_output=True, timeout=600)
        with tarfile.open(tgz) as archive:
            archive.extractall(dist.parents[1])  # noqa: S202 - the npm registry's own package
    (dist / "app-config.js").write_text(APP_CONFIG)
    return dist


class ViewerServer:
    """OHIF's files and a reverse proxy to Orthanc's /dicom-web and /wado, on one loopback port."""

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        self.port = free_port()
        target = urllib.parse.urlsplit(orthanc_url)
        handler = type("Handler", (_Handler,), {"dist": dist, "target": target})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ViewerServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    dist: Path
    target: urllib.parse.SplitResult

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith(("/dicom-web", "/wado")):
            self._proxy()
        else:
            self._static(path)

    def _isolation(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")

    def _static(self, path: str) -> None:
        rel = os.path.normpath(urllib.parse.unquote(path)).lstrip("/")
        full = self.dist / rel
        if rel.startswith("..") or not full.is_file():
            full = self.dist / "index.html"  # the single-page app's own routes (/viewer, ...)
        body = full.read_bytes()
        kind = {".js": "application/javascript", ".mjs": "application/javascript", ".wasm": "application/wasm"}
        self.send_response(200)
        self.send_header("Content-Type", kind.get(full.suffix) or mimetypes.guess_type(full.name)[0]
                         or "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self._isolation()
        self.end_headers()
        self.wfile.write(body)

    def _proxy(self) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        conn = http.client.HTTPConnection(self.target.hostname, self.target.port, timeout=300)
        try:
            conn.request("GET", self.path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_HEADERS:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self._isolation()
        self.end_headers()
        self.wfile.write(body)


def chromium(profile: Path) -> Any:
    """Headless Chromium with WebGL in software (SwiftShader), as OHIF needs it without a GPU."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000",
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    """``condition()``'s first true answer; a browser that is still loading may raise meanwhile."""
    from selenium.common.exceptions import WebDriverException

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            answer = condition()
        except WebDriverException:
            answer = None
        if answer:
            return answer
        time.sleep(interval)
    raise AssertionError(f"OHIF: no {what} after {timeout:.0f} s")


DISPLAY_SETS_JS = """return window.services.displaySetService.getActiveDisplaySets().map(ds => ({
  uid: ds.displaySetInstanceUID, modality: ds.Modality, desc: ds.SeriesDescription || '',
  series: ds.SeriesInstanceUID, isRehydratable: ds.isRehydratable, isHydrated: ds.isHydrated}));"""
MEASUREMENTS_JS = """return window.services.measurementService.getMeasurements().map(m => ({
  uid: m.uid, label: m.label, toolName: m.toolName, displayText: JSON.stringify(m.displayText || ''),
  SOPInstanceUID: m.SOPInstanceUID, referencedImageId: m.referencedImageId}));"""
#: the image the active viewport shows (a WADO-RS imageId names its SOP Instance UID)
CURRENT_IMAGE_JS = """const id = window.services.viewportGridService.getState().activeViewportId;
return window.services.cornerstoneViewportService.getCornerstoneViewport(id).getCurrentImageId();"""
#: the annotations' text on the image (Cornerstone draws it as SVG text over the canvas)
TEXT_BOXES_JS = """return [...document.querySelectorAll('[data-cy=viewport-pane] svg text')].map(t => {
  const r = t.getBoundingClientRect();
  return {text: t.textContent, left: r.left, top: r.top, right: r.right, bottom: r.bottom};
}).filter(b => b.text.trim());"""


class Viewer:
    """OHIF in a browser: opens a study, loads a result series, reads what OHIF shows."""

    def __init__(self, base: str, profile: Path, shots: Path) -> None:
        self.base, self.shots = base, shots
        shots.mkdir(parents=True, exist_ok=True)
        self.driver = chromium(profile)

    def quit(self) -> None:
        self.driver.quit()

    def js(self, code: str, *args: Any) -> Any:
        return self.driver.execute_script(code, *args)

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(self.shots / f"{name}.png"))

    def open_study(self, study_uid: str) -> None:
        self.driver.get(f"{self.base}/viewer?StudyInstanceUIDs={study_uid}")
        wait_for(lambda: self.js("return !!(window.services && window.services.displaySetService"
                                 ".getActiveDisplaySets().length)"), 120, "display sets")
        time.sleep(3)
        self.dismiss()

    def dismiss(self) -> None:
        """Close OHIF's first-visit tour and the cine player, which cover the viewport."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By

        for xpath in ("//button[normalize-space(.)='Skip all']", "//*[normalize-space(text())='Skip all']",
                      "//*[@data-cy='cine-player-close']"):
            for element in self.driver.find_elements(By.XPATH, xpath):
                try:
                    element.click()
                    time.sleep(1)
                except WebDriverException:
                    pass

    def display_sets(self) -> list[dict[str, Any]]:
        return list(self.js(DISPLAY_SETS_JS))

    def find(self, modality: str) -> dict[str, Any]:
        return wait_for(lambda: next((d for d in self.display_sets() if d["modality"] == modality), None),
                        60, f"{modality} series")

    def load(self, display_set: dict[str, Any]) -> None:
        """Double-click its thumbnail, as a radiologist opens a series, and answer Yes when OHIF
        asks to load (SEG) or track (SR) it."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By

        thumbnail = wait_for(lambda: self.driver.find_element(By.ID, f"thumbnail-{display_set['uid']}"), 60,
                             "thumbnail")
        self.js("arguments[0].scrollIntoView({block: 'center'})", thumbnail)
        ActionChains(self.driver).double_click(thumbnail).perform()
        def prompt() -> list[Any]:
            return [b for b in self.driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Yes"]

        try:
            yes = wait_for(prompt, 60 if display_set["modality"] == "SR" else 120,
                           f"prompt to load the {display_set['modality']}")
        except AssertionError:
            if display_set["modality"] != "SR":
                raise
            # OHIF asks only while its tracking state machine is idle; otherwise its own command
            # does what the prompt's Yes does (the tracking context's HYDRATE_SR event)
            self.shot(f"no-prompt-{display_set['uid'][-8:]}")
            self.js("window.commandsManager.runCommand('loadTrackedSRMeasurements', {displaySetInstanceUID: "
                    "arguments[0], SeriesInstanceUID: arguments[1], viewportId: window.services"
                    ".viewportGridService.getState().activeViewportId});", display_set["uid"], display_set["series"])
            return
        yes[0].click()

    def measurements(self) -> list[dict[str, Any]]:
        return list(self.js(MEASUREMENTS_JS))

    def panel_text(self) -> str:
        from selenium.webdriver.common.by import By

        for button in self.driver.find_elements(By.CSS_SELECTOR, "[data-cy=trackedMeasurements-btn]"):
            button.click()
        time.sleep(2)
        for css in ("[data-cy=trackedMeasurements-panel]", "[data-cy=measurements-panel]"):
            found = self.driver.find_elements(By.CSS_SELECTOR, css)
            if found:
                return " | ".join(e.text.replace("\n", " ") for e in found)
        return ""

    def click_row(self, label: str) -> None:
        """Click the measurement panel's row that shows ``label``."""
        from selenium.webdriver.common.by import By

        outside_image = "not(ancestor-or-self::*[local-name()='svg'])"  # not the label drawn on the image
        rows = wait_for(lambda: [e for e in self.driver.find_elements(
            By.XPATH, f"//*[{outside_image}][contains(text(), {label!r})]") if e.is_displayed()], 30,
            f"panel row {label!r}")
        rows[0].click()
        time.sleep(3)

    def current_image(self) -> str:
        return str(self.js(CURRENT_IMAGE_JS))

    def text_boxes(self) -> list[dict[str, Any]]:
        return list(self.js(TEXT_BOXES_JS))

    def viewport_text(self) -> str:
        from selenium.webdriver.common.by import By

        return " | ".join(e.text.replace("\n", " ") for e in
                          self.driver.find_elements(By.CSS_SELECTOR, "[data-cy=viewport-pane]"))
