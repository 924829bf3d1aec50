"""A corpus of hostile C-STORE payloads, generated in code from real files in ../shared/data.

Each probe is a data set's bytes plus the presentation context and command UIDs to send it
with. The mutations are the structural ways a data set can lie: truncation at element
boundaries, sequences nested up to 10,000 deep, undefined lengths without delimiters, lengths
past the end, wrong VRs, duplicated and out-of-order tags, odd lengths, huge multiplicity,
non-ASCII and over-long UIDs, pixel data shorter than Rows x Columns, explicit VR bytes sent as
implicit, an unknown transfer syntax UID and a JPEG one on native pixel data, random byte flips;
and the malformed files that ship in ../shared/data/malformed.
Deterministic for a given seed, so a failing probe can be replayed by its name.
"""

from __future__ import annotations

import copy
import hashlib
import io
import random
import re
import struct
import subprocess
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from node.receive.spool import part10_header
from tests.support.peers import dcmtk_bin, dcmtk_env
from tests.support.raw_scu import exchange
from training.data_folder import DATA_ROOT

DATA = DATA_ROOT
SEEDS = (
    DATA / "ct-chest" / "cptac-luad-C3N-00247" / "000000.dcm",
    DATA / "reference-seg-sr" / "highdicom" / "sr_document_with_multiple_groups.dcm",
    DATA / "reference-seg-sr" / "highdicom" / "seg_image_ct_binary.dcm",
)
MALFORMED = DATA / "malformed" / "pydicom-test-files"


@dataclass(frozen=True)
class Probe:
    name: str
    sop_class: str
    transfer_syntax: str
    payload: bytes
    sop_uid: str


def nested_sequences(levels: int, delimited: bool = True) -> bytes:
    """(0040,0275) nested ``levels`` deep with undefined lengths, implicit VR."""
    opening = b"\x40\x00\x75\x02\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return opening * levels + (closing * levels if delimited else b"")


def element_chunks(ds: Dataset, implicit: bool) -> list[tuple[int, bytes]]:
    """The top-level elements of ``ds`` encoded one by one: (tag, bytes), in tag order."""
    return [(int(elem.tag), encode(Dataset({elem.tag: elem}), implicit, True)) for elem in ds]


def _with_length(chunk: bytes, length: int, implicit: bool) -> bytes:
    """``chunk`` with its length field replaced (4-byte fields only in explicit VR long form)."""
    if implicit:
        return chunk[:4] + struct.pack("<I", length) + chunk[8:]
    if chunk[4:6] in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL"):
        return chunk[:8] + struct.pack("<I", length) + chunk[12:]
    return chunk[:6] + struct.pack("<H", min(length, 0xFFFF)) + chunk[8:]


