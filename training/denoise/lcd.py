"""Low-contrast detectability (LCD): the Laguerre-Gauss channelised Hotelling observer (LG-CHO).

PSNR and SSIM reward a denoiser for smoothing, yet smoothing can erase exactly the faint, small
lesions a reader looks for. The FDA's LCD-CT toolbox (DIDSR/LCD_CT, CC0; Python package
``src/lcdct``, read at commit fe94e61) measures instead how well a model observer detects the
low-contrast inserts of the MITA-LCD phantom (CCT189: 3, 5, 7 and 10 mm discs at 14, 7, 5 and
3 HU) in repeated scans, with and without the inserts. This module is our own implementation of
its LG-CHO, following the toolbox's method step by step so that our numbers can be checked
against the toolbox's on the toolbox's own images (``bench/lcd_observer.py``) before they judge
our denoiser:

1. Inserts (``find_inserts``, toolbox ``utils.get_demo_truth_masks``/``get_insert_radius``):
   in the noise-free ground truth, the pixels within ``TRUTH_TOLERANCE_HU`` of each insert's HU,
   cleaned by a 3 x 3 median filter; the first 8-connected region gives the centre (centroid,
   rounded half to even as Python's ``round``) and the extent (the longer side of its bounding
   box, i.e. a diameter in pixels, though the toolbox calls it a radius).
2. ROIs (``extract_rois``, toolbox ``get_roi_from_truth_mask``): every insert's square ROI has
   the half-width of the largest extent of all inserts, centred on the insert in the
   signal-present images and at the same place in the signal-absent ones (signal known exactly,
   location known exactly). Each ROI's mean is subtracted (``remove_dc``): the observer must not
   use the DC level, which a human reader does not perceive and a denoiser may shift.
3. Channels (``laguerre_gauss_channels``, toolbox ``functions.laguerre_gaussian_2d``):
   ``N_CHANNELS`` = 5 rotationally symmetric Laguerre-Gauss functions of width
   ``CHANNEL_WIDTH_PER_EXTENT`` x extent (2/3 of the diameter in pixels; the toolbox's MATLAB
   help suggests 2/3 of the radius, but both its MATLAB and Python ``measure_LCD`` pass the
   bounding-box extent, and we follow what it computes).
4. Readers (``toolbox_reader_seeds``, ``train_test_indices``, toolbox ``Observer.run_study`` and
   scikit-learn's ``train_test_split``): ``N_READERS`` = 10 random half/half splits of the images
   into a training and a test set; the same permutation is applied to the signal-present and the
   signal-absent stack. The seeds are drawn exactly as the toolbox draws them, so with the same
   ``seed`` both implementations see the same splits and must give the same numbers.
5. Per reader (``read_once``, toolbox ``LG_CHO.calculate_metrics``): the Hotelling template
   ``w = pinv(K) s`` in channel space from the training split (``K`` the mean of the two classes'
   channel covariances, ``s`` the mean channel signal), test statistics ``t = w . v`` of the
   held-out split, the empirical ROC area (Mann-Whitney, ties counting one half) and
   ``d'_snr = (mean t_sp - mean t_sa) / sqrt((var t_sp + var t_sa) / 2)``.

What differs from the toolbox, on purpose: an ROI that would leave the image is an error here
(the toolbox silently crops it smaller), arithmetic is float64 throughout (the toolbox reads
float32), and results are identified by insert (HU and extent) rather than by the toolbox's
``insert_HU`` column, which in its Python ``measure_LCD`` takes the mode of the last insert's
mask for every row (it reads ``mask`` where it means ``truth_mask``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

Array = NDArray[np.float64]

#: The MITA-LCD (CCT189) inserts' nominal contrasts, in the toolbox's order (3, 5, 7, 10 mm).
MITA_INSERT_HU = (14.0, 7.0, 5.0, 3.0)
#: A ground-truth pixel belongs to an insert when it is strictly closer than this to its HU.
TRUTH_TOLERANCE_HU = 1.0
#: Laguerre-Gauss channels per observer, the toolbox's default.
N_CHANNELS = 5
#: Channel width parameter per pixel of insert extent (bounding-box diameter), the toolbox's 2/3.
CHANNEL_WIDTH_PER_EXTENT = 2.0 / 3.0
#: Readers (random train/test splits) per insert, and the share of images used for training.
N_READERS, TRAIN_FRACTION = 10, 0.5
#: The toolbox's readers' split seeds are integers below this (``rng.integers(0, 100000)``).
SPLIT_SEED_BOUND = 100_000
#: The toolbox's .raw files store HU + 1000 as integers.
STORED_OFFSET_HU = 1000.0
#: The toolbox's small data set: reconstructions and dose levels (percent of full dose).
TOOLBOX_RECONS = ("fbp", "DL_denoised")
TOOLBOX_DOSES = (10, 55, 100)


@dataclass(frozen=True)
class Insert:
    """One known insert: its nominal HU, centre (row, column, pixels) and extent (pixels)."""

    hu: float
    centre: tuple[int, int]
    extent_px: int


@dataclass(frozen=True)
class LcdResult:
    """One result row: the LG-CHO on one insert of one reconstruction at one dose, all readers.

    ``aucs`` and ``snrs`` hold one value per reader (train/test split), in the readers' order, so
    that a comparison with the toolbox can be made split by split; ``auc`` and ``snr`` are their
    means, the numbers the toolbox plots.
    """

    recon: str
    dose_percent: int
    insert_hu: float
    insert_extent_px: int
    channel_width_px: float
    roi_size_px: int
    aucs: tuple[float, ...]
    snrs: tuple[float, ...]

    @property
    def auc(self) -> float:
        """The mean AUC over readers."""
        return float(np.mean(self.aucs))

    @property
    def snr(self) -> float:
        """The mean d'_snr over readers."""
        return float(np.mean(self.snrs))

    @property
    def auc_std(self) -> float:
        """The spread of AUC between readers (sample standard deviation): how much one split says."""
        return float(np.std(self.aucs, ddof=1)) if len(self.aucs) > 1 else 0.0


