"""Labelled 5-band (g r i z y) galaxy images along the Hubble sequence, rendered with GalSim.

No labelled galaxy images ship in any package we can install offline, so the morphology capability
(issue 8, Kang et al. 2022) trains on rendered ones. Two domains share one label model and differ in
observing conditions, to mimic the covariate shift between a labelled set and survey data:

* ``RenderSettings.labelled()``: bright (r 15.5-19), large (disk half-light radius 1.0-3.2"), low
  redshift (0.02-0.12), sharp Moffat PSF (r-band FWHM 0.55-0.85", beta 2.8-4.5), deep (5 sigma point
  source depth r = 26).
* ``RenderSettings.survey()``: fainter (r 17.5-21), smaller (0.6-2.0"), higher redshift (0.08-0.30, so
  k-corrected colours shift redder), broader Kolmogorov PSF (FWHM 0.8-1.3": a different PSF shape as well
  as width), shallower (depth r = 25), more chip gaps.

Label model
-----------
Every galaxy is a bulge (Sersic) + disk (exponential, Sersic n<1.2 for Irr) + star-forming knots, each with
its own spectrum. Parameters are drawn per class from overlapping uniform ranges, so neighbouring classes
(E/S0, S0/Sa, Sa/Sb, Sb/Sc) overlap and noise, PSF and inclination blur the rest; classes are separable
but not trivially.

=====  ===========  ========  ===============  ================  =============  ==========  ========  =========
class  B/T          n_bulge   r_bulge/r_disk   arm strength      pitch (deg)    arms m      knots     lumpiness
=====  ===========  ========  ===============  ================  =============  ==========  ========  =========
E      0.85-1.00    3.0-5.5   0.6-1.0          0                 -              -           0         0
S0     0.45-0.90    2.5-4.5   0.25-0.5         0                 -              -           0         0
Sa     0.25-0.60    2.0-4.0   0.2-0.45         0.15-0.45         6-14           2           0-6 %     0
Sb     0.10-0.35    1.5-3.5   0.15-0.4         0.30-0.65         11-20          2 (3)       3-12 %    0-0.15
Sc     0.00-0.15    1.0-2.5   0.1-0.3          0.45-0.85         17-30          2,3,4       8-22 %    0.1-0.3
Irr    0            -         -                0                 -              -           20-45 %   0.4-0.9
=====  ===========  ========  ===============  ================  =============  ==========  ========  =========

(knots: fraction of the disk light in knots; lumpiness: amplitude of a log-normal random-field modulation.)

* **Spectra and colours.** Component grizy fluxes come from the CWW templates GalSim ships (``E``, ``Sbc``,
  ``Scd``, ``Im``) redshifted to the galaxy's redshift and integrated through GalSim's LSST bandpasses
  (photon counting, AB): bulges are E (red); disks are E-Sbc mixes for S0, Sbc(+E) for Sa, Sbc-Scd for
  Sb, Scd for Sc, Im for Irr (bluer along the sequence); knots are Im (bluest). Each component gets
  0.05 mag of independent per-band scatter.
* **Spiral arms.** The disk image is multiplied, in the disk plane (deprojected by the inclination), by a
  logarithmic spiral ``1 - A + A ((1 + cos(m(theta - ln(r / r_d) / tan(pitch)) + phi0)) / 2)^w / c(w)``
  (``w`` 1.5-4 sets the arm width, ``c(w)`` keeps the mean at 1, ``A`` is tapered to 0 inside the
  bulge), then rescaled to its flux, so arms are real flux ridges. Knots of spirals sit on the arm crests
  (with scatter), so they trace the arms; knots of Irr scatter about an offset centre.
* **Irr** have no bulge, a low-n disk, an m=1 lopsidedness (amplitude 0.2-0.6) and a log-normal random
  field (lumps of 0.3-0.6 r_half) on top of their knots: clumpy and asymmetric.
* **Geometry.** Disk inclination with cos(i) uniform in [0.15, 1] and intrinsic thickness 0.15
  (``q_disk = sqrt(cos(i)^2 (1 - 0.15^2) + 0.15^2)``); bulge axis ratio 0.55-1 (E) or 0.7-1 (bulges),
  aligned with the disk within 10 degrees; position angle uniform; centre offset up to
  ``max_offset`` pixels.
* **Size and flux.** ``r_half`` (disk half-light radius, the bulge's for E) and ``mag_r`` (total r)
  uniform in the settings' ranges; knot sizes (Gaussian sigma) 0.08-0.25".
* **PSF.** Per band, FWHM_b = FWHM_r (lambda_b / lambda_r)^-0.2 times a 5 % per-band jitter (different
  visits); Moffat (labelled) or Kolmogorov (survey).
* **Noise.** Sky-subtracted images in counts with zero point ``zero_point``. Per-pixel sky sigma from the
  5 sigma point-source depth (r plus LSST-like offsets g +0.4, i -0.5, z -1.1, y -1.9) over the effective
  PSF area ``2.266 (FWHM / pixel)^2``; source Poisson variance scaled by sigma^2 / sky, with LSST dark-sky
  brightnesses, as photon noise of a sky-limited image would be.
* **Chip gaps.** With probability ``nan_gap_probability`` per band (independently: each band has its own
  chip layout), a strip of NaN: 60 % at an image edge, 2 px to S/4 deep (the cutout runs off the chip),
  40 % an interior gap 2 to max(3, S/16) px wide. ``missing_band_probability`` (default 0) blanks a whole
  band to NaN.
* **Class imbalance.** ``class_weights`` (relative, normalised); by default Sb and Sc dominate
  (``DEFAULT_CLASS_WEIGHTS``).

How it is drawn (why it is fast)
--------------------------------
Drawing each band as ``galsim.Convolve(bulge + disk + knots, psf).drawImage()`` costs ~2.6 ms per band
(measured), ~80 galaxies per second. Convolution is linear and the components differ between bands only
by their flux, so each component is transformed once and each band is a flux-weighted sum of the
component transforms times the band's PSF transform, inverted once:

* the bulge: GalSim's exact Fourier transform (``drawKImage``), which also samples the Sersic cusp
  correctly (point-sampling it in real space overestimates a compact bulge's flux by up to 20 %);
* the disk: drawn by GalSim in real space (``method='no_pixel'``) on a grid ``oversample`` times finer
  than the output, multiplied by the arm / lopsidedness / lump modulations, then FFT-ed;
* the knots: points deposited on the fine grid, their Gaussian size applied in Fourier space;
* the PSF: GalSim's transform of a unit-FWHM Moffat (per beta, in 0.05 steps) or Kolmogorov along k,
  tabulated once and scaled by the FWHM, times the fine pixel's transform;
* back in real space the padding (``pad`` output pixels each side, fine grid 5-smooth for the FFT) is
  cropped and ``oversample`` x ``oversample`` blocks are summed, which integrates over the output pixel.

Against ``galsim.Convolve(...).drawImage()`` this agrees to 1.5e-4 of the peak (tested); light beyond the
padded grid wraps round (periodic FFT), under 1 % of the flux for the default ranges. Cost at 64x64: ~4-5
ms per galaxy, at 480x480 ~60 ms. The first use of each bulge Sersic index costs GalSim ~50 ms (its
Hankel tables; indices are rounded to 0.1, at most 46 values). The per-galaxy random generator is
``np.random.default_rng([seed, index])``: galaxy ``index`` is the same whatever ``n`` and ``start``, and
the labelled and survey settings with one seed give the same galaxies under different conditions (use
different seeds for different sets, as ``cutouts.make_sets`` does).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import galsim
import numpy as np
import pandas as pd
import scipy.fft as sfft

from ..errors import ConfigError

from .classes import BANDS, CLASSES  # noqa: E402 - re-exported: render.CLASSES is the public name
DEFAULT_CLASS_WEIGHTS = {"E": 0.10, "S0": 0.12, "Sa": 0.16, "Sb": 0.26, "Sc": 0.26, "Irr": 0.10}

# LSST effective wavelengths (nm), dark-sky brightness (mag/arcsec^2), depth offsets from r (mag).
_LAMBDA_NM = np.array([477.0, 621.5, 754.5, 869.0, 971.0])
_SKY_MAG = np.array([22.26, 21.20, 20.48, 19.60, 18.61])
_DEPTH_OFFSET = np.array([0.4, 0.0, -0.5, -1.1, -1.9])
_R = 1  # index of r in BANDS
_TEMPLATES = ("E", "Sbc", "Scd", "Im")
_DISK_THICKNESS = 0.15


@dataclass(frozen=True)
class RenderSettings:
    """Observing conditions and size ranges of one domain. Ranges are (low, high), drawn uniformly."""
    size: int = 64
    pixel_scale: float = 0.2                          # arcsec per pixel (LSST)
    oversample: int = 2                               # fine-grid factor for drawing, summed back
    pad: int = 8                                      # pixels of margin drawn around the stamp
    mag_r: tuple[float, float] = (15.5, 19.0)
    r_half: tuple[float, float] = (1.0, 3.2)          # arcsec, disk half-light radius (bulge's for E)
    redshift: tuple[float, float] = (0.02, 0.12)
    psf_model: str = "moffat"                         # moffat | kolmogorov
    psf_fwhm: tuple[float, float] = (0.55, 0.85)      # arcsec, r band
    moffat_beta: tuple[float, float] = (2.8, 4.5)
    psf_band_jitter: float = 0.05
    depth_r: float = 26.0                             # 5 sigma point-source depth, r
    zero_point: float = 27.0                          # mag of 1 count
    source_noise: bool = True
    nan_gap_probability: float = 0.10                 # per band
    missing_band_probability: float = 0.0             # per band: whole band NaN
    max_offset: float = 0.5                           # pixels
    knot_sigma: tuple[float, float] = (0.08, 0.25)    # arcsec

    def __post_init__(self):
        if self.size < 16:
            raise ConfigError(f"RenderSettings.size must be >= 16, got {self.size}")
        if self.oversample < 1 or self.pad < 0:
            raise ConfigError("RenderSettings.oversample must be >= 1 and pad >= 0")
        if self.psf_model not in ("moffat", "kolmogorov"):
            raise ConfigError(f"RenderSettings.psf_model must be moffat|kolmogorov, got {self.psf_model!r}")
        for name in ("nan_gap_probability", "missing_band_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"RenderSettings.{name} must be in [0, 1]")

    @classmethod
    def labelled(cls, size: int = 64) -> "RenderSettings":
        """The labelled domain. The ranges are for 64 px; at other sizes galaxy and knot sizes scale with
        the stamp at constant surface brightness (magnitudes shift by 5 log10(size / 64)), so a 480 px
        stamp shows the same kind of galaxy with finer detail; the PSF and the noise stay as observed."""
        return cls._scaled(cls(size=size), size)

    @classmethod
    def survey(cls, size: int = 64) -> "RenderSettings":
        """The shifted (survey) domain: fainter, smaller, redder (higher z), broader Kolmogorov PSF,
        shallower, more chip gaps."""
        base = cls(size=size, mag_r=(17.5, 21.0), r_half=(0.6, 2.0), redshift=(0.08, 0.30),
                   psf_model="kolmogorov", psf_fwhm=(0.8, 1.3), depth_r=25.0, nan_gap_probability=0.15)
        return cls._scaled(base, size)

    @staticmethod
    def _scaled(s: "RenderSettings", size: int) -> "RenderSettings":
        k = size / 64.0
        if k == 1.0:
            return s
        dm = 5.0 * math.log10(k)
        # Large stamps are resolved well at the output pixel: the fine grid would quadruple the FFT cost.
        return replace(s, r_half=(s.r_half[0] * k, s.r_half[1] * k),
                       knot_sigma=(s.knot_sigma[0] * k, s.knot_sigma[1] * k),
                       mag_r=(s.mag_r[0] - dm, s.mag_r[1] - dm),
                       oversample=2 if size <= 128 else 1, pad=max(s.pad, int(round(8 * k ** 0.5))))

    def sky_sigma(self) -> np.ndarray:
        """Per-band sky noise (counts per pixel) from the depth over the effective area of a PSF of the
        mean FWHM of the range."""
        fwhm_px = 0.5 * (self.psf_fwhm[0] + self.psf_fwhm[1]) / self.pixel_scale
        n_eff = 2.266 * fwhm_px ** 2
        depth = self.depth_r + _DEPTH_OFFSET
        return 10 ** (-0.4 * (depth - self.zero_point)) / (5.0 * math.sqrt(n_eff))

    def sky_level(self) -> np.ndarray:
        """Per-band sky (counts per pixel) before subtraction; only its ratio to sigma^2 is used."""
        return 10 ** (-0.4 * (_SKY_MAG - self.zero_point)) * self.pixel_scale ** 2


@dataclass
class RenderedSet:
    images: np.ndarray          # float32 (n, 5, S, S), NaN in chip gaps
    labels: np.ndarray          # int64 (n,), index into CLASSES
    params: pd.DataFrame        # latent parameters, one row per galaxy
    settings: RenderSettings = field(default_factory=RenderSettings)

    def __len__(self) -> int:
        return len(self.labels)


# ----------------------------------------------------------------------------------------------- colours
@lru_cache(maxsize=1)
def _colour_table() -> tuple[np.ndarray, np.ndarray]:
    """(z grid, flux ratios f_b / f_r of shape (template, z, band)) for the CWW templates, AB photon
    counting through GalSim's LSST bandpasses: f_b ~ int N(lambda / (1+z)) T_b dlambda / int T_b / lambda."""
    lam = np.arange(320.0, 1120.0, 1.0)
    thr = np.stack([galsim.Bandpass(f"LSST_{b}.dat", "nm")(lam) for b in BANDS])
    ab = np.trapezoid(thr / lam, lam, axis=1)
    zs = np.linspace(0.0, 1.0, 101)
    out = np.empty((len(_TEMPLATES), len(zs), len(BANDS)))
    for t, name in enumerate(_TEMPLATES):
        sed = galsim.SED(f"CWW_{name}_ext.sed", wave_type="A", flux_type="flambda")
        for k, z in enumerate(zs):
            photons = sed.atRedshift(float(z))(lam)
            f = np.trapezoid(photons[None, :] * thr, lam, axis=1) / ab
            out[t, k] = f / f[_R]
    return zs, out


