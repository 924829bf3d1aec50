"""Real sharp-kernel noise against the simulation's, on every property measurable without pairs.

No real low-dose/full-dose pair exists here, so the real noise is estimated from full-dose series,
and the simulated noise goes through the same estimator on the same slices, so that the
estimator's own bias cancels in the ratio:

- ``twin``: A0002's B70f less its B40f reconstruction of the same raw data. The two kernels share
  one acquisition's noise; the difference keeps the part the sharp kernel passes and the medium
  one does not (above ~0.25 cycles/mm) and no anatomy where the anatomy is flat (edges remain,
  so only homogeneous pixels are used). Simulated: one sinogram draw reconstructed with the sharp
  family's filter, passed through 1 - H, H the real pair's own transfer (``kernel_transfer``): the
  medium family's window is GE STANDARD's, not B40f's, and would put its own mismatch in the twin.
- ``neighbours``: C3N-00247's slice less the mean of its two neighbours (3 mm apart), in homogeneous
  tissue. Anatomy changing over 3 mm adds to it (low frequencies, a few %), and neighbouring
  slices share noise where their slice sensitivity profiles overlap, which lowers it. Simulated:
  three draws mixed to that overlap's correlation (``ssp_correlation``), so both sides share it.

The full-dose photons per ray are ``data.full_dose_photons``' (the training's calibration); the
simulation's quarter-dose noise is the same noise at a third of the photons, so every property
but the magnitude is the quarter-dose noise's too (the electronic share aside). Properties:
``Properties``; the twin adds ``PHOTON_RATIO``: B70f and B40f are one acquisition, so the photons
each one's calibration implies should agree (real value 1). ``PYTHONPATH=$PWD python -m
training.denoise.real_noise`` prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from scipy import ndimage

from pipelines.noise_power import ROI_PX, detrend, flat_tiles, rois_nps, tiles
from pipelines.threads import map_on_cores
from training.denoise.data import Scan, full_dose_photons, load_scan, spread_slices
from training.denoise.noise import ELECTRONIC_NOISE_COUNTS, PARALLEL, Beam, SliceScan

TWIN_SHARP = "ct-chest/lung-pet-ct-dx-A0002/B70f"
TWIN_MEDIUM = "ct-chest/lung-pet-ct-dx-A0002/B40f"
NEIGHBOURS = "ct-chest/cptac-luad-C3N-00247"
#: Slices per scan the properties are measured on (``data.spread_slices``).
SLICES = 6
#: Local SD window (pixels) and how flat (HU, SD of the smoothed image in it) a pixel's
#: surroundings must be for its local noise to count.
WINDOW = 15
FLAT_SD_HU = 8.0
#: Band edges (cycles/mm) of the low / mid / high power shares.
BANDS = (0.25, 0.5)
#: Radius (fraction of the body's equivalent radius) of the centre and the periphery.
CENTRE, PERIPHERY = 0.35, 0.7
#: Bone (HU) and how near a tile's centre must be to it (mm) to count as "near bone".
BONE_HU, NEAR_BONE_MM = 300.0, 25.0
#: Agreement the issue asks of each property.
TOLERANCE = 0.15
#: A power share below this is judged by its difference, within ``SHARE_MARGIN``, not its ratio.
SMALL_SHARE, SHARE_MARGIN = 0.05, 0.03
#: The twin's extra property: full-dose photons per ray B70f's calibration implies over B40f's.
PHOTON_RATIO = "photons_sharp_over_medium"


@dataclass(frozen=True)
class Properties:
    """Everything measured on one noise estimate (real or simulated), over the same pixels."""

    sd_hu: float  # magnitude: SD in flat soft-tissue ROIs
    centroid_per_mm: float  # NPS centroid (power-weighted mean frequency)
    peak_per_mm: float
    low_share: float  # power share below BANDS[0]
    mid_share: float
    high_share: float  # above BANDS[1]
    periphery_over_centre: float  # local SD, periphery over centre of the body
    attenuation_slope: float  # d log(local SD) / d log(mean exp(line integral) through the pixel)
    anisotropy: float  # 2-D NPS: largest of 8 orientation sectors over their mean, flat tiles
    anisotropy_near_bone: float  # the same in flat tiles within NEAR_BONE_MM of bone
    fat_over_soft: float  # local SD in fat (-150..-50 HU) over soft tissue (0..100 HU)


def local_sd(noise: np.ndarray) -> np.ndarray:
    """The noise's SD in a ``WINDOW``-pixel square around each pixel."""
    mean = ndimage.uniform_filter(noise, WINDOW)
    sd: np.ndarray = np.sqrt(np.clip(ndimage.uniform_filter(noise * noise, WINDOW) - mean * mean, 0, None))
    return sd


