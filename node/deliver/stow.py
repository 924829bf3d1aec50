"""Results to a DICOMweb archive by STOW-RS (PS3.18 10.5), over kept-alive connections.

The answer is read per instance: one in the response's FailedSOPSequence (or missing from its
ReferencedSOPSequence) fails its delivery with the FailureReason, retried like a refused C-STORE.
Requests go to ``{url}/studies/{job's study}`` so the archive refuses an object from another
study. httpx streams each body from a generator (docs/deliver.md).
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pydicom

from node import logs
from node.config import DicomwebDestination
from node.deliver.sending import Outcome, Parcel, Settle
from node.index.store import ResultFile

_PART_TYPE = "application/dicom"
_BLOCK = 1 << 20
#: PS3.18 Table 10.5.3-2 / PS3.4 Annex GG: what a FailureReason or WarningReason code says
_REASONS = {
    0x0110: "processing failure", 0x0122: "SOP class not supported", 0x0124: "not authorized",
    0xA700: "out of resources", 0xA770: "out of resources (storage)", 0xA900: "data set does not match SOP class",
    0xC000: "cannot understand", 0xC122: "transfer syntax not supported", 0xB000: "coercion of data elements",
    0xB006: "elements discarded", 0xB007: "data set does not match SOP class",
}


def http_client(destination: DicomwebDestination) -> httpx.Client:
    """A client that verifies the server against ``ca_file`` or the system's trust store (never
    not at all: results carry patient data), keeps ``connections`` connections alive, and retries
    a refused connect once."""
    context = ssl.create_default_context(cafile=destination.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    timeout = httpx.Timeout(destination.timeout_seconds, connect=min(10.0, destination.timeout_seconds))
    limits = httpx.Limits(max_connections=destination.connections, max_keepalive_connections=destination.connections)
    return httpx.Client(timeout=timeout, transport=httpx.HTTPTransport(verify=context, retries=1, limits=limits))


class StowSender:
    def __init__(self, destination: DicomwebDestination) -> None:
        self.destination = destination
        self.root = destination.url.rstrip("/")
        self._client: httpx.Client | None = None
        self._requests = ThreadPoolExecutor(destination.connections, thread_name_prefix=f"stow-{destination.name}")

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = http_client(self.destination)
        return self._client

    def probe(self) -> tuple[bool, str]:
        """A QIDO-RS search for one study: any answer but a refusal of our credentials or a
        server error says the archive is there (a STOW-only endpoint may answer 404 or 405)."""
        try:
            response = self._search()
        except (httpx.HTTPError, ValueError) as error:
            return False, self._unreachable(error)
        if response.status_code in (401, 403) or response.status_code >= 500:
            return False, f"QIDO-RS: {_http_failure(response, self.destination)}"
        return True, f"QIDO-RS answered HTTP {response.status_code}"

    def _search(self) -> httpx.Response:
        return self.client.get(f"{self.root}/studies", params={"limit": "1"},
                               headers=self._headers({"Accept": "application/dicom+json"}))

    def send(self, parcels: Sequence[Parcel], settle: Settle) -> str | None:
        for parcel in parcels:
            try:
                outcome = self._send_parcel(parcel)
            except (httpx.TransportError, ValueError) as error:
                return self._why_not(error)
            except OSError as error:  # a result file that went while it was read fails its delivery alone
                outcome = Outcome(f"{type(error).__name__}: {error}"[:500], local=True)
            settle(parcel, outcome)
        return None

    def _why_not(self, error: Exception) -> str:
        """A server that refuses the request may answer before it has read the body and close
        the connection (Orthanc does on a wrong password): the body's write then fails without
        an answer. A small request then asks it why."""
        if isinstance(error, (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError)):
            try:
                response = self._search()
            except (httpx.HTTPError, ValueError):
                return self._unreachable(error)
            if response.status_code in (401, 403):
                return _http_failure(response, self.destination)
        return self._unreachable(error)

    def _send_parcel(self, parcel: Parcel) -> Outcome:
        gone = [f.path for f in parcel.files if not f.path.exists()]
        if gone:
            return Outcome(f"result file {gone[0]} is gone from the spool", local=True)
        url = f"{self.root}/studies/{parcel.study_uid}" if parcel.study_uid else f"{self.root}/studies"
        size = self.destination.instances_per_request
        requests = [(files, self._requests.submit(self._post, url, files))
                    for files in (parcel.files[start:start + size] for start in range(0, len(parcel.files), size))]
        try:
            refused = self._read_answers(parcel, requests)
        except Exception:
            for _, request in requests:
                request.cancel()
            raise
        if isinstance(refused, Outcome):
            return refused
        if refused:
            return Outcome(f"STOW-RS refused {len(refused)} of {len(parcel.files)} objects: "
                           + "; ".join(refused[:3])[:450])
        return Outcome()

    def _read_answers(self, parcel: Parcel, requests: list[tuple[Sequence[ResultFile], Future[httpx.Response]]]
                      ) -> list[str] | Outcome:
        """The refused instances of every request, in order; an Outcome when a request as a whole
        failed (the requests not yet started are cancelled). Raises what a request raised."""
        refused: list[str] = []
        for files, request in requests:
            response = request.result()
            if response.status_code not in (200, 202, 400, 409):
                for _, later in requests:
                    later.cancel()
                return Outcome(_http_failure(response, self.destination))
            problems, warnings = _per_instance(response, files)
            if warnings:
                logs.warning("delivery.stow_warning", delivery=parcel.delivery.id, destination=self.destination.name,
                             warnings=warnings[:10])
            refused += problems
        return refused

    def _post(self, url: str, files: Sequence[ResultFile]) -> httpx.Response:
        boundary = uuid.uuid4().hex
        heads = [f"--{boundary}\r\nContent-Type: {_PART_TYPE}\r\n\r\n".encode() for _ in files]
        tail = f"--{boundary}--\r\n".encode()
        length = sum(len(h) + f.path.stat().st_size + 2 for h, f in zip(heads, files, strict=True)) + len(tail)
        headers = self._headers({
            "Content-Type": f'multipart/related; type="{_PART_TYPE}"; boundary={boundary}',
            "Content-Length": str(length), "Accept": "application/dicom+json"})
        return self.client.post(url, content=_body(heads, files, tail), headers=headers)

    def _headers(self, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` with the Authorization of ``auth`` (its file read now: a rotated token is
        used at once); ValueError names what is wrong with the file."""
        if self.destination.auth is not None:
            headers["Authorization"] = self.destination.auth.header()
        return headers

    def _unreachable(self, error: Exception) -> str:
        if isinstance(error, ValueError):
            return f"auth.file: {error}"
        check = ("its certificate verify against ca_file" if self.destination.ca_file is not None
                 else "its certificate verify against the system's trust store (or set ca_file)")
        tls = f", and does {check}" if self.root.startswith("https://") else ""
        return (f"no HTTP answer from {self.destination.where} ({type(error).__name__}: {error}; "
                f"is it running and reachable{tls}?)")[:500]


