"""Source headers as result objects may copy them: study-level sequences without invalid items.

highdicom copies the patient and study modules of the source into every SEG and SR, and a
derived series starts from the source's header, so whatever is invalid there becomes an error
in our object (seen: a ReferencedStudySequence item without ReferencedSOPClassUID, which makes
dciodvfy fail the SEG and the SR). Only items that carry what their macro requires are kept;
a sequence left empty is removed (these sequences are Type 3 in the patient and study modules).
"""

from __future__ import annotations

import copy
from collections.abc import Container, Iterable

from pydicom._dicom_dict import DicomDictionary
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from pipelines.volume import Volume

#: Root-level sequences whose items are SOP Instance References (PS3.3 Table 10-11).
_REFERENCE_SEQUENCES = ("ReferencedStudySequence", "ReferencedPatientSequence")
_REFERENCE_ATTRIBUTES = ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID")
#: A code item (PS3.3 Table 8.8-1) needs one of these, a scheme and a meaning.
_CODE_VALUES = ("CodeValue", "LongCodeValue", "URNCodeValue")
#: {tag: keyword} of the sequences checked: the reference sequences and every code sequence.
_CHECKED = {tag: entry[4] for tag, entry in DicomDictionary.items()
            if entry[4] in _REFERENCE_SEQUENCES or entry[4].endswith("CodeSequence")}


def copyable(source: Dataset) -> Dataset:
    """``source`` itself when it is clean (the usual case, no copy), else a cleaned copy."""
    if not any(_invalid_items(source).values()):
        return source
    clean = copy.deepcopy(source)
    drop_invalid_items(clean)
    return clean


def drop_invalid_items(dataset: Dataset) -> None:
    """Remove, in place, the root-level reference and code sequence items that lack required
    attributes, and any such sequence that is left empty."""
    for keyword, bad in _invalid_items(dataset).items():
        if not bad:
            continue
        kept = [item for n, item in enumerate(dataset[keyword].value) if n not in bad]
        if kept:
            dataset[keyword].value = kept
        else:
            del dataset[keyword]


def header_copy(source: Dataset, dropped: Container[int] = ()) -> Dataset:
    """A copy of ``source``'s top level without its private, group length and ``dropped`` tags.

    Raw (undecoded, immutable) elements are shared and decoded ones copied shallowly, so setting
    a value on the copy never reaches the source; sequence items are copied the same way. A
    ``copy.deepcopy`` of a CT header was most of the time it takes to write a derived slice."""
    kept = [tag for tag in source.keys() if not (tag.is_private or tag.element == 0 or tag in dropped)]
    return _copy_of(source, kept)


def _copy_of(dataset: Dataset, tags: Iterable[BaseTag]) -> Dataset:
    copied = Dataset()
    for tag in tags:
        element = dataset.get_item(tag)
        if element.is_raw:
            copied[tag] = element
        elif element.VR == "SQ":
            sequence = DataElement(tag, "SQ", [_copy_of(item, item.keys()) for item in element.value])
            sequence.is_undefined_length = element.is_undefined_length  # encoded as the source was
            copied[tag] = sequence
        else:
            copied[tag] = copy.copy(element)
    implicit, little = dataset.original_encoding
    copied.set_original_encoding(implicit, little, dataset.original_character_set)
    copied.is_undefined_length_sequence_item = dataset.is_undefined_length_sequence_item
    return copied


def _invalid_items(dataset: Dataset) -> dict[str, set[int]]:
    """{sequence keyword: indices of its invalid items} for the sequences checked here; the
    other elements are left undecoded (decoding a whole header costs more than the check)."""
    found: dict[str, set[int]] = {}
    for tag in dataset.keys() & _CHECKED.keys():
        element = dataset[tag]
        if element.VR != "SQ":
            continue
        keyword = _CHECKED[tag]
        valid = _is_reference if keyword in _REFERENCE_SEQUENCES else _is_code
        found[keyword] = {n for n, item in enumerate(element.value) if not valid(item)}
    return found


def _present(item: Dataset, keyword: str) -> bool:
    """True when the item holds a non-blank value; a raw value is read as its bytes, undecoded."""
    element = item.get_item(keyword)
    value = None if element is None else element.value
    if isinstance(value, bytes):
        return value.strip(b" \x00") != b""
    return str(value or "").strip() != ""


def _is_reference(item: Dataset) -> bool:
    return all(_present(item, k) for k in _REFERENCE_ATTRIBUTES)


def _is_code(item: Dataset) -> bool:
    return (any(_present(item, k) for k in _CODE_VALUES)
            and _present(item, "CodingSchemeDesignator") and _present(item, "CodeMeaning"))


def series_label(volume: Volume) -> str:
    """``series 3 "Chest 1.25mm" (300 images)``: how a report names the series it examined.

    Series number and description are what a radiologist sees in the viewer's series list; they
    carry no patient data (the description is the protocol's name).
    """
    first = volume.sources[0]
    number = first.get("SeriesNumber")
    description = str(first.get("SeriesDescription", "") or "").strip()
    named = f"series {number}" if number is not None else "the series"
    if description:
        named += f' "{description}"'
    return f"{named} ({volume.array.shape[0]} images)"
