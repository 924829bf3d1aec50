"""The kinds of result object a destination can ask for (``[[destinations]] formats``).

Not every receiver wants everything a job writes: a PACS archives SEG, SR and presentation
states, while a viewer that shows only pictures wants the key images. A destination names the
kinds it takes, and a result file's kind is read from its SOP Class UID alone, which the index
records for every result: deciding needs no file opened. Shared at node/'s top level because
config validates the names and the run and deliver stages sort the files by them.
"""

from __future__ import annotations

from typing import Literal, get_args

ResultFormat = Literal["seg", "sr", "key-images", "gsps", "images"]
#: every kind, in the order people are told them; a destination without ``formats`` takes all
FORMATS: tuple[ResultFormat, ...] = get_args(ResultFormat)

#: Segmentation, Surface, Label Map and Height Map Segmentation Storage. The other classes under
#: .66 (raw data, registrations, fiducials, tractography) segment nothing: they are "images".
_SEGMENTATION_CLASSES = frozenset(f"1.2.840.10008.5.1.4.1.1.66.{n}" for n in (4, 5, 7, 8))
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: Secondary Capture: what viewers without SEG or SR support still show (key images)
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_PRESENTATION_STATE_PREFIX = "1.2.840.10008.5.1.4.1.1.11."


def format_of(sop_class: str) -> ResultFormat:
    """The kind of a result object of ``sop_class``; "images" for any class not named above
    (a derived CT series, say), so that every object belongs to exactly one kind."""
    if sop_class in _SEGMENTATION_CLASSES:
        return "seg"
    if sop_class.startswith(_SR_PREFIX):
        return "sr"
    if sop_class == _SECONDARY_CAPTURE or sop_class.startswith(f"{_SECONDARY_CAPTURE}."):
        return "key-images"
    if sop_class.startswith(_PRESENTATION_STATE_PREFIX):
        return "gsps"
    return "images"