def seed_probes(path: Path, rng: random.Random) -> Iterator[Probe]:
    ds = pydicom.dcmread(path)
    ds.file_meta = None
    sop_class, sop_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    stem = path.stem

    def probe(name: str, payload: bytes, syntax: str = ImplicitVRLittleEndian, uid: str = sop_uid) -> Probe:
        return Probe(f"{stem}:{name}", sop_class, syntax, payload, uid)

    for implicit, syntax in ((True, ImplicitVRLittleEndian), (False, ExplicitVRLittleEndian)):
        chunks = element_chunks(ds, implicit)
        whole = b"".join(c for _, c in chunks)
        ends = [sum(len(c) for _, c in chunks[:i + 1]) for i in range(len(chunks))]
        for i in sorted(rng.sample(range(len(ends) - 1), min(10, len(ends) - 1))):
            yield probe(f"truncated-after-element-{i}-{syntax.name}", whole[:ends[i]], syntax)
            yield probe(f"truncated-inside-element-{i + 1}-{syntax.name}", whole[:ends[i] + 5], syntax)
        for i in rng.sample(range(len(chunks)), min(3, len(chunks))):
            for length in (len(whole) + 1000, 0xFFFFFFF0):
                mutated = [c if j != i else _with_length(c, length, implicit) for j, (_, c) in enumerate(chunks)]
                yield probe(f"length-{length}-at-element-{i}-{syntax.name}", b"".join(mutated), syntax)
        if implicit:
            i = rng.randrange(len(chunks))
            odd = [c if j != i else _with_length(c + b"\x00", len(c) - 8 + 1, True)
                   for j, (_, c) in enumerate(chunks)]
            yield probe(f"odd-length-at-element-{i}", b"".join(odd), syntax)
        twice = [c for _, c in chunks[:4]] + [chunks[3][1]] + [c for _, c in chunks[4:]]
        yield probe(f"duplicated-element-{syntax.name}", b"".join(twice), syntax)
        swapped = [c for _, c in chunks]
        swapped[1], swapped[-2] = swapped[-2], swapped[1]
        yield probe(f"out-of-order-elements-{syntax.name}", b"".join(swapped), syntax)
        for levels in (65, 1000, 10_000):
            position = next((k for k, (tag, _) in enumerate(chunks) if tag > 0x00400275), len(chunks))
            inserted = (b"".join(c for _, c in chunks[:position]) + nested_sequences(levels) +
                        b"".join(c for _, c in chunks[position:]))
            if implicit:
                yield probe(f"nested-{levels}", inserted, syntax)
        yield probe(f"undefined-length-without-delimiters-{syntax.name}",
                    whole + nested_sequences(3, delimited=False), syntax)
        for k in range(8):
            flipped = bytearray(whole)
            for _ in range(rng.randint(1, 16)):
                flipped[rng.randrange(min(len(flipped), 4096))] = rng.randrange(256)
            yield probe(f"byte-flips-{k}-{syntax.name}", bytes(flipped), syntax)
    explicit = [c for _, c in element_chunks(ds, False)]
    for vr in (b"ZZ", b"SQ", b"OB", b"\x00\x00"):
        i = rng.randrange(1, len(explicit))
        wrong = [c if j != i else c[:4] + vr + c[6:] for j, c in enumerate(explicit)]
        yield probe(f"wrong-vr-{vr!r}-at-element-{i}", b"".join(wrong), ExplicitVRLittleEndian)
    yield probe("explicit-bytes-in-implicit-context", b"".join(explicit), ImplicitVRLittleEndian)
    yield probe("unknown-transfer-syntax-uid", b"".join(explicit), "1.2.840.10008.1.2.4.9999")
    yield probe("jpeg-transfer-syntax-on-native-pixel-data", b"".join(explicit), JPEGBaseline8Bit)
    for name, change in (
        ("huge-multiplicity", lambda d: setattr(d, "ImageType", ["DERIVED"] * 50_000)),
        ("non-ascii-study-uid", lambda d: setattr(d, "StudyInstanceUID", "1.2.840.\u00e9\u00e9")),
        ("over-long-series-uid", lambda d: setattr(d, "SeriesInstanceUID", "1." + "3" * 80)),
        ("pixel-data-shorter-than-rows-x-columns",
         lambda d: setattr(d, "PixelData", d.PixelData[:1000]) if "PixelData" in d else None),
    ):
        changed = copy.deepcopy(ds)
        change(changed)
        yield probe(name, encode(changed, True, True))


