"""Put result objects on disk so that the dispatcher only ever sees complete files."""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

#: fsync releases the GIL, so a few writer threads hide the disk's flush latency.
WRITER_THREADS = 4
#: Results carry the patient's name and IDs: owner and group only, whatever the umask.
RESULT_MODE = 0o640


@dataclass(frozen=True)
class WrittenObject:
    """What the writer knew of a file it wrote: all the node records of a result and all the
    dispatcher needs to offer it, so no one reads the file back before the C-STORE sends it."""

    path: Path
    sop_uid: str
    sop_class: str
    series_uid: str
    study_uid: str
    transfer_syntax: str

    @classmethod
    def of(cls, dataset: Dataset, path: Path) -> WrittenObject:
        """The record of ``dataset`` (with its file meta) as written at ``path``."""
        return cls(path, str(dataset.SOPInstanceUID), str(dataset.SOPClassUID),
                   str(dataset.SeriesInstanceUID), str(dataset.StudyInstanceUID),
                   str(dataset.file_meta.TransferSyntaxUID))


def write_datasets(datasets: Iterable[Dataset], directory: Path) -> list[WrittenObject]:
    """Write each object as ``<SOPInstanceUID>.dcm`` via a temporary name, fsync'd then renamed.

    A crash mid-write leaves only a ``.tmp`` file, never a truncated ``.dcm`` that a restart
    would deliver to the PACS. The records come back in the order of ``datasets``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(WRITER_THREADS) as pool:
        return list(pool.map(lambda dataset: write_dataset(dataset, directory), datasets))


def write_dataset(dataset: Dataset, directory: Path) -> WrittenObject:
    """One object written as ``write_datasets`` writes each (``directory`` must exist)."""
    final = directory / f"{dataset.SOPInstanceUID}.dcm"
    temporary = final.with_suffix(".tmp")
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, RESULT_MODE), "wb") as handle:
        dataset.save_as(handle, enforce_file_format=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    return WrittenObject.of(dataset, final)