# --- Channels -----------------------------------------------------------------------------------


def laguerre_gauss_channels(size: int, width: float, n_channels: int = N_CHANNELS) -> Array:
    """The Laguerre-Gauss channels on a ``size`` x ``size`` ROI, shape (n_channels, size, size).

    ``u_j(r) = sqrt(2) / a * exp(-pi r^2 / a^2) * L_j(2 pi r^2 / a^2)`` with ``a`` = ``width`` and
    ``r`` measured from the ROI's centre ((size - 1) / 2, which is a pixel centre for odd sizes).
    These are orthonormal in the continuous plane, rotationally symmetric like the inserts, and
    span a disc's profile with few functions, which keeps the channel covariance estimable from
    a handful of images (the reason a CHO is used instead of a full Hotelling observer).
    """
    if size < 1 or width <= 0 or n_channels < 1:
        raise ValueError(f"need size >= 1, width > 0, n_channels >= 1; got {size}, {width}, {n_channels}")
    axis = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    r2 = axis[:, None] ** 2 + axis[None, :] ** 2
    gauss = math.sqrt(2.0) / width * np.exp(-math.pi * r2 / width**2)
    argument = 2.0 * math.pi * r2 / width**2
    channels = [np.polynomial.laguerre.lagval(argument, np.eye(n_channels)[j]) * gauss for j in range(n_channels)]
    return np.stack(channels).astype(np.float64)


def channel_width(extent_px: int) -> float:
    """The toolbox's channel width for an insert of this extent (bounding-box diameter, pixels)."""
    return CHANNEL_WIDTH_PER_EXTENT * extent_px


# --- Inserts and ROIs ---------------------------------------------------------------------------


def insert_mask(truth_hu: Array, hu: float, tolerance_hu: float = TRUTH_TOLERANCE_HU) -> NDArray[np.bool_]:
    """The pixels of the ground truth at this insert's HU, with isolated pixels removed.

    The median filter (3 x 3, as the toolbox's) drops partial-volume pixels at other inserts'
    edges that happen to fall within the tolerance.
    """
    near = (np.abs(truth_hu - hu) < tolerance_hu).astype(np.uint8)
    return np.asarray(ndimage.median_filter(near, size=3) > 0)


def first_region(mask: NDArray[np.bool_]) -> tuple[tuple[int, int], int] | None:
    """Centre (rounded centroid) and extent of the mask's first 8-connected region, or None.

    "First" is in raster order, as scikit-image's ``regionprops(label(mask))[0]`` in the toolbox.
    Python's ``round`` (half to even) is the toolbox's too, so a centroid at x.5 lands as it does.
    """
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return None
    rows, cols = np.nonzero(labels == 1)
    centre = (round(float(rows.mean())), round(float(cols.mean())))
    extent = max(int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1)
    return centre, extent


def find_inserts(
    truth_hu: Array, insert_hu: Sequence[float] = MITA_INSERT_HU, tolerance_hu: float = TRUTH_TOLERANCE_HU
) -> tuple[Insert, ...]:
    """The inserts found in a noise-free ground-truth image, in the order of ``insert_hu``.

    An HU with no pixels in the truth is left out (the toolbox skips it too).
    """
    found = []
    for hu in insert_hu:
        region = first_region(insert_mask(truth_hu, hu, tolerance_hu))
        if region is not None:
            found.append(Insert(hu=float(hu), centre=region[0], extent_px=region[1]))
    return tuple(found)


