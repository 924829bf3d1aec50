"""What every shipped pipeline does when a worker loads it, written once.

A pipeline backed by a model folder finds the folder (the site's ``model``, else the weights that
ship beside the pipeline), picks the device, fingerprints the folder so that every output names the
exact weights used, and takes the node's identity for the objects it writes. Each pipeline then
loads its own model from ``self.model_dir`` onto ``self.device``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pipelines.base import Pipeline, PipelineSettings, resolve_device
from pipelines.model_folder import ModelFolderError, folder_digest
from pipelines.writers.identity import identity_of


class ModelPipeline(Pipeline):
    """A pipeline that runs the model in one folder: config.toml's ``model``, else ``shipped_model``."""

    #: The reference weights shipped with the pipeline, used when config.toml names no ``model``;
    #: None for a pipeline that only runs a site's model (an nnU-Net folder).
    shipped_model: ClassVar[Path | None] = None

    def __init__(self, settings: PipelineSettings) -> None:
        super().__init__(settings)
        model = Path(settings.model) if settings.model else self.shipped_model
        if model is None:
            raise ModelFolderError(f"{settings.name} ships no model: set [pipelines.{settings.name}] model to the "
                                   "folder it runs")
        self.model_dir = model
        self.device = resolve_device(settings.device)
        self.model_digest = folder_digest(self.model_dir)
        self.identity = identity_of(settings, self.model_digest)
