"""Structured log lines (one JSON object per line) that never carry patient data.

Log events name what happened (``association.accepted``, ``series.complete``) and carry UIDs,
AE titles, counts and durations; the fields below are dropped whatever a caller passes, so a
careless ``log.info(..., PatientName=...)`` cannot leak into a hospital's log collector.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

#: Attributes that identify the patient; never written to a log line.
PHI_FIELDS = frozenset(
    {"PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "PatientAddress",
     "AccessionNumber", "ReferringPhysicianName"}
)

_LOGGER = logging.getLogger("radnode")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info and record.levelno >= logging.ERROR:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(line, default=str)


def setup(level: str = "info") -> None:
    """Send radnode's events to stderr as JSON lines; keep pynetdicom's chatter at warnings.

    pynetdicom's debug output dumps whole datasets (patient name included), so it stays off.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    _LOGGER.handlers[:] = [handler]
    _LOGGER.setLevel(level.upper())
    _LOGGER.propagate = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _emit(level: int, event: str, fields: dict[str, Any]) -> None:
    if _LOGGER.isEnabledFor(level):
        exc_info = fields.pop("exc_info", None)
        clean = {k: v for k, v in fields.items() if k not in PHI_FIELDS}
        _LOGGER.log(level, event, extra={"fields": clean}, exc_info=exc_info)


def info(event: str, **fields: Any) -> None:
    _emit(logging.INFO, event, fields)


def warning(event: str, **fields: Any) -> None:
    _emit(logging.WARNING, event, fields)


def error(event: str, **fields: Any) -> None:
    _emit(logging.ERROR, event, fields)
