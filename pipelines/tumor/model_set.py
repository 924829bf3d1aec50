"""The model a study is segmented with, chosen by the contrasts that arrived.

One network trained with contrast dropout can lean on FLAIR and T2 so much that it is worse with
T1c alone than a model that never had them, so a folder may name other folders for exact contrast
sets (``[[reduced]] contrasts = [...]``, ``folder = "..."``); every other set goes to its own
model, all loaded once with the pipeline. What each set scored held out is declared by the folder
serving it (``[[validated]]``, ``params.Validated``); ``validation`` decides from it whether a
result is a measurement. A MONAI bundle has no such table: it runs as published on the contrasts
it names, all required, and is taken as validated by its publisher.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from pipelines.model_folder import inner_folder, is_monai_bundle, load_params, require_folder
from pipelines.tumor.bundle_segmentation import BundleSegmenter
from pipelines.tumor.inference import Segmenter
from pipelines.tumor.params import TumorParams, Validated
from pipelines.tumor.segmented import TumorSegmenter

#: What the summary and the SR call the folder's own model.
MAIN_MODEL = "main"


@dataclass(frozen=True)
class ModelSet:
    """The folder's own model and the reduced models it names, keyed by exact contrast set."""

    main: TumorSegmenter
    reduced: dict[frozenset[str], tuple[str, Segmenter]]
    #: held-out results per exact contrast set, each from the folder serving it; None for a bundle
    validated: dict[frozenset[str], Validated] | None = None

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> ModelSet:
        folder = require_folder(folder)
        if is_monai_bundle(folder):
            return cls(BundleSegmenter.load(folder, device), {})
        main = Segmenter.load(folder, device)
        params = load_params(folder, TumorParams)
        reduced: dict[frozenset[str], tuple[str, Segmenter]] = {}
        validated: dict[frozenset[str], Validated] = {}
        for entry in params.reduced:  # contrast sets checked there
            sub_folder = inner_folder(folder, entry.folder, "[[reduced]] folder")
            contrasts = frozenset(entry.contrasts)
            reduced[contrasts] = (entry.folder, Segmenter.load(sub_folder, device))
            validated |= _declared(load_params(sub_folder, TumorParams), {contrasts})
        validated |= _declared(params, None, exclude=set(reduced))
        return cls(main, reduced, validated)

    def for_contrasts(self, roles: Iterable[str]) -> tuple[str, TumorSegmenter]:
        """The name of the model for exactly these contrasts, and the model."""
        return self.reduced.get(frozenset(roles), (MAIN_MODEL, self.main))


def _declared(params: TumorParams, only: Collection[frozenset[str]] | None,
              exclude: Collection[frozenset[str]] = ()) -> dict[frozenset[str], Validated]:
    """A folder's ``[[validated]]`` tables for the sets it serves: a folder's result on a set
    that another folder serves says nothing about what the study gets."""
    found = {frozenset(entry.contrasts): entry for entry in params.validated}
    return {contrasts: entry for contrasts, entry in found.items()
            if (only is None or contrasts in only) and contrasts not in exclude}
