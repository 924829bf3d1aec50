"""nnU-Net's own inference on a study: ``nnUNetPredictor``, its reader, its export.

radnode does not re-implement any of nnU-Net's steps. The channels, already on one grid, are
written as the files the folder's ``dataset.json`` expects (``case_0000.nii.gz``, ...) and read
back with the image reader its ``plans.json`` names, so the array order, spacing and orientation
handling are exactly those of ``nnUNetv2_predict``; ``predict_single_npy_array`` then runs its
preprocessing (cropping, normalisation, resampling), sliding window with Gaussian weighting,
test-time mirroring on the axes the checkpoint allows, the average of the folds' outputs, and
its export back to the input's shape (region-based label sets converted by regions_class_order).
The label map is written with the same reader-writer and read back onto the reference grid.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from pipelines.nnunet.contract import Options
from pipelines.nnunet.folder import NnUNetFolder, NnUNetFolderError, require_nnunetv2

#: File endings SimpleITK writes, through which images are handed to the folder's reader.
WRITABLE = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


class NnUNetRunner:
    """A loaded folder: ``segment(images)`` is the label map nnU-Net exports, on the images' grid."""

    def __init__(self, folder: NnUNetFolder, options: Options, device: str) -> None:
        require_nnunetv2()
        if folder.file_ending not in WRITABLE:
            raise NnUNetFolderError("model", f"dataset.json file_ending {folder.file_ending!r}: radnode hands images to "
                                    f"nnU-Net as {', '.join(WRITABLE)} files")
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.folder = folder
        self.predictor = nnUNetPredictor(
            tile_step_size=options.tile_step_size,
            use_gaussian=True,
            use_mirroring=options.mirroring,
            perform_everything_on_device=device.startswith("cuda"),
            device=torch.device(device),
            verbose=False,
            allow_tqdm=False,
        )
        self.predictor.initialize_from_trained_model_folder(
            str(folder.path), use_folds=folder.folds, checkpoint_name=options.checkpoint)
        previous = self.predictor.configuration_manager.previous_stage_name
        if previous is not None:
            raise NnUNetFolderError("model", f"a cascade stage: it needs the {previous!r} stage's prediction as input, "
                                    "which radnode does not run; give the folder of a 3d_fullres or 2d configuration")

    def segment(self, images: Sequence[sitk.Image]) -> sitk.Image:
        """The exported label map of one case, ``images`` in the folder's channel order."""
        reader_writer = self._reader_writer()
        ending = self.folder.file_ending
        with tempfile.TemporaryDirectory(prefix="radnode-nnunet-") as scratch:
            files = [str(Path(scratch) / f"case_{n:04d}{ending}") for n in range(len(images))]
            for image, file in zip(images, files):
                sitk.WriteImage(image, file)
            data, properties = reader_writer.read_images(files)
            labels = self.predictor.predict_single_npy_array(data, properties)
            out = str(Path(scratch) / f"case{ending}")
            reader_writer.write_seg(labels, out, properties)
            return sitk.ReadImage(out)

    def _reader_writer(self) -> Any:
        return self.predictor.plans_manager.image_reader_writer_class()
