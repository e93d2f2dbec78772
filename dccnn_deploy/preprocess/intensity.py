"""Intensity normalisation and a foreground threshold for MR volumes.

Assumptions: the background is (close to) zero and darker than the tissue, as in any MR
magnitude image, skull-stripped or not. Percentiles are taken over the non-zero voxels
(or a given mask), so a large zero background (skull-stripped brains, padded volumes) does not
pull them down; with a noisy non-zero background (heads with skull) the lower percentile
lands in the noise and maps it to ~0, the upper one clips the few brightest voxels
(fat, vessels, artefacts). Contrasts are not matched: this only puts intensities on [0, 1].
"""

from __future__ import annotations

import numpy as np


def normalise_intensity(
    data: np.ndarray, mask: np.ndarray | None = None, lower: float = 0.5, upper: float = 99.5
) -> np.ndarray:
    """Map ``data`` (any shape) linearly to float32 ``[0, 1]`` by robust percentiles, clipped.

    The ``lower`` / ``upper`` percentiles are those of the voxels in ``mask`` (default: the
    non-zero, finite voxels). Non-finite voxels become 0. A constant image maps to zeros.
    """
    data = np.nan_to_num(np.asarray(data, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    select = data != 0 if mask is None else np.asarray(mask, dtype=bool)
    values = data[select]
    if values.size == 0:
        return np.zeros_like(data)
    lo, hi = np.percentile(values, [lower, upper])
    if hi <= lo:
        return np.zeros_like(data)
    out = (data - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def otsu_threshold(data: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of the values of ``data`` (maximises the between-class variance)."""
    values = np.asarray(data).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight0 = np.cumsum(hist)[:-1]
    weight1 = hist.sum() - weight0
    sum0 = np.cumsum(hist * centres)[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean0 = sum0 / weight0
        mean1 = (np.dot(hist, centres) - sum0) / weight1
        between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[1:-1][int(np.nanargmax(between))])


def foreground_mask(normalised: np.ndarray) -> np.ndarray:
    """Boolean foreground (head or brain) of a ``[0, 1]`` (D, H, W) image: above Otsu's threshold.

    Otsu separates the dark background (noise or zeros) from the tissue for heads with skull
    as well as for skull-stripped brains; pass the output of :func:`normalise_intensity`. The
    threshold is estimated on every second voxel along each axis.
    """
    return normalised > otsu_threshold(normalised[::2, ::2, ::2])