def _colours(template_weights: np.ndarray, z: float) -> np.ndarray:
    """Per-band flux relative to r of a flux-weighted (in r) template mix at redshift z."""
    zs, table = _colour_table()
    k = np.interp(z, zs, np.arange(len(zs)))
    lo = int(min(k, len(zs) - 2))
    f = table[:, lo] * (1 - (k - lo)) + table[:, lo + 1] * (k - lo)
    return template_weights @ f


# ----------------------------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class _Grid:
    n: int            # fine grid size (square)
    fine: float       # fine pixel scale, arcsec
    x: np.ndarray     # fine pixel-centre coordinates relative to the stamp centre, arcsec (1-D)
    k2: np.ndarray    # |k|^2 in cycles^2/arcsec^2 on the rfft2 grid
    kr: np.ndarray    # |k| in radians/arcsec (GalSim's convention)
    dk: float         # k step, radians/arcsec
    pixel: np.ndarray  # transform of the fine pixel (box)
    crop: slice


@lru_cache(maxsize=8)
def _grid(size: int, pixel_scale: float, oversample: int, pad: int) -> _Grid:
    os_ = oversample
    n = size + 2 * pad
    while not _five_smooth(n * os_):
        n += 2
    pad = (n - size) // 2
    nf = n * os_
    fine = pixel_scale / os_
    x = (np.arange(nf) - (nf - 1) / 2.0) * fine
    ky = sfft.fftfreq(nf, d=fine)
    kx = sfft.rfftfreq(nf, d=fine)
    k2 = (ky[:, None] ** 2 + kx[None, :] ** 2).astype(np.float32)
    pixel = (np.sinc(ky * fine)[:, None] * np.sinc(kx * fine)[None, :]).astype(np.float32)
    return _Grid(nf, fine, x, k2, (2 * math.pi * np.sqrt(k2)).astype(np.float32),
                 2 * math.pi / (nf * fine), pixel, slice(pad * os_, (pad + size) * os_))


