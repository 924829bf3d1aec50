"""``ct-denoise``: a CT series in, a denoised derived CT series of the same study out.

Radiologists read the result beside the original, so it is the same images in every respect but
the noise (``writers.derived`` copies each header), with new UIDs, a SeriesDescription saying
radnode denoised it and a reference from each slice to its source. The kernel family comes from
ConvolutionKernel when ``kernels`` knows the name, unless the noise reads sharp; else from the
measured noise (``kernels.series_family``). It picks the family's own weights where the folder has
them, and the summary says the family, its source and whose weights ran, so an administrator can
see how a vendor's kernel was read. Settings: README, ``[pipelines.ct-denoise]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from pydicom.multival import MultiValue

from pipelines.base import (
    SERIES_ROLE,
    InputSpec,
    JobInput,
    JobResult,
    NotApplicable,
    PipelineSettings,
)
from pipelines.denoise import contract
from pipelines.denoise.contract import DenoiseSummary
from pipelines.denoise.inference import DEFAULT_MODEL_DIR, Denoiser
from pipelines.denoise.kernels import series_family
from pipelines.model_pipeline import ModelPipeline
from pipelines.scanner_input import scanner_ct_volume
from pipelines.timing import StageClock
from pipelines.volume import Volume
from pipelines.writers.derived import Derivation, write_derived_series
from pipelines.writers.identity import Algorithm

SERIES_DESCRIPTION_PREFIX = "DENOISED by radnode"


class CTDenoise(ModelPipeline):
    """Residual-CNN noise reduction of a CT series, written as a derived series."""

    name: ClassVar[str] = "ct-denoise"
    inputs: ClassVar[tuple[InputSpec, ...]] = contract.INPUTS
    Options = contract.Options
    options: contract.Options
    shipped_model = DEFAULT_MODEL_DIR

    def __init__(self, settings: PipelineSettings) -> None:
        super().__init__(settings)
        self.denoiser = Denoiser.load(self.model_dir, self.device, self.options.batch_pixels,
                                       self.options.half_precision, self.options.strength)

    def run(self, job: JobInput) -> JobResult:
        clock = StageClock()
        volume = _ct_volume(list(job.series.get(SERIES_ROLE, ())))
        clock.lap("load")
        pixel_spacing = (volume.spacing[1], volume.spacing[0])
        family = series_family(_kernel_name(volume), volume.array, pixel_spacing[1])
        denoised = self.denoiser(volume.array, pixel_spacing, family.family)
        clock.lap("denoise")
        # Pixels below the model's input range are padding outside the reconstruction circle,
        # not anatomy: they keep their value so viewers still recognise them.
        outside = volume.array < self.denoiser.for_family(family.family).preprocessing.clip[0]
        denoised[outside] = volume.array[outside]
        source_description = str(volume.sources[0].get("SeriesDescription", "")).strip()
        derivation = Derivation(
            Algorithm(f"radnode {self.name}", f"model sha256 {self.model_digest[:16]}"),
            f"{SERIES_DESCRIPTION_PREFIX} {source_description}".strip(),
            f"Noise reduction by radnode {self.name} (residual CNN, model folder {self.model_dir.name}, "
            f"sha256 {self.model_digest[:16]}); pixel data only, geometry and rescale unchanged",
        )
        outputs = write_derived_series(volume, denoised, self.identity, derivation, job.output_dir)
        clock.lap("write")
        return JobResult.written(
            outputs,
            summary=DenoiseSummary(
                slices=len(outputs),
                device=self.device,
                model_sha256=self.model_digest,
                mean_abs_change_hu=round(_mean_abs_change(denoised, volume.array), 2),
                kernel_family=family.family,
                kernel_family_source=family.source,
                kernel_family_named=family.named,
                weights=self.denoiser.weights_for(family.family),
                strength=self.options.strength,
                seconds=clock.laps,
            ),
        )


def _ct_volume(paths: list[Path]) -> Volume:
    volume = scanner_ct_volume(paths, "ct-denoise")
    if volume.is_multiframe:
        raise NotApplicable("enhanced multi-frame CT: derived series are written for single-frame CT only")
    return volume


def _kernel_name(volume: Volume) -> str | None:
    """The series' ConvolutionKernel (the first value of a multi-valued one), if it has one."""
    kernel = volume.sources[0].get("ConvolutionKernel")
    if kernel is None:
        return None
    return str(kernel[0] if isinstance(kernel, MultiValue) else kernel)


def _mean_abs_change(after: np.ndarray, before: np.ndarray) -> float:
    """Mean |change| in HU, a slice at a time so a long series needs no third full-size array."""
    return float(np.mean([np.abs(a - b).mean() for a, b in zip(after, before)]))
