"""Who made a result object: UIDs, manufacturer, software version and the algorithm.

Every object radnode writes must say the same thing about its origin, so that a PACS can tell
radnode's output from the scanner's and a site can trace a result to the model that produced it.
Keeping it in one place means the SEG, the SR and the derived series can never disagree.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, TypedDict

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from pipelines.writers.codes import PROCESSING_ALGORITHM

if TYPE_CHECKING:
    from pipelines.base import PipelineSettings

MANUFACTURER = "radnode"
MODEL_NAME = "radnode"
#: Leaves at least 24 random digits in a 64-character UID, enough to never collide in practice.
MAX_UID_ROOT_LENGTH = 40
_UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.?$")


@cache
def software_version() -> str:
    """The installed radnode version; a source checkout that was never installed says so.
    Looked up once: each look-up reads the package metadata (2 ms, twice per derived slice)."""
    try:
        return version("radnode")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class Algorithm:
    """The model behind a result, as SEG and SR identify it (family: Artificial Intelligence)."""

    name: str
    version: str
    #: (name, value) pairs of how this run was made, e.g. ("contrasts used", "T1c, FLAIR"):
    #: Algorithm Parameters in the SEG, "name: value" Algorithm Parameter items in the SR.
    parameters: tuple[tuple[str, str], ...] = ()

    def for_segmentation(self) -> hd.AlgorithmIdentificationSequence:
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=codes.DCM.ArtificialIntelligence,
            version=self.version,
            source=MANUFACTURER,
            parameters=dict(self.parameters) or None,
        )

    def for_report(self) -> hd.sr.AlgorithmIdentification:
        return hd.sr.AlgorithmIdentification(
            name=self.name,
            version=self.version,
            parameters=[f"{key}: {value}" for key, value in self.parameters] or None,
        )


class NewObject(TypedDict):
    """``Identity.new_object``: the keyword arguments, typed as highdicom takes them."""

    series_instance_uid: str
    series_number: int
    sop_instance_uid: str
    instance_number: int
    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str


@dataclass(frozen=True)
class Identity:
    """The node as the creator of objects: its UID root and how it names itself.

    ``uid_root`` is the site's own OID (config ``uid_root``); pydicom's root is only a fallback
    for tests and trials, because UIDs under it are not traceable to the site.
    """

    uid_root: str | None = None
    station_name: str = field(default_factory=socket.gethostname)
    #: sha256 of the model folder the objects come from (``folder_digest``): it names the model
    #: as a device, so that a PACS sees a new Device UID whenever the weights change
    model_sha256: str | None = None

    def __post_init__(self) -> None:
        root = self.uid_root
        if root is not None and (not _UID_ROOT.match(root) or len(root) > MAX_UID_ROOT_LENGTH):
            raise ValueError(
                f"uid_root {root!r} is not a usable UID root: use your organisation's OID, digits "
                f"separated by dots without leading zeros, at most {MAX_UID_ROOT_LENGTH} "
                "characters (for example '1.2.826.0.1.3680043.10.1234')"
            )

    @property
    def prefix(self) -> str:
        root = self.uid_root or PYDICOM_ROOT_UID
        return root if root.endswith(".") else root + "."

    def new_uid(self) -> str:
        return generate_uid(prefix=self.prefix)

    @property
    def device_uid(self) -> str:
        """Stable per node, so that SR observer contexts of one node can be grouped."""
        return generate_uid(prefix=self.prefix, entropy_srcs=[MANUFACTURER, self.station_name])

    def model_device_uid(self, algorithm: Algorithm) -> str:
        """The model as a device (IHE AIR): the same UID for the same weights under one root, a
        new one when the model folder changes; without a digest, the algorithm's name and version
        stand in for it."""
        model = self.model_sha256 or f"{algorithm.name} {algorithm.version}"
        return generate_uid(prefix=self.prefix, entropy_srcs=[MANUFACTURER, "model", model])

    def processing_equipment(self, algorithm: Algorithm) -> hd.ContributingEquipment:
        """The Contributing Equipment item every result object carries (IHE AI Results): the
        algorithm that made it, its versions and its model's Device UID."""
        item = hd.ContributingEquipment(
            self.manufacturer,
            PROCESSING_ALGORITHM,
            manufacturer_model_name=algorithm.name[:64],
            software_versions=[self.software_versions[:64], algorithm.version[:64]],
            device_serial_number=self.station_name[:64],
            contribution_description=f"AI result: {algorithm.name} {algorithm.version}"[:64],
        )
        item.DeviceUID = self.model_device_uid(algorithm)
        return item

    @property
    def manufacturer(self) -> str:
        return MANUFACTURER

    @property
    def model_name(self) -> str:
        return MODEL_NAME

    @property
    def software_versions(self) -> str:
        return software_version()

    def new_object(self, series_number: int) -> NewObject:
        """The keyword arguments every highdicom SOP class takes to name a new object and its
        creator: fresh series and instance UIDs under the node's root, and the equipment."""
        return {
            "series_instance_uid": self.new_uid(),
            "series_number": series_number,
            "sop_instance_uid": self.new_uid(),
            "instance_number": 1,
            "manufacturer": self.manufacturer,
            "manufacturer_model_name": self.model_name,
            "software_versions": self.software_versions,
            "device_serial_number": self.station_name,
        }


def identity_of(settings: PipelineSettings, model_sha256: str | None = None) -> Identity:
    """The node's identity as its config gives it to a pipeline: its UID root and, where the
    pipeline runs on another machine (a Ray cluster), the node's name rather than that machine's;
    ``model_sha256`` is the digest of the model folder the pipeline runs."""
    if settings.station_name is None:
        return Identity(uid_root=settings.uid_root, model_sha256=model_sha256)
    return Identity(uid_root=settings.uid_root, station_name=settings.station_name, model_sha256=model_sha256)


def content_date_time(now: datetime | None = None) -> tuple[str, str]:
    """ContentDate and ContentTime of an object created now (local time, as modalities do)."""
    moment = now or datetime.now()
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")