def _five_smooth(m: int) -> bool:
    for p in (2, 3, 5):
        while m % p == 0:
            m //= p
    return m == 1


# ----------------------------------------------------------------------------------------------- classes
def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


def _class_params(cls: str, rng: np.random.Generator) -> dict:
    """Draw the latent structure of one galaxy of class ``cls`` (the table in the module docstring)."""
    p = dict(arm_count=0, arm_strength=0.0, arm_pitch_deg=0.0, arm_width=0.0, knot_fraction=0.0,
             lumpiness=0.0, lopsidedness=0.0, n_disk=1.0)
    if cls == "E":
        p.update(bulge_to_total=_u(rng, 0.85, 1.0), n_bulge=_u(rng, 3.0, 5.5),
                 bulge_size_ratio=_u(rng, 0.6, 1.0), disk_mix=np.array([1.0, 0, 0, 0]))
    elif cls == "S0":
        w = _u(rng, 0.0, 0.4)
        p.update(bulge_to_total=_u(rng, 0.45, 0.9), n_bulge=_u(rng, 2.5, 4.5),
                 bulge_size_ratio=_u(rng, 0.25, 0.5), disk_mix=np.array([1 - w, w, 0, 0]))
    elif cls == "Sa":
        w = _u(rng, 0.0, 0.3)
        p.update(bulge_to_total=_u(rng, 0.25, 0.6), n_bulge=_u(rng, 2.0, 4.0),
                 bulge_size_ratio=_u(rng, 0.2, 0.45), disk_mix=np.array([w, 1 - w, 0, 0]),
                 arm_count=2, arm_strength=_u(rng, 0.15, 0.45), arm_pitch_deg=_u(rng, 6, 14),
                 knot_fraction=_u(rng, 0.0, 0.06))
    elif cls == "Sb":
        w = _u(rng, 0.0, 1.0)
        p.update(bulge_to_total=_u(rng, 0.10, 0.35), n_bulge=_u(rng, 1.5, 3.5),
                 bulge_size_ratio=_u(rng, 0.15, 0.4), disk_mix=np.array([0, 1 - w, w, 0]),
                 arm_count=int(rng.choice([2, 3], p=[0.7, 0.3])), arm_strength=_u(rng, 0.30, 0.65),
                 arm_pitch_deg=_u(rng, 11, 20), knot_fraction=_u(rng, 0.03, 0.12),
                 lumpiness=_u(rng, 0.0, 0.15))
    elif cls == "Sc":
        w = _u(rng, 0.0, 0.3)
        p.update(bulge_to_total=_u(rng, 0.0, 0.15), n_bulge=_u(rng, 1.0, 2.5),
                 bulge_size_ratio=_u(rng, 0.1, 0.3), disk_mix=np.array([0, 0, 1 - w, w]),
                 arm_count=int(rng.choice([2, 3, 4], p=[0.5, 0.3, 0.2])), arm_strength=_u(rng, 0.45, 0.85),
                 arm_pitch_deg=_u(rng, 17, 30), knot_fraction=_u(rng, 0.08, 0.22),
                 lumpiness=_u(rng, 0.1, 0.3))
    elif cls == "Irr":
        p.update(bulge_to_total=0.0, n_bulge=0.0, bulge_size_ratio=0.0, disk_mix=np.array([0, 0, 0, 1.0]),
                 n_disk=_u(rng, 0.5, 1.2), knot_fraction=_u(rng, 0.20, 0.45), lumpiness=_u(rng, 0.4, 0.9),
                 lopsidedness=_u(rng, 0.2, 0.6))
    else:
        raise ConfigError(f"unknown class {cls!r}; classes are {CLASSES}")
    if p["arm_count"]:
        p["arm_width"] = _u(rng, 1.5, 4.0)
    return p


