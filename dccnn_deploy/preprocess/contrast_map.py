"""Bring the moving image into the fixed image's contrast before the network sees it.

After the affine stage, most voxels of the joint foreground overlap the same tissue, so the mean
fixed intensity of the voxels under each moving intensity, ``E[fixed | moving]``, is a
tissue-by-tissue translation of one contrast into the other (T2 -> T1: CSF bright -> dark, white
matter dark -> bright). :func:`map_contrast` estimates it from the joint histogram (one bin per
1/``bins`` of the moving intensity range) and applies it piecewise-linearly. Where the affine
leaves tissues overlapping, that mean is pulled towards the overall mean (a low-contrast image),
so the result is then stretched monotonically to the fixed foreground's intensity distribution
(quantile matching; inverted donor pair: DK Dice 0.462 / 0.420 -> 0.485 / 0.450). When a
monotone function of the moving intensity explains nearly as much as ``E[fixed | moving]``
(inverted T1, most T2 brains), the moving image is histogram-matched instead: each voxel gets the
fixed intensity of its rank (in reverse order for an inverted contrast), which keeps every
difference between the moving image's tissues that the blurred conditional mean loses. So the network,
trained mostly on pairs of one contrast, runs on a pair of one contrast, with all its passes. Only
the network's input changes: the written images keep their own intensities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: intensity histogram bins of the moving image (normalised to [0, 1])
CONTRAST_BINS = 64
#: fewest joint-foreground voxels for a bin to get its own mean (else interpolated)
MIN_BIN_VOXELS = 20
#: the map :func:`map_contrast` used, by monotone direction (0: none fits)
MAPS = {1: "rank (increasing)", -1: "rank (decreasing)", 0: "conditional mean"}
#: share of E[fixed | moving]'s explained variance a monotone map must keep to be used instead
MONOTONE_KEEP = 0.9
#: knots of the fitted lookup table, and quantiles of the distribution stretch
LOOKUP_KNOTS = 2049
QUANTILES = 1001


@dataclass(frozen=True)
class ContrastMap:
    """A moving-intensity -> fixed-intensity lookup (piecewise linear through ``(xs, ys)``) for
    the tissue (:func:`tissue_mask` at ``threshold``); the background stays as it is. ``kind``: :data:`MAPS`
    or ``"none"``. Fitted on the model grid, it applies to the moving image at any resolution:
    mapped before resampling, a tissue's edge blends the mapped tissue with the background (an
    inverted image's bright rim would otherwise become a rim of mid-grey)."""

    xs: np.ndarray
    ys: np.ndarray
    kind: str
    threshold: float

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        if self.kind == "none":
            return image.copy()
        return np.where(tissue_mask(image, self.threshold), np.interp(image, self.xs, self.ys), image).astype(np.float32)


def fit_contrast_map(moving: np.ndarray, fixed: np.ndarray, threshold: float = 0.05,
                     bins: int = CONTRAST_BINS, knots: int = LOOKUP_KNOTS) -> ContrastMap:
    """The map taking ``moving`` (normalised, on the fixed image's grid after the affine) into
    ``fixed``'s contrast: ``E[fixed | moving]`` over the joint tissue (both :func:`tissue_mask` at
    ``threshold``), or, where a monotone map explains as much (:func:`monotone_direction`), the
    fixed intensity of the same rank; then stretched to the fixed tissue's distribution."""
    moving = np.asarray(moving, dtype=np.float32)
    fixed = np.asarray(fixed, dtype=np.float32)
    none = ContrastMap(np.zeros(0), np.zeros(0), "none", threshold)
    moving_tissue, fixed_tissue = tissue_mask(moving, threshold), tissue_mask(fixed, threshold)
    joint = moving_tissue & fixed_tissue
    if int(joint.sum()) < MIN_BIN_VOXELS:
        return none
    edges = np.linspace(threshold, 1.0, bins + 1)
    index = np.clip(np.digitize(moving[joint], edges) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    sums = np.bincount(index, weights=fixed[joint], minlength=bins)
    valid = counts >= MIN_BIN_VOXELS
    if not valid.any():
        return none
    centres = 0.5 * (edges[:-1] + edges[1:])
    means = sums[valid] / counts[valid]
    direction = monotone_direction(means, counts[valid], fixed[joint])

    def first(x: np.ndarray) -> np.ndarray:  # one contrast a monotone function of the other: ranks
        return x * direction if direction else np.interp(x, centres[valid], means)

    xs = np.linspace(threshold, 1.0, knots)
    qs = np.linspace(0.0, 1.0, QUANTILES)
    source = np.maximum.accumulate(np.quantile(first(moving[moving_tissue]), qs) + qs * 1e-6)
    target = np.quantile(fixed[fixed_tissue], qs)
    return ContrastMap(xs, np.interp(first(xs), source, target), MAPS[direction], threshold)


def tissue_mask(image: np.ndarray, threshold: float) -> np.ndarray:
    """The voxels above ``threshold`` and the darker ones they enclose: an inverted or T2-like
    image's darkest tissue (a T1-bright structure inside the brain) is tissue, not background
    (inverted donor pairs: contrast agreement 0.74 -> 0.81, DK Dice +0.01; docs/benchmarks.md)."""
    from scipy import ndimage

    above = np.asarray(image) > threshold
    box = ndimage.find_objects(above.astype(np.uint8))  # holes lie inside the tissue's bounding box
    if not box:
        return above
    above[box[0]] = ndimage.binary_fill_holes(above[box[0]])
    return above


def map_contrast(moving: np.ndarray, fixed: np.ndarray, threshold: float = 0.05,
                 bins: int = CONTRAST_BINS) -> tuple[np.ndarray, str]:
    """``moving`` through :func:`fit_contrast_map`'s map fitted on it, and the map's kind."""
    fitted = fit_contrast_map(moving, fixed, threshold, bins)
    return fitted(moving), fitted.kind


def monotone_direction(means: np.ndarray, counts: np.ndarray, fixed: np.ndarray,
                       keep: float = MONOTONE_KEEP) -> int:
    """+1 / -1 when a non-decreasing / non-increasing function of the moving intensity explains at
    least ``keep`` of what ``E[fixed | moving]`` (bin ``means``, ``counts`` voxels each, in
    moving-intensity order) explains of the variance of ``fixed`` (the joint foreground's fixed
    intensities); 0 when neither does (e.g. FLAIR: CSF dark, grey matter bright, white matter
    between)."""
    from scipy.optimize import isotonic_regression

    weights = counts.astype(np.float64)
    explained = float(np.sum(weights * (means - fixed.mean()) ** 2))
    if explained <= 0:
        return 0
    best, direction = np.inf, 0
    for sign in (1, -1):
        fit = isotonic_regression(means, weights=weights, increasing=sign > 0).x
        lost = float(np.sum(weights * (means - fit) ** 2))
        if lost < best:
            best, direction = lost, sign
    return direction if explained - best >= keep * explained else 0
