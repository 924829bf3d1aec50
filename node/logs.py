"""Structured log lines (one JSON object per line) that never carry patient data.

Log events name what happened (``association.accepted``, ``series.complete``) and carry UIDs,
AE titles, counts and durations; the fields below are dropped whatever a caller passes, so a
careless ``log.info(..., PatientName=...)`` cannot leak into a hospital's log collector.

Libraries do not know this rule: highdicom's ``UserWarning`` quotes a single-component
PatientName, pydicom logs invalid values. Python warnings and every library logger therefore go
through the same handler, where their free text is scrubbed: quoted values are replaced, and so
is every patient value the process was told about (``protect``), quoted or not.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

#: Attributes that identify the patient; never written to a log line.
PHI_FIELDS = frozenset(
    {"PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "PatientAddress",
     "AccessionNumber", "ReferringPhysicianName"}
)
REDACTED = "<redacted>"
#: A quoted literal in a library's message: where libraries put the offending value.
_QUOTED = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'")
#: Values shorter than this (a "1", an "M") would blank out ordinary words and numbers.
_MIN_PROTECTED_LENGTH = 3

_LOGGER = logging.getLogger("radnode")
_protected: set[str] = set()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
        }
        if record.name == _LOGGER.name:
            line["event"] = scrub(record.getMessage())
            line.update({k: _scrub_value(v) for k, v in getattr(record, "fields", {}).items()})
        else:  # a library's or Python's own free text: it may quote any attribute value
            line["event"] = "python.warning" if record.name == "py.warnings" else "library.log"
            line["logger"] = record.name
            line["message"] = _scrub_library(record.getMessage())
        if record.exc_info and record.levelno >= logging.ERROR:
            error = self.formatException(record.exc_info).splitlines()[-1]
            # a library's exception quotes the offending value as its messages do
            line["error"] = scrub(error) if record.name == _LOGGER.name else _scrub_library(error)
        return json.dumps(line, default=str)


def setup(level: str = "info") -> None:
    """Send radnode's events, Python warnings and library logs to stderr as JSON lines.

    Called first thing in every process (CLI, supervisor, receivers, workers): a process that
    skips it would print warnings raw. pynetdicom's debug output dumps whole datasets (patient
    name included), so libraries stay at warnings.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    _LOGGER.handlers.clear()
    _LOGGER.setLevel(level.upper())
    _LOGGER.propagate = True
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.captureWarnings(True)


def protect(values: Iterable[object]) -> None:
    """Scrub these patient values (and a person name's components) from every later line.

    The worker calls it with the identifying attributes of each job's input before running the
    pipeline, so a library message that names them without quotes is still caught. Each call
    replaces the previous job's values, so the set stays as small as one job's patients.
    """
    _protected.clear()
    for value in values:
        text = str(value or "").strip()
        for part in {text, *re.split(r"[\^=]", text)}:
            part = part.strip()
            if len(part) >= _MIN_PROTECTED_LENGTH:
                _protected.add(part)


def scrub(text: str) -> str:
    for value in sorted(_protected, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def _scrub_library(text: str) -> str:
    """A library's free text with every quoted literal and protected value replaced."""
    return scrub(_QUOTED.sub(f'"{REDACTED}"', text))


def _scrub_value(value: Any) -> Any:
    return scrub(value) if isinstance(value, str) and _protected else value


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