def roi_half_width(inserts: Sequence[Insert]) -> int:
    """One half-width for every insert's ROI: the largest insert's extent, as the toolbox's
    ``2 * crop_r`` argument halved. The ROI is then about twice the largest insert's diameter,
    wide enough that the background around each insert is in it."""
    if not inserts:
        raise ValueError("no inserts")
    return max(insert.extent_px for insert in inserts)


def extract_rois(images: Array, centre: tuple[int, int], half_width: int) -> Array:
    """Square ROIs of side ``2 * half_width + 1`` centred on ``centre`` in every image (N, Y, X).

    An ROI that would leave the image raises, where the toolbox would silently return a smaller
    (and off-centre) one: the channels assume the insert sits at the ROI's centre.
    """
    row, col = centre
    _, ny, nx = images.shape
    if row - half_width < 0 or col - half_width < 0 or row + half_width >= ny or col + half_width >= nx:
        raise ValueError(f"ROI of half-width {half_width} at {centre} leaves the {ny} x {nx} image")
    return np.asarray(images[:, row - half_width : row + half_width + 1, col - half_width : col + half_width + 1], np.float64)


def remove_dc(rois: Array) -> Array:
    """Each ROI minus its own mean: the observer judges local contrast, not the DC level."""
    return np.asarray(rois - rois.mean(axis=(1, 2), keepdims=True), np.float64)


# --- Readers: the toolbox's train/test splits ---------------------------------------------------


def toolbox_reader_seeds(n_readers: int, seed: int | None) -> tuple[int, ...]:
    """The split seeds of the toolbox's ``run_study``: ``default_rng(seed).integers(0, 100000, n)``.

    With ``seed`` None they are random, which is the toolbox's default (its results then differ
    run to run); fix it to compare.
    """
    rng = np.random.default_rng(seed)
    return tuple(int(s) for s in rng.integers(0, SPLIT_SEED_BOUND, size=n_readers))