def homogeneous(reference: np.ndarray) -> np.ndarray:
    """Pixels whose whole local-SD window lies in flat fat or soft tissue of ``reference``."""
    smooth = ndimage.gaussian_filter(reference.astype(np.float64), 2.0)
    mean = ndimage.uniform_filter(smooth, 7)
    structure = np.sqrt(np.clip(ndimage.uniform_filter(smooth * smooth, 7) - mean * mean, 0, None))
    ok = (structure < FLAT_SD_HU) & (smooth > -150) & (smooth < 150)
    mask: np.ndarray = ndimage.binary_erosion(ok, iterations=WINDOW // 2 + 1)
    return mask


def path_index(scan: SliceScan, views: int = 90) -> np.ndarray:
    """Mean over views of ``exp(line integral)`` of the rays through each pixel: the quantum noise
    variance a pixel would have with flat photons over rays (parallel beam, unfiltered)."""
    sino = torch.exp(scan.line_integrals.double()).numpy()
    n = scan.beam.size
    offsets = np.arange(n) - n / 2
    x, y = np.meshgrid(offsets, offsets)
    total = np.zeros((n, n))
    step = max(1, sino.shape[0] // views)
    for v in range(0, sino.shape[0], step):
        theta = math.pi * v / sino.shape[0]
        t = x * math.cos(theta) - y * math.sin(theta) + scan.beam.n_det / 2
        total += np.interp(t, np.arange(scan.beam.n_det), sino[v])
    index: np.ndarray = (total / len(range(0, sino.shape[0], step)))[scan.crop]
    return index


def body_radius(reference: np.ndarray) -> np.ndarray:
    """Each pixel's distance from the body's centroid over the body's equivalent radius."""
    body = ndimage.binary_fill_holes(reference > -500)
    labels, count = ndimage.label(body)
    if count > 1:
        body = labels == 1 + int(np.argmax(ndimage.sum(body, labels, range(1, count + 1))))
    rows, cols = np.nonzero(body)
    rr, cc = np.mgrid[: reference.shape[0], : reference.shape[1]]
    radius: np.ndarray = np.hypot(rr - rows.mean(), cc - cols.mean()) / math.sqrt(len(rows) / math.pi)
    return radius


def sector_anisotropy(rois: np.ndarray, pixel_mm: float) -> float:
    """Largest of 8 orientation sectors' NPS power (0.15 cycles/mm to Nyquist) over their mean."""
    if not len(rois):
        return float("nan")
    power = np.mean(np.abs(np.fft.fft2(rois)) ** 2, axis=0)
    v = np.fft.fftfreq(ROI_PX, pixel_mm)[:, None]
    u = np.fft.fftfreq(ROI_PX, pixel_mm)[None, :]
    radius = np.hypot(u, v)
    angle = np.mod(np.arctan2(v, u) * np.ones_like(u), math.pi)
    use = (radius > 0.15) & (radius <= 0.5 / pixel_mm)
    sector = np.minimum((angle / (math.pi / 8)).astype(int), 7)
    energy = np.array([power[use & (sector == k)].mean() for k in range(8)])
    return float(energy.max() / energy.mean())


@dataclass
class Pool:
    """Pixels and ROIs pooled over slices before the properties are computed."""

    rois: list[np.ndarray]
    near_bone: list[np.ndarray]
    local_sd: list[np.ndarray]
    radius: list[np.ndarray]
    path: list[np.ndarray]
    hu: list[np.ndarray]

    @classmethod
    def empty(cls) -> Pool:
        return cls([], [], [], [], [], [])

    def add(self, noise: np.ndarray, reference: np.ndarray, mask: np.ndarray, path: np.ndarray,
            radius: np.ndarray, pixel_mm: float) -> None:
        flat = flat_tiles(reference)
        self.rois.append(detrend(tiles(noise)[flat]))
        bone = ndimage.distance_transform_edt(reference < BONE_HU) * pixel_mm
        centres = tiles(bone)[:, ROI_PX // 2, ROI_PX // 2]
        self.near_bone.append(detrend(tiles(noise)[flat & (centres < NEAR_BONE_MM)]))
        self.local_sd.append(local_sd(noise)[mask])
        self.radius.append(radius[mask])
        self.path.append(path[mask])
        self.hu.append(ndimage.gaussian_filter(reference.astype(np.float64), 2.0)[mask])

    def properties(self, pixel_mm: float) -> Properties:
        rois = np.concatenate(self.rois)
        frequency, nps = rois_nps(rois, pixel_mm)
        ring = nps * 2 * math.pi * frequency
        total = ring.sum()
        sd, radius, path, hu = (np.concatenate(x) for x in (self.local_sd, self.radius, self.path, self.hu))
        centre, periphery = sd[radius < CENTRE], sd[(radius > PERIPHERY) & (radius < 1.0)]
        use = sd > 0
        slope = float(np.polyfit(np.log(path[use]), np.log(sd[use]), 1)[0])
        fat, soft = sd[(hu > -150) & (hu < -50)], sd[(hu > 0) & (hu < 100)]
        return Properties(
            sd_hu=float(np.sqrt(np.mean(rois**2))),
            centroid_per_mm=float((frequency * ring).sum() / total),
            peak_per_mm=float(frequency[int(np.argmax(nps))]),
            low_share=float(ring[frequency < BANDS[0]].sum() / total),
            mid_share=float(ring[(frequency >= BANDS[0]) & (frequency < BANDS[1])].sum() / total),
            high_share=float(ring[frequency >= BANDS[1]].sum() / total),
            periphery_over_centre=float(np.median(periphery) / np.median(centre)),
            attenuation_slope=slope,
            anisotropy=sector_anisotropy(rois, pixel_mm),
            anisotropy_near_bone=sector_anisotropy(np.concatenate(self.near_bone), pixel_mm),
            fat_over_soft=float(np.median(fat) / np.median(soft)),
        )


def kernel_transfer(sharp: np.ndarray, medium: np.ndarray) -> np.ndarray:
    """H at each frequency of a slice (FFT order): the medium reconstruction over the sharp one,
    from slice stacks of one acquisition. Both are FBP of the same raw data, so F_medium =
    H(|k|) F_sharp for anatomy and noise alike; H is the radial mean of Re(F_medium conj F_sharp)
    / |F_sharp|^2 over the slices, in steps of one frequency bin."""
    rows, cols = sharp.shape[-2:]
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(rows) * rows, np.fft.fftfreq(cols) * cols, indexing="ij"))
    bins = np.rint(radius).astype(int).ravel()
    cross, power = np.zeros(bins.max() + 1), np.zeros(bins.max() + 1)
    for sharp_slice, medium_slice in zip(sharp, medium, strict=True):
        f_sharp, f_medium = np.fft.fft2(sharp_slice.astype(np.float64)), np.fft.fft2(medium_slice.astype(np.float64))
        cross += np.bincount(bins, (f_medium * np.conj(f_sharp)).real.ravel(), len(cross))
        power += np.bincount(bins, (np.abs(f_sharp) ** 2).ravel(), len(power))
    transfer: np.ndarray = (cross / np.maximum(power, np.finfo(float).tiny))[bins].reshape(rows, cols)
    return transfer


def twin_pools(data_root: Path, beam: Beam, seed: int, slices: int = SLICES,
               electronic_noise: float = ELECTRONIC_NOISE_COUNTS) -> tuple[Pool, Pool, float]:
    """Real (B70f - B40f) and simulated (sharp filter through 1 - H, one draw) pools on A0002."""
    sharp, medium = load_scan(data_root, TWIN_SHARP), load_scan(data_root, TWIN_MEDIUM)
    photons = full_dose_photons(sharp, torch.Generator().manual_seed(seed), beam, electronic_noise)
    generator = torch.Generator().manual_seed(seed + 1)
    measured = spread_slices(len(sharp.hu), slices)
    keep = 1.0 - kernel_transfer(sharp.hu[measured], medium.hu[measured])
    real, sim = Pool.empty(), Pool.empty()
    for k in measured:
        reference = medium.hu[k]
        scan = SliceScan.of(sharp.hu[k], sharp.pixel_spacing_mm, sharp.kvp)
        mask, path, radius = homogeneous(reference), path_index(scan), body_radius(reference)
        error = scan.sinogram_error(sharp.slice_photons(photons, k), generator, electronic_noise, beam)
        noise = np.fft.ifft2(np.fft.fft2(scan._reconstructed_hu(error, "sharp")) * keep).real
        real.add(sharp.hu[k].astype(np.float64) - reference, reference, mask, path, radius, sharp.pixel_spacing_mm)
        sim.add(noise, reference, mask, path, radius, sharp.pixel_spacing_mm)
    return real, sim, photons


def medium_photons(data_root: Path, beam: Beam, seed: int, electronic_noise: float) -> float:
    """The full-dose photons per ray A0002's B40f implies (its family's window), calibrated as the
    twin's B70f is: the raw data are one, so a sharp window that passes too much noise per photon
    shows as B70f implying more photons than B40f."""
    medium = load_scan(data_root, TWIN_MEDIUM)
    return full_dose_photons(medium, torch.Generator().manual_seed(seed), beam, electronic_noise)


def ssp_correlation(thickness_mm: float, distance_mm: float) -> float:
    """The noise correlation of two slices ``distance_mm`` apart whose slice sensitivity profiles
    are Gaussians of FWHM ``thickness_mm`` (the nominal thickness): the overlap of the two profiles,
    exp(-d^2 / (4 s^2)). 0.25 for neighbours as far apart as they are thick (a triangular profile
    gives the same)."""
    sigma = thickness_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return math.exp(-(distance_mm**2) / (4.0 * sigma**2))


def correlated(draws: list[np.ndarray], thickness_mm: float, spacing_mm: float) -> list[np.ndarray]:
    """Independent draws of consecutive slices mixed so that each pair shares the noise their
    profiles share (``ssp_correlation``), each keeping its variance."""
    n = len(draws)
    matrix = np.array([[ssp_correlation(thickness_mm, abs(i - j) * spacing_mm) for j in range(n)] for i in range(n)])
    factor = np.linalg.cholesky(matrix)
    return [sum(factor[i, j] * draws[j] for j in range(i + 1)) for i in range(n)]


def neighbour_pools(data_root: Path, beam: Beam, seed: int, slices: int = SLICES,
                    electronic_noise: float = ELECTRONIC_NOISE_COUNTS) -> tuple[Pool, Pool, float]:
    """Real (slice - mean of neighbours) and simulated (three draws, correlated as the slices'
    profiles overlap) pools on C3N-00247."""
    scan_all: Scan = load_scan(data_root, NEIGHBOURS)
    photons = full_dose_photons(scan_all, torch.Generator().manual_seed(seed), beam, electronic_noise)
    generator = torch.Generator().manual_seed(seed + 1)
    real, sim = Pool.empty(), Pool.empty()
    picks = [k for k in spread_slices(len(scan_all.hu), slices) if 0 < k < len(scan_all.hu) - 1]
    for k in picks:
        reference = scan_all.hu[k]
        draws = []
        for j in (k - 1, k, k + 1):
            s = SliceScan.of(scan_all.hu[j], scan_all.pixel_spacing_mm, scan_all.kvp)
            draws.append(s.acquisition_noise(scan_all.slice_photons(photons, j), "sharp", generator,
                                             electronic_noise, beam))
            if j == k:
                centre = s
        if scan_all.slice_thickness_mm and scan_all.slice_spacing_mm:
            draws = correlated(draws, scan_all.slice_thickness_mm, scan_all.slice_spacing_mm)
        smooth = ndimage.gaussian_filter(reference.astype(np.float64), 2.0)
        mask = homogeneous(reference) & (np.abs(smooth - ndimage.gaussian_filter(
            (scan_all.hu[k - 1] + scan_all.hu[k + 1]).astype(np.float64) / 2, 2.0)) < 5.0)
        path, radius = path_index(centre), body_radius(reference)
        hu = scan_all.hu.astype(np.float64)
        real.add(hu[k] - (hu[k - 1] + hu[k + 1]) / 2, reference, mask, path, radius, scan_all.pixel_spacing_mm)
        sim.add(draws[1] - (draws[0] + draws[2]) / 2, reference, mask, path, radius, scan_all.pixel_spacing_mm)
    return real, sim, photons


def table(data_root: Path, beam: Beam = PARALLEL, seed: int = 0, slices: int = SLICES,
          electronic_noise: float = ELECTRONIC_NOISE_COUNTS) -> dict[str, object]:
    """Real against simulated properties on both scans, with ratios and the 15 % verdict."""
    out: dict[str, object] = {"beam": asdict(beam), "electronic_noise": electronic_noise}
    for method, pools in (("twin", twin_pools), ("neighbours", neighbour_pools)):
        real, sim, photons = pools(data_root, beam, seed, slices, electronic_noise)
        pixel = (load_scan(data_root, TWIN_SHARP if method == "twin" else NEIGHBOURS)).pixel_spacing_mm
        r, s = asdict(real.properties(pixel)), asdict(sim.properties(pixel))
        if method == "twin":
            r[PHOTON_RATIO], s[PHOTON_RATIO] = 1.0, photons / medium_photons(data_root, beam, seed, electronic_noise)
        out[method] = {"photons": round(photons), "real": r, "simulated": s,
                       "ratio": {k: s[k] / r[k] if r[k] else float("nan") for k in r}}
    return out


def over_seeds(tables: list[dict[str, object]]) -> dict[str, object]:
    """One table of ``tables`` (the same scans, one draw each): the simulated side the mean of the
    draws', with each property's range over them (``simulated_range``) and each draw's count out."""
    out: dict[str, object] = {**tables[0], "seeds": len(tables)}
    for method in ("twin", "neighbours"):
        parts = [cast(dict[str, dict[str, float]], t[method]) for t in tables]
        real = parts[0]["real"]
        draws = {k: [part["simulated"][k] for part in parts] for k in real}
        mean = {k: float(np.mean(v)) for k, v in draws.items()}
        out[method] = {**parts[0], "simulated": mean,
                       "simulated_range": {k: (min(v), max(v)) for k, v in draws.items()},
                       "ratio": {k: mean[k] / real[k] if real[k] else float("nan") for k in real}}
    out["out_per_draw"] = [_count_out(t) for t in tables]
    return out


def _count_out(result: dict[str, object]) -> int:
    """How many properties of one table are not ``within``."""
    parts = [cast(dict[str, dict[str, float]], result[method]) for method in ("twin", "neighbours")]
    return sum(not within(k, part["real"][k], part["simulated"][k]) for part in parts for k in part["real"])


def within(key: str, real: float, simulated: float) -> bool:
    """The LOG's verdict: within ``TOLERANCE`` of the real value; a power share under ``SMALL_SHARE``
    within ``SHARE_MARGIN`` of it (its ratio is noise)."""
    if key.endswith("_share") and real < SMALL_SHARE:
        return abs(simulated - real) <= SHARE_MARGIN
    return abs(simulated / real - 1) <= TOLERANCE


def print_table(result: dict[str, object]) -> None:
    print(f"beam {result['beam']}, electronic noise {result.get('electronic_noise')} counts")
    out, judged = 0, 0
    for method in ("twin", "neighbours"):
        part = result[method]
        assert isinstance(part, dict)
        print(f"\n{method} (full-dose photons/ray {part['photons']})")
        print(f"{'property':24s} {'real':>8s} {'simulated':>10s} {'ratio':>7s}  within  draws' range")
        spread = part.get("simulated_range", {})
        for key, real in part["real"].items():
            ok = within(key, real, part["simulated"][key])
            out, judged = out + (not ok), judged + 1
            low_high = f"  {spread[key][0] / real:.3f}-{spread[key][1] / real:.3f}" if key in spread and real else ""
            print(f"{key:24s} {real:8.3f} {part['simulated'][key]:10.3f} {part['ratio'][key]:7.3f}  "
                  f"{'yes' if ok else 'NO':6s}{low_high}")
    print(f"\nout: {out} of {judged}" + (f" (each draw alone: {result['out_per_draw']})" if "out_per_draw" in result else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bowtie-water-mm", type=float, default=0.0, help="noise.Beam.bowtie_water_mm")
    parser.add_argument("--angular-modulation", type=float, default=0.0, help="noise.Beam.angular_modulation")
    parser.add_argument("--prelog-threshold", type=float, default=0.0, help="noise.Beam.prelog_threshold")
    parser.add_argument("--prelog-width", type=float, default=0.0, help="noise.Beam.prelog_width (bins)")
    parser.add_argument("--prelog-view-width", type=float, default=0.0, help="noise.Beam.prelog_view_width (views)")
    parser.add_argument("--electronic-noise", type=float, default=ELECTRONIC_NOISE_COUNTS,
                        help="detector noise (counts, SD) of the simulated draws")
    parser.add_argument("--slices", type=int, default=SLICES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1,
                        help="draws (seeds SEED, SEED+1, ...): judged on the mean of their simulated values")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from training.data_folder import DATA_ROOT

    beam = Beam(args.bowtie_water_mm, args.angular_modulation, args.prelog_threshold, args.prelog_width,
                args.prelog_view_width)
    seeds = range(args.seed, args.seed + args.seeds)
    tables = map_on_cores(lambda seed: table(DATA_ROOT, beam, seed, args.slices, args.electronic_noise), seeds)
    result = tables[0] if len(tables) == 1 else over_seeds(tables)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