def _body(heads: Sequence[bytes], files: Sequence[ResultFile], tail: bytes) -> Iterator[bytes]:
    for head, result in zip(heads, files, strict=True):
        yield head
        with result.path.open("rb") as stream:
            while block := stream.read(_BLOCK):
                yield block
        yield b"\r\n"
    yield tail


def _http_failure(response: httpx.Response, destination: DicomwebDestination) -> str:
    status = response.status_code
    hint = {401: "the server refused our credentials (check auth and its file)",
            403: "the server refused this client (check auth and its file, and the archive's permissions)",
            404: "no STOW-RS service at this url (check the DICOMweb root, e.g. .../dicom-web)",
            413: f"request too large: lower instances_per_request ({destination.instances_per_request})",
            415: "the server does not take multipart/related application/dicom"}.get(status)
    if 300 <= status < 400:
        hint = f"redirected to {response.headers.get('location', '?')}: give that url"
    return f"STOW-RS HTTP {status}" + (f": {hint}" if hint else f" {response.reason_phrase}")


def _per_instance(response: httpx.Response, files: Sequence[ResultFile]) -> tuple[list[str], list[str]]:
    """(refusals, warnings) of one STOW-RS response, one line per instance, read from its
    FailedSOPSequence and ReferencedSOPSequence. An instance the answer does not name is refused
    too, unless a 200 carries no per-instance answer at all (the request was taken whole)."""
    answer = _response_dataset(response)
    failed = {str(item.get("ReferencedSOPInstanceUID", "")): item
              for item in answer.get("FailedSOPSequence", None) or []}
    stored = {str(item.get("ReferencedSOPInstanceUID", "")): item
              for item in answer.get("ReferencedSOPSequence", None) or []}
    if response.status_code == 200 and not failed and not stored:
        return [], []
    refusals, warnings = [], []
    for result in files:
        if result.sop_uid in failed:
            refusals.append(f"{result.sop_uid}: FailureReason {_reason(failed[result.sop_uid].get('FailureReason'))}")
        elif result.sop_uid not in stored:
            refusals.append(f"{result.sop_uid}: not in the server's answer (HTTP {response.status_code})")
        elif "WarningReason" in stored[result.sop_uid]:
            warnings.append(f"{result.sop_uid}: WarningReason {_reason(stored[result.sop_uid].WarningReason)}")
    return refusals, warnings


def _response_dataset(response: httpx.Response) -> pydicom.Dataset:
    """The Store Instances Response as a data set; empty when the server sent no DICOM JSON."""
    try:
        return pydicom.Dataset.from_json(response.json())
    except Exception:  # noqa: BLE001 (XML, HTML or nothing: no per-instance answer to read)
        return pydicom.Dataset()


def _reason(code: Any) -> str:
    if code is None:
        return "(none given)"
    return f"0x{int(code):04X} ({_REASONS.get(int(code), 'unknown code')})"