def train_test_indices(n: int, train_fraction: float, seed: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Training and test indices as scikit-learn's ``train_test_split(shuffle=True, random_state=seed)``.

    scikit-learn's ShuffleSplit takes ``ceil((1 - f) n)`` test and ``floor(f n)`` training items
    from one ``RandomState(seed).permutation(n)``, the test set first; reproducing it (rather than
    importing scikit-learn) is what lets a split here equal the toolbox's split.
    """
    n_test, n_train = math.ceil((1.0 - train_fraction) * n), math.floor(train_fraction * n)
    if n_test < 2 or n_train < 2:
        raise ValueError(f"{n} images give {n_train} training and {n_test} test images; each needs at least 2")
    permutation = np.random.RandomState(seed).permutation(n)
    return permutation[n_test : n_test + n_train], permutation[:n_test]


# --- One reader: Hotelling template, test statistics, AUC and d' --------------------------------


def channel_outputs(rois: Array, channels: Array) -> Array:
    """Each ROI's response to each channel, shape (N, n_channels)."""
    return rois.reshape(rois.shape[0], -1) @ channels.reshape(channels.shape[0], -1).T


def hotelling_template(absent: Array, present: Array) -> Array:
    """The Hotelling template in channel space, ``pinv(K) s``, from training channel outputs.

    ``K`` is the mean of the two classes' sample covariances (ddof 1) and ``s`` the difference of
    their means; the pseudo-inverse (the toolbox's choice) keeps a rank-deficient ``K`` usable.
    """
    signal = present.mean(axis=0) - absent.mean(axis=0)
    covariance = (np.cov(absent, rowvar=False) + np.cov(present, rowvar=False)) / 2.0
    return np.asarray(np.linalg.pinv(np.atleast_2d(covariance), hermitian=True) @ signal, np.float64)


def mann_whitney_auc(absent: Array, present: Array) -> float:
    """The empirical ROC area: the share of (absent, present) pairs ranked correctly, ties half.

    It equals the Wilcoxon-Mann-Whitney statistic over ``n_absent * n_present`` and
    scikit-learn's ``roc_auc_score``, which the toolbox calls; no normality is assumed.
    """
    difference = present[:, None] - absent[None, :]
    return float((np.count_nonzero(difference > 0) + 0.5 * np.count_nonzero(difference == 0)) / difference.size)


def detectability_snr(absent: Array, present: Array) -> float:
    """d'_snr: the distance between the classes' mean test statistics in units of their pooled
    standard deviation (sample variances, ddof 1). For Gaussian statistics AUC = Phi(d'/sqrt 2)."""
    pooled = math.sqrt((float(np.var(present, ddof=1)) + float(np.var(absent, ddof=1))) / 2.0)
    return float((present.mean() - absent.mean()) / pooled)


def read_once(
    absent: Array, present: Array, train: NDArray[np.intp], test: NDArray[np.intp]
) -> tuple[float, float]:
    """One reader: train the template on ``train``, score the held-out ``test`` images.

    ``absent``/``present`` are channel outputs (N, n_channels); the same index sets apply to both
    stacks, as in the toolbox. Returns (AUC, d'_snr).
    """
    template = hotelling_template(absent[train], present[train])
    t_absent, t_present = absent[test] @ template, present[test] @ template
    return mann_whitney_auc(t_absent, t_present), detectability_snr(t_absent, t_present)


def lg_cho_study(
    present_rois: Array,
    absent_rois: Array,
    width: float,
    *,
    n_readers: int = N_READERS,
    train_fraction: float = TRAIN_FRACTION,
    seed: int | None = 0,
    n_channels: int = N_CHANNELS,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The LG-CHO over ``n_readers`` splits: (AUCs, d'_snrs), one per reader.

    The ROIs (N, S, S) are centred on the insert's known position; their DC is removed here.
    Each split reuses its permutation for both stacks, so they must hold the same number of images.
    """
    if present_rois.shape != absent_rois.shape:
        raise ValueError(f"signal-present {present_rois.shape} and signal-absent {absent_rois.shape} ROIs differ")
    channels = laguerre_gauss_channels(present_rois.shape[-1], width, n_channels)
    v_present = channel_outputs(remove_dc(present_rois), channels)
    v_absent = channel_outputs(remove_dc(absent_rois), channels)
    aucs, snrs = [], []
    for split_seed in toolbox_reader_seeds(n_readers, seed):
        train, test = train_test_indices(present_rois.shape[0], train_fraction, split_seed)
        auc, snr = read_once(v_absent, v_present, train, test)
        aucs.append(auc)
        snrs.append(snr)
    return tuple(aucs), tuple(snrs)


def measure_lcd(
    present: Array,
    absent: Array,
    inserts: Sequence[Insert],
    *,
    recon: str = "",
    dose_percent: int = 0,
    n_readers: int = N_READERS,
    train_fraction: float = TRAIN_FRACTION,
    seed: int | None = 0,
) -> list[LcdResult]:
    """The LG-CHO on every insert of one image set: one ``LcdResult`` per insert, in order.

    ``present``/``absent`` are (N, Y, X) stacks in HU. Every insert uses the same split seeds,
    as the toolbox's ``measure_LCD`` passes one ``seed_split`` to all of them.
    """
    half_width = roi_half_width(inserts)
    rows = []
    for insert in inserts:
        width = channel_width(insert.extent_px)
        aucs, snrs = lg_cho_study(
            extract_rois(present, insert.centre, half_width),
            extract_rois(absent, insert.centre, half_width),
            width,
            n_readers=n_readers,
            train_fraction=train_fraction,
            seed=seed,
        )
        rows.append(
            LcdResult(recon, dose_percent, insert.hu, insert.extent_px, width, 2 * half_width + 1, aucs, snrs)
        )
    return rows


# --- The toolbox's files ------------------------------------------------------------------------


def read_mhd(path: Path, offset_hu: float = STORED_OFFSET_HU) -> Array:
    """A MetaImage (.mhd header + .raw data) as float64 HU, (N, Y, X) or (Y, X): stored minus offset.

    SimpleITK reads the toolbox's multi-file form (``ElementDataFile = name_%03d.raw 1 10 1``).
    """
    import SimpleITK as sitk  # lazy: only the toolbox's files need ITK

    if not path.is_file():
        raise FileNotFoundError(path)
    return np.asarray(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), np.float64) - offset_hu


def toolbox_truth(toolbox: Path, recon: str = "fbp") -> Array:
    """The noise-free MITA-LCD ground truth of the toolbox's small data set, in HU.

    The toolbox's demos use FBP's for every reconstruction (DL_denoised's file is identical).
    """
    return read_mhd(toolbox / "data" / "small_dataset" / recon / "ground_truth.mhd")


def toolbox_images(toolbox: Path, recon: str, dose_percent: int) -> tuple[Array, Array]:
    """(signal-present, signal-absent) stacks of one reconstruction and dose, in HU.

    Layout: ``<toolbox>/data/small_dataset/<recon>/dose_<ddd>/signal_{present,absent}/signal_*.mhd``.
    The DL_denoised files hold HU + 1000 + 32768 under a signed-short header and so read about
    32768 HU low; they are returned as read, like the toolbox's loader does, since the observer
    removes each ROI's mean (anything else that uses them must add 32768 back).
    """
    folder = toolbox / "data" / "small_dataset" / recon / f"dose_{dose_percent:03d}"
    present = read_mhd(folder / "signal_present" / "signal_present.mhd")
    absent = read_mhd(folder / "signal_absent" / "signal_absent.mhd")
    return as_stack(present), as_stack(absent)


def as_stack(images: Array) -> Array:
    """A single image (Y, X) as a stack of one (1, Y, X); a stack unchanged."""
    return images[None] if images.ndim == 2 else images
