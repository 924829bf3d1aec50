"""A MONAI segmentation bundle (``brats_mri_segmentation``) run as published on a brain MR study.

Its preprocessing, inferer and postprocessing (down to the ``Lambdad`` mapping TC/WT/ET to BraTS
labels 1/2/4) run as configured (``pipelines.bundle_runner``). radnode adds only what its loader
would do with four co-registered files: the contrasts registered to the reference series, zero
outside its extracted brain (the bundle expects skull-stripped input), on one LPS grid at the
spacing the bundle resamples to or states, stacked in its ``channel_def`` order; and the label map
back onto the reference series as SEG segments and SR volumes. Every contrast the bundle names
must have arrived: it is not fed zero channels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipelines.base import NotApplicable
from pipelines.bundle import BundleError
from pipelines.bundle_runner import BundleRunner, affine_lps
from pipelines.timing import StageClock
from pipelines.tumor.contrasts import CHANNELS
from pipelines.tumor.preprocess import model_grid, resample
from pipelines.tumor.segmented import AlignedStudy, NetworkSteps, Segmented
from pipelines.tumor.validation import DISPLAY
from pipelines.writers.identity import Algorithm

#: Channel names bundles use for each of radnode's contrast roles (compared lower-case, alphanumeric).
CHANNEL_NAMES = {
    "t1c": ("t1c", "t1ce", "t1gd", "t1post", "t1contrast"),
    "t1": ("t1", "t1w", "t1native"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2flair"),
}
#: Label values of the BraTS convention a bundle's label map may hold (0 is background).
BRATS_LABELS = (0, 1, 2, 4)
_SPACING_TEXT = re.compile(r"(\d+(?:\.\d+)?)\s*x\s*(\d+(?:\.\d+)?)\s*x\s*(\d+(?:\.\d+)?)\s*mm", re.IGNORECASE)


@dataclass
class BundleSegmenter:
    """A loaded segmentation bundle: ``segment(...)`` gives BraTS labels on the reference grid."""

    runner: BundleRunner
    #: radnode roles in the order of the bundle's input channels.
    roles: tuple[str, ...]
    spacing: float

    @classmethod
    def load(cls, folder: Path, device: str) -> BundleSegmenter:
        runner = BundleRunner.load(folder, device)
        return cls(runner, channel_roles(runner), input_spacing(runner))

    def segment(self, images: Mapping[str, sitk.Image], transforms: Mapping[str, sitk.Transform],
                reference_role: str, brain: sitk.Image, clock: StageClock | None = None) -> np.ndarray:
        """BraTS labels (1, 2, 4) on the reference image's grid (z, y, x) from aligned contrasts.

        ``brain`` (on the reference image's grid) strips every contrast on the bundle's grid, as
        the bundle's skull-stripped training data were: its ``NormalizeIntensityd(nonzero=True)``
        then takes its statistics over the brain alone, in every channel.
        """
        clock = clock or StageClock()
        reference = images[reference_role]
        grid = model_grid(reference, self.spacing)
        inside = sitk.GetArrayFromImage(resample(brain, grid, nearest=True)) > 0
        stacked = np.stack([
            np.transpose(np.where(inside, sitk.GetArrayFromImage(resample(images[role], grid, transforms.get(role))),
                                  np.float32(0)), (2, 1, 0))
            for role in self.roles
        ])
        affine = affine_lps(np.asarray(grid.GetOrigin()), np.asarray(grid.GetSpacing()),
                            np.asarray(grid.GetDirection()).reshape(3, 3))
        clock.lap("preprocessing")
        result = self.runner.run(self.runner.loader_image(stacked, affine))
        clock.lap("inference")
        labels = label_map(result[self.runner.output_key], self.runner)
        on_reference = sitk.GetArrayFromImage(sitk.Resample(
            labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8))
        clock.lap("postprocessing")
        return on_reference.astype(np.uint8)

    def require_contrasts(self, present: Sequence[str], left_out: Mapping[str, str] | None = None) -> None:
        """A bundle gets every contrast it was trained on, or the job is not applicable."""
        missing = [role for role in self.roles if role not in present]
        if missing:
            why = {role: f" ({reason})" for role, reason in (left_out or {}).items()}
            raise NotApplicable(
                f"the MONAI bundle {self.runner.label} needs {', '.join(DISPLAY[r] for r in self.roles)}; "
                f"the study lacks {', '.join(DISPLAY[r] + why.get(r, '') for r in missing)}"
            )

    def segmentation(self, study: AlignedStudy, network: NetworkSteps) -> Segmented:
        """The bundle's own steps, named in the results by its name and version."""
        labels = self.segment(study.images, study.transforms, study.reference_role, study.brain, study.clock)
        labels[sitk.GetArrayViewFromImage(study.brain) == 0] = 0  # nothing outside the brain, ever
        bundle = self.runner.bundle
        return Segmented(labels, Algorithm(name=bundle.name, version=bundle.version, parameters=(
            *study.parameters, ("MONAI bundle", bundle.label), ("model sha256", study.model_digest[:16]))),
            bundle.label)


def channel_roles(runner: BundleRunner) -> tuple[str, ...]:
    """radnode's role for each of the bundle's input channels; refused when one is unknown."""
    roles = []
    for name in runner.channels:
        key = re.sub(r"[^a-z0-9]", "", name.lower())
        role = next((r for r, names in CHANNEL_NAMES.items() if key in names), None)
        if role is None or role in roles:
            raise BundleError(
                f"{runner.bundle.folder}: metadata network_data_format inputs channel_def names {list(runner.channels)}; "
                f"radnode feeds each of {', '.join(CHANNELS)} once, named as in {CHANNEL_NAMES}"
            )
        roles.append(role)
    return tuple(roles)


def input_spacing(runner: BundleRunner) -> float:
    """The isotropic spacing radnode resamples to: Spacingd's when the bundle resamples, else the
    spacing its metadata says its input has; refused when neither says."""
    spacing = next((t for t in runner.preprocessing.transforms if type(t).__name__ == "Spacingd"), None)
    if spacing is not None:
        pixdim = [float(v) for v in spacing.spacing_transform.pixdim]
        return float(min(pixdim))
    text = str(runner.bundle.metadata.get("network_data_format", {}).get("inputs", {})) + " " + str(
        runner.bundle.metadata.get("image_classes", ""))
    match = _SPACING_TEXT.search(text)
    if match is None:
        raise BundleError(
            f"{runner.bundle.folder}: preprocessing has no Spacingd and metadata image_classes states no "
            "input spacing (\"... at 1x1x1 mm\"); radnode cannot tell which grid the bundle expects"
        )
    values = {float(v) for v in match.groups()}
    if len(values) != 1:
        raise BundleError(f"{runner.bundle.folder}: metadata image_classes states {match.group(0)}; "
                          "radnode feeds isotropic grids")
    return values.pop()


def label_map(prediction: Any, runner: BundleRunner) -> sitk.Image:
    """The postprocessed label map as a SimpleITK image in LPS, from its MetaTensor affine."""
    array = np.asarray(prediction.detach().cpu().numpy() if hasattr(prediction, "detach") else prediction)
    if array.ndim != 4 or array.shape[0] != 1:
        raise BundleError(
            f"{runner.bundle.folder}: postprocessing gives {runner.output_key!r} of shape {array.shape}; radnode "
            "writes a single-channel label map (the brats bundle's Lambdad makes one)"
        )
    values = set(np.unique(array).astype(int).tolist())
    if not values <= set(BRATS_LABELS):
        raise BundleError(
            f"{runner.bundle.folder}: postprocessing gives label values {sorted(values)}; radnode writes "
            f"BraTS labels {list(BRATS_LABELS[1:])} (necrosis/core, edema, enhancing)"
        )
    affine = np.asarray(prediction.affine, dtype=np.float64)
    if runner.input_space == "RAS":
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.transpose(array[0], (2, 1, 0)).astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (affine[:3, :3] / spacing).ravel()))
    return image
