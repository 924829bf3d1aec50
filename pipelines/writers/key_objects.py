"""Key Object Selection of one result: the object by which a PACS flags a study as having AI results.

IHE AI Results asks for a KOS that references the objects of one result, so that a PACS or a
worklist can mark the study and open its key images and findings without reading every SR.
It names every object the job wrote (SEG, SR, key images, presentation state), each as it went
out, and the node's device as the observer, like the SR.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipelines.volume import Volume
from pipelines.writers.identity import Algorithm, Identity
from pipelines.writers.key_images import DISCLAIMER
from pipelines.writers.series import ResultKind, result_series_number
from pipelines.writers.sr import device_observer


def make_key_object_selection(
    volume: Volume,
    objects: Sequence[Dataset],
    algorithm: Algorithm,
    identity: Identity,
    *,
    series_number: int | None = None,
    series_description: str | None = None,
) -> hd.ko.KeyObjectSelectionDocument:
    """A KOS "Of Interest" over ``objects`` (the result of ``algorithm`` on ``volume``'s series)."""
    if not objects:
        raise ValueError("a Key Object Selection needs at least one result object: write the SR first")
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest,
        referenced_objects=objects,
        observer_device_context=device_observer(algorithm, identity),
        description=f"{algorithm.name} {algorithm.version}: {DISCLAIMER}"[:1024],
    )
    document = hd.ko.KeyObjectSelectionDocument(
        evidence=objects,
        content=content,
        **identity.new_object(series_number or result_series_number(volume.sources[0], ResultKind.KEY_OBJECTS)),
        series_description=(series_description or f"{algorithm.name} key objects")[:64],
        contributing_equipment=[identity.processing_equipment(algorithm)],
    )
    # TID 2010 leaves its references unnamed; highdicom names them "Source", which Pixelmed's
    # validator rejects (Purpose of Reference forbidden on rows 8 and 10).
    for item in document.ContentSequence:
        if item.ValueType in ("IMAGE", "COMPOSITE"):
            del item.ConceptNameCodeSequence
    return document


def with_key_objects(
    volume: Volume, objects: Sequence[Dataset], algorithm: Algorithm, identity: Identity,
    series_description: str | None = None,
) -> list[Dataset]:
    """``objects`` followed by their KOS: what a pipeline writes for one result."""
    return [*objects, make_key_object_selection(volume, objects, algorithm, identity,
                                                series_description=series_description)]