def _class_probabilities(class_weights: dict[str, float] | None) -> np.ndarray:
    cw = DEFAULT_CLASS_WEIGHTS if class_weights is None else class_weights
    unknown = sorted(set(cw) - set(CLASSES))
    if unknown:
        raise ConfigError(f"class_weights has unknown class(es) {unknown}; classes are {CLASSES}")
    w = np.array([float(cw.get(c, 0.0)) for c in CLASSES])
    if np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError(f"class_weights must be finite, >= 0 and not all 0, got {cw}")
    return w / w.sum()


# ----------------------------------------------------------------------------------------------- render
def _arm_norm(w: float) -> float:
    """Mean of ((1 + cos)/2)^w over a period: Gamma(w + 1/2) / (sqrt(pi) Gamma(w + 1))."""
    return math.exp(math.lgamma(w + 0.5) - math.lgamma(w + 1.0)) / math.sqrt(math.pi)


_PSF_U = np.linspace(0.0, 20.0, 1001)      # k * FWHM (radians); both PSFs are < 1e-6 beyond 20
_PSF_DU_FINE = 20.0 / 16000                 # nearest-neighbour lookup step: |error| < 1e-3 of T(0)


@lru_cache(maxsize=256)
def _psf_radial_transform(model: str, beta: float) -> np.ndarray:
    """GalSim's Fourier transform of a unit-FWHM circular PSF along k (flux 1, so T(0) = 1), resampled on a
    fine uniform grid of k * FWHM. Any FWHM f follows as T(k f): one table per (model, beta) serves every
    galaxy and band."""
    prof = galsim.Moffat(beta=beta, fwhm=1.0) if model == "moffat" else galsim.Kolmogorov(fwhm=1.0)
    coarse = np.array([prof.kValue(galsim.PositionD(float(u), 0.0)).real for u in _PSF_U])
    fine = np.interp(np.arange(16002) * _PSF_DU_FINE, _PSF_U, coarse, right=0.0)
    fine[-1] = 0.0
    return fine.astype(np.float32)