def malformed_probes() -> Iterator[Probe]:
    """The malformed files in ../shared/data/malformed, as their own SOP class and syntax say."""
    for path in sorted(p for p in MALFORMED.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        try:
            meta = pydicom.filereader.read_file_meta_info(path)
            sop_class = str(meta.MediaStorageSOPClassUID)
            syntax = str(meta.TransferSyntaxUID)
            with open(path, "rb") as stream:
                pydicom.filereader.read_preamble(stream, False)
                pydicom.filereader._read_file_meta_info(stream)
                payload = stream.read()
            sop_uid = str(meta.get("MediaStorageSOPInstanceUID", "1.2.3"))
        except Exception:  # no file meta at all: send the bytes as a CT in implicit VR
            sop_class, syntax, payload, sop_uid = "1.2.840.10008.5.1.4.1.1.2", ImplicitVRLittleEndian, raw, "1.2.3"
        if not sop_class.startswith("1.2.840.10008.5.1.4.1.1"):
            sop_class = "1.2.840.10008.5.1.4.1.1.2"
        yield Probe(f"malformed:{path.relative_to(MALFORMED)}", sop_class, syntax, payload, sop_uid[:64] or "1.2.3")


def corpus(seed: int = 23, byte_flip_rounds: int = 1) -> list[Probe]:
    rng = random.Random(seed)
    probes = [p for _ in range(byte_flip_rounds) for path in SEEDS for p in seed_probes(path, rng)]
    return probes + list(malformed_probes())


class Sender:
    """Sends probes over one association at a time, kept open while the (SOP class, transfer
    syntax) stays the same and reopened after the node aborts it. An outcome is a status, "aborted", "context rejected" or
    "association rejected"; a probe that got no outcome within the DIMSE timeout raises."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.port = port
        self.timeout = timeout
        self._open: dict[tuple[str, str], object] = {}

    def send(self, probe: Probe) -> str:
        key = (probe.sop_class, probe.transfer_syntax)
        assoc = self._open.get(key)
        if assoc is None or not assoc.is_established:
            self.close()  # one association at a time: the node's max_associations must not decide
            ae = AE("FUZZER")
            ae.dimse_timeout = ae.acse_timeout = ae.network_timeout = self.timeout
            ae.add_requested_context(probe.sop_class, [probe.transfer_syntax])
            assoc = ae.associate("127.0.0.1", self.port, ae_title="RADNODE")
            if not assoc.is_established:
                return "association rejected"
            self._open[key] = assoc
        if not assoc.accepted_contexts:
            return "context rejected"
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = probe.sop_class
        request._affected_sop_instance_uid = probe.sop_uid
        request.Priority = 2
        request.DataSet = io.BytesIO(probe.payload)
        response = exchange(assoc, request, assoc.accepted_contexts[0].context_id)
        if response is None:
            if assoc.is_established:
                raise TimeoutError(f"{probe.name}: no answer within {self.timeout} s")
            return "aborted"
        return f"0x{int(response.Status):04X}"

    def close(self) -> None:
        for assoc in self._open.values():
            if assoc.is_established:
                assoc.release()
        self._open.clear()


def kind(name: str) -> str:
    """A probe's mutation without its seed file and element numbers: a row of the probe table."""
    if name.startswith("malformed:"):
        return "malformed file from ../shared/data/malformed"
    mutation = name.split(":", 1)[1]
    mutation = re.sub(r"-(Implicit|Explicit) VR Little Endian$", "", mutation)
    if not mutation.startswith("nested"):  # there the number is the depth
        mutation = re.sub(r"-at-element-\d+$|-\d+$", "", mutation)
    return re.sub(r"length-\d+", "length-past-the-end" if "4294967280" not in mutation else "length-0xFFFFFFF0",
                  mutation)


def probe_file(probe: Probe, folder: Path) -> Path:
    """The probe as a file storescu can be given: a malformed file as it ships, a generated
    payload behind a file meta that names its SOP class, instance and transfer syntax."""
    if probe.name.startswith("malformed:"):
        return MALFORMED / probe.name.split(":", 1)[1]
    path = folder / f"{hashlib.sha1(probe.name.encode()).hexdigest()}.dcm"
    path.write_bytes(part10_header(probe.sop_class, probe.sop_uid, probe.transfer_syntax, "FUZZER") + probe.payload)
    return path


def storescu_outcome(port: int, path: Path, timeout: float = 60) -> str:
    """Send one file with dcmtk storescu: its DIMSE status ("0xC000"), "aborted" when the node
    ended the association instead, "storescu refused" when storescu would not send the file
    (it reads and checks each file before it sends), or "no answer"."""
    run = subprocess.run([dcmtk_bin("storescu"), "-d", "--required", "-aec", "RADNODE", "127.0.0.1", str(port),
                          str(path)], capture_output=True, env=dcmtk_env(), timeout=timeout)
    output = (run.stdout + run.stderr).decode(errors="replace")
    if status := re.search(r"DIMSE Status\s*: 0x([0-9a-fA-F]{4})", output):
        return f"0x{status.group(1).upper()}"
    if "Sending Store Request" not in output or "unable to convert dataset" in output:
        return "storescu refused"  # never sent, or (compressed, no codec) aborted by storescu itself
    if re.search(r"Peer aborted|Peer Requested Abort|connection closed|Broken pipe|reset by peer",
                 output, re.IGNORECASE):
        return "aborted"
    return "no answer"


def sample(probes: list[Probe], per_kind: int = 4, malformed_every: int = 3) -> list[Probe]:
    """A few probes of every kind and every n-th malformed file: all rows of the table, fewer sends."""
    taken: Counter[str] = Counter()
    chosen = []
    for number, probe in enumerate(probes):
        row = kind(probe.name)
        if probe.name.startswith("malformed:"):
            if number % malformed_every == 0:
                chosen.append(probe)
        elif taken[row] < per_kind:
            taken[row] += 1
            chosen.append(probe)
    return chosen


def outcome_table(outcomes: Iterable[tuple[str, str]]) -> str:
    """Outcome counts per kind of probe from (probe name, outcome) pairs, one line per kind:
    what was sent and what came back."""
    rows: dict[str, Counter[str]] = {}
    for name, outcome in outcomes:
        rows.setdefault(kind(name), Counter())[outcome] += 1
    return "\n".join(f"{k:45s} {sum(c.values()):4d}  {dict(sorted(c.items()))}" for k, c in sorted(rows.items()))