def _psf_transform(s: RenderSettings, g: _Grid, fwhm: float, beta: float) -> np.ndarray:
    """The PSF convolved with the fine pixel, on the rfft2 grid. Drawing the PSF image and transforming
    it costs ~1.5 ms per band in GalSim's own FFT; a table lookup costs ~0.05 ms."""
    table = _psf_radial_transform(s.psf_model, beta if s.psf_model == "moffat" else 0.0)
    idx = np.minimum((g.kr * np.float32(fwhm / _PSF_DU_FINE) + np.float32(0.5)).astype(np.int32), len(table) - 1)
    return table[idx] * g.pixel


def _transform(prof: galsim.GSObject, g: _Grid, dx: float, dy: float) -> np.ndarray:
    """GalSim's exact Fourier transform of ``prof`` centred at (dx, dy) arcsec from the stamp centre, in
    the rfft2 layout of the fine grid (whose origin is pixel 0, hence the shift to the grid centre).
    GalSim recentres a k image on kx = 0, so the full width is drawn and its kx >= 0 half kept."""
    centre = (g.n - 1) / 2 * g.fine
    kim = galsim.ImageCF(galsim.BoundsI(-(g.n // 2), g.n // 2, -(g.n // 2), g.n // 2 - 1), scale=g.dk)
    prof.shift(centre + dx, centre + dy).drawKImage(image=kim)
    return np.fft.ifftshift(kim.array[:, g.n // 2:], axes=0)


def _to_pixels(ft: np.ndarray, g: _Grid, size: int, oversample: int) -> np.ndarray:
    """Fine-grid transform -> output pixels: invert, crop the padding, sum oversample x oversample blocks."""
    fine = sfft.irfft2(ft, s=(g.n, g.n))[g.crop, g.crop]
    return fine.reshape(size, oversample, size, oversample).sum(axis=(1, 3))


def _render_one(index: int, seed: int, probs: np.ndarray, s: RenderSettings, g: _Grid,
                sigma: np.ndarray, sky: np.ndarray) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng([seed, index])
    label = int(rng.choice(len(CLASSES), p=probs))
    cls = CLASSES[label]
    p = _class_params(cls, rng)
    mag_r = _u(rng, *s.mag_r)
    z = _u(rng, *s.redshift)
    r_half = _u(rng, *s.r_half)
    pa = _u(rng, 0.0, math.pi)
    cos_i = _u(rng, 0.15, 1.0)
    q_disk = math.sqrt(cos_i ** 2 * (1 - _DISK_THICKNESS ** 2) + _DISK_THICKNESS ** 2)
    if cls == "E":
        q_bulge = _u(rng, 0.55, 1.0)
        pa_bulge = pa
    else:
        q_bulge = _u(rng, 0.7, 1.0)
        pa_bulge = pa + math.radians(rng.normal(0.0, 10.0))
    dx, dy = (rng.uniform(-s.max_offset, s.max_offset, 2) if s.max_offset > 0 else (0.0, 0.0))
    os_ = s.oversample
    offset = galsim.PositionD(dx * os_, dy * os_)
    f32 = np.float32   # noise-dominated images: single precision halves the cost of every grid operation

    # -- components on the fine grid (flux 1 each, before modulation)
    bt = p["bulge_to_total"]
    r_bulge = r_half * p["bulge_size_ratio"] if cls != "E" else r_half
    bulge_k = None
    if bt > 0:
        # Drawn in Fourier space: point-sampling a compact Sersic cusp in real space overestimates its flux
        # by up to 20 %; the transform is exact. n in 0.1 steps: GalSim caches its Hankel tables per n
        # (100 at most, ~50 ms each to build).
        p["n_bulge"] = round(p["n_bulge"], 1)
        bulge_k = _transform(galsim.Sersic(n=p["n_bulge"], half_light_radius=r_bulge)
                             .shear(q=q_bulge, beta=pa_bulge * galsim.radians), g, dx * s.pixel_scale,
                             dy * s.pixel_scale)
    if p["n_disk"] == 1.0:
        disk_prof = galsim.Exponential(half_light_radius=r_half)
    else:
        disk_prof = galsim.Sersic(n=p["n_disk"], half_light_radius=r_half)
    disk = (disk_prof.shear(q=q_disk, beta=pa * galsim.radians)
            .drawImage(nx=g.n, ny=g.n, scale=g.fine, method="no_pixel", offset=offset, dtype=f32).array)
    disk_flux = float(disk.sum())

    cp, sp = math.cos(pa), math.sin(pa)
    if p["arm_count"] or p["lopsidedness"]:   # disk-plane polar coordinates of every fine pixel
        xs = (g.x - dx * s.pixel_scale).astype(f32)
        ys = (g.x - dy * s.pixel_scale).astype(f32)
        xr = xs[None, :] * f32(cp) + ys[:, None] * f32(sp)
        yd = (xs[None, :] * f32(-sp / q_disk) + ys[:, None] * f32(cp / q_disk))
        r = np.hypot(xr, yd)
        theta = np.arctan2(yd, xr)
    r_d = r_half / 1.678
    chirality = 1.0 if rng.random() < 0.5 else -1.0
    phi0 = _u(rng, 0.0, 2 * math.pi)
    tan_pitch = math.tan(math.radians(max(p["arm_pitch_deg"], 1.0))) * chirality

    mod = None
    if p["arm_count"]:
        m, a, w = p["arm_count"], p["arm_strength"], p["arm_width"]
        # ((1 + cos x) / 2)^w = cos(x/2)^(2w): one transcendental fewer
        half_phase = f32(m / 2) * (theta - np.log(np.maximum(r, f32(1e-3)) * f32(1 / r_d)) * f32(1 / tan_pitch)) \
            + f32(phi0 / 2)
        r_in = max(1.5 * r_bulge if bt > 0 else 0.0, 0.5 * r_d)
        amp = f32(a) * (f32(1.0) - np.exp(-(r * f32(1 / r_in)) ** 2))
        mod = f32(1.0) - amp + amp * (np.abs(np.cos(half_phase)) ** f32(2 * w)) * f32(1 / _arm_norm(w))
    if p["lopsidedness"]:
        phi1 = _u(rng, 0.0, 2 * math.pi)
        lop = f32(1.0) + f32(p["lopsidedness"] / 2) * np.cos(theta - f32(phi1)) * np.minimum(r * f32(1 / r_d), f32(2.0))
        mod = lop if mod is None else mod * lop
    if p["lumpiness"]:
        ell = _u(rng, 0.3, 0.6) * r_half
        field_k = sfft.rfft2(rng.standard_normal((g.n, g.n), dtype=f32)) * np.exp(
            f32(-2 * math.pi ** 2 * ell ** 2) * g.k2)
        grf = sfft.irfft2(field_k, s=(g.n, g.n))
        lump = np.exp(grf * f32(p["lumpiness"] / (grf.std() + 1e-12)))
        mod = lump if mod is None else mod * lump
    if mod is not None:
        disk = disk * mod
        disk *= disk_flux / max(float(disk.sum()), 1e-30)

    # knots: points deposited bilinearly, given their Gaussian size in Fourier space
    n_knots = 0
    knot_k = None
    kf = p["knot_fraction"]
    if kf > 0:
        n_knots = int(rng.integers(8, 30)) if cls != "Irr" else int(rng.integers(10, 40))
        rk = rng.gamma(2.0, r_d, n_knots)
        if p["arm_count"]:
            j = rng.integers(0, p["arm_count"], n_knots)
            tk = (np.log(np.maximum(rk, 1e-3) / r_d) / tan_pitch + (2 * math.pi * j - phi0) / p["arm_count"]
                  + rng.normal(0.0, 0.15, n_knots))
            kx_d, ky_d = rk * np.cos(tk), rk * np.sin(tk)
        else:
            tk = rng.uniform(0, 2 * math.pi, n_knots)
            c = rng.normal(0.0, 0.3 * r_half, 2)
            kx_d, ky_d = 1.3 * rk * np.cos(tk) + c[0], 1.3 * rk * np.sin(tk) + c[1]
        ky_d = ky_d * q_disk
        kx_img = kx_d * cp - ky_d * sp + dx * s.pixel_scale
        ky_img = kx_d * sp + ky_d * cp + dy * s.pixel_scale
        weights = rng.lognormal(0.0, 0.7, n_knots)
        weights /= weights.sum()
        fx = kx_img / g.fine + (g.n - 1) / 2.0
        fy = ky_img / g.fine + (g.n - 1) / 2.0
        inside = (fx >= 0) & (fx < g.n - 1) & (fy >= 0) & (fy < g.n - 1)
        fx, fy, weights = fx[inside], fy[inside], weights[inside]
        ix, iy = np.floor(fx).astype(int), np.floor(fy).astype(int)
        tx, ty = fx - ix, fy - iy
        knots = np.zeros((g.n, g.n), dtype=f32)
        for oy, ox, ww in ((0, 0, (1 - tx) * (1 - ty)), (0, 1, tx * (1 - ty)),
                           (1, 0, (1 - tx) * ty), (1, 1, tx * ty)):
            np.add.at(knots, (iy + oy, ix + ox), weights * ww)
        sig = _u(rng, *s.knot_sigma)
        knot_k = sfft.rfft2(knots) * np.exp(f32(-2 * math.pi ** 2 * sig ** 2) * g.k2)

    # -- fluxes per band and component
    total = 10 ** (-0.4 * (mag_r - s.zero_point))
    f_b = total * bt
    f_d = total * (1 - bt) * (1 - kf)
    f_k = total * (1 - bt) * kf
    col_b = _colours(np.array([1.0, 0, 0, 0]), z) * 10 ** (-0.4 * rng.normal(0.0, 0.05, len(BANDS)))
    col_d = _colours(p["disk_mix"], z) * 10 ** (-0.4 * rng.normal(0.0, 0.05, len(BANDS)))
    col_k = _colours(np.array([0, 0, 0, 1.0]), z) * 10 ** (-0.4 * rng.normal(0.0, 0.05, len(BANDS)))

    disk_k = sfft.rfft2(disk)

    fwhm_r = _u(rng, *s.psf_fwhm)
    beta = round(_u(rng, *s.moffat_beta) * 20) / 20   # 0.05 steps: the PSF tables are cached per beta
    out = np.empty((len(BANDS), s.size, s.size), dtype=np.float32)
    for b in range(len(BANDS)):
        fwhm_b = fwhm_r * (_LAMBDA_NM[b] / _LAMBDA_NM[_R]) ** -0.2 * (1 + s.psf_band_jitter * rng.normal())
        ft = disk_k * float(f_d * col_d[b])
        if bulge_k is not None:
            ft = ft + bulge_k * float(f_b * col_b[b])
        if knot_k is not None:
            ft = ft + knot_k * float(f_k * col_k[b])
        ft = ft * _psf_transform(s, g, fwhm_b, beta)
        img = _to_pixels(ft, g, s.size, os_)
        var = sigma[b] ** 2 + (np.maximum(img, 0.0) * sigma[b] ** 2 / sky[b] if s.source_noise else 0.0)
        out[b] = img + rng.standard_normal(img.shape) * np.sqrt(var)

    # -- chip gaps and missing bands
    gap_bands = 0
    for b in range(len(BANDS)):
        if rng.random() < s.missing_band_probability:
            out[b] = np.nan
            gap_bands |= 1 << b
            continue
        if rng.random() < s.nan_gap_probability:
            gap_bands |= 1 << b
            S = s.size
            vertical = rng.random() < 0.5
            if rng.random() < 0.6:
                depth = int(rng.integers(2, max(3, S // 4) + 1))
                sl = slice(0, depth) if rng.random() < 0.5 else slice(S - depth, S)
            else:
                width = int(rng.integers(2, max(3, S // 16) + 1))
                start = int(rng.integers(0, S - width + 1))
                sl = slice(start, start + width)
            if vertical:
                out[b][:, sl] = np.nan
            else:
                out[b][sl, :] = np.nan

    params = dict(index=index, label=label, **{"class": cls}, bulge_to_total=bt, n_bulge=p["n_bulge"],
                  n_disk=p["n_disk"], r_half=r_half, r_half_bulge=r_bulge if bt > 0 else 0.0,
                  q_disk=q_disk, q_bulge=q_bulge if bt > 0 else 1.0,
                  inclination_deg=math.degrees(math.acos(cos_i)), position_angle_deg=math.degrees(pa),
                  arm_count=p["arm_count"], arm_strength=p["arm_strength"], arm_pitch_deg=p["arm_pitch_deg"],
                  arm_width=p["arm_width"], knot_fraction=kf, n_knots=n_knots, lumpiness=p["lumpiness"],
                  lopsidedness=p["lopsidedness"], mag_r=mag_r, redshift=z, psf_fwhm=fwhm_r,
                  psf_model=s.psf_model, moffat_beta=beta if s.psf_model == "moffat" else float("nan"),
                  depth_r=s.depth_r, offset_x=float(dx), offset_y=float(dy), nan_gap_bands=gap_bands,
                  **{f"mag_total_{bn}": mag_r - 2.5 * math.log10(
                      (bt * col_b[i] + (1 - bt) * ((1 - kf) * col_d[i] + kf * col_k[i])))
                     for i, bn in enumerate(BANDS)})
    return out, params


def render_galaxies(n: int, seed: int, settings: RenderSettings | None = None,
                    class_weights: dict[str, float] | None = None, start: int = 0) -> RenderedSet:
    """Render galaxies ``start .. start+n-1`` of the stream defined by ``seed`` (see the module docstring).

    Galaxy ``i`` depends only on ``(seed, i, settings, class_weights)``, so chunks rendered separately
    (in parallel, or on Spark) concatenate to the same set as one call.
    """
    s = settings or RenderSettings.labelled()
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    probs = _class_probabilities(class_weights)
    g = _grid(s.size, s.pixel_scale, s.oversample, s.pad)
    sigma, sky = s.sky_sigma(), s.sky_level()
    images = np.empty((n, len(BANDS), s.size, s.size), dtype=np.float32)
    rows = []
    for k in range(n):
        images[k], prm = _render_one(start + k, seed, probs, s, g, sigma, sky)
        rows.append(prm)
    params = pd.DataFrame(rows)
    labels = params["label"].to_numpy(np.int64) if n else np.zeros(0, np.int64)
    return RenderedSet(images=images, labels=labels, params=params, settings=s)


__all__ = ["BANDS", "CLASSES", "DEFAULT_CLASS_WEIGHTS", "RenderSettings", "RenderedSet", "render_galaxies"]
