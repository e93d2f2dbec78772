"""A bright background made dark before registration.

Every other stage assumes an MR magnitude image: a dark background (air, or zeros around a
skull-stripped brain) and brighter tissue. An image inverted as a whole (``max - image``: a
"T2-like" image made from a T1, or a display-inverted export) has the brightest background of
all; its foreground threshold, intensity percentiles, tissue masks and contrast maps then take the
air for tissue (Colin27 brain inverted as a whole -> ICBM brain: the warped labels agree with the
same-content registration at Dice 0.65, docs/benchmarks.md). The background level is read in the
eight corners of the field of view, which lie outside any head or brain (a thin slab's top and
bottom faces may be all tissue, its corners are not); when it is bright, the image the pipeline
works on is ``level - image`` (clipped at 0): air dark again, tissue in the reverse order. The
written images keep their own intensities.
"""

from __future__ import annotations

import numpy as np

from dccnn_deploy.io import Volume

#: each corner block spans this share of every axis (at least 2 voxels)
CORNER_SHARE = 0.08
#: the background is bright when its level lies above this share of the image's robust range
BRIGHT_SHARE = 0.5
#: robust range: these percentiles of (a subsample of) the image
RANGE_PERCENTILES = (0.5, 99.5)


def corner_level(data: np.ndarray) -> float:
    """Median of the eight corner blocks' own medians: the background's intensity."""
    data = np.asarray(data)
    sizes = [max(2, int(round(n * CORNER_SHARE))) for n in data.shape]
    medians = []
    for corner in np.ndindex(2, 2, 2):
        block = tuple(slice(n - s, n) if high else slice(0, s) for n, s, high in zip(data.shape, sizes, corner))
        medians.append(float(np.median(np.nan_to_num(np.asarray(data[block], dtype=np.float32)))))
    return float(np.median(medians))


def bright_background(data: np.ndarray) -> float | None:
    """The background level when it is brighter than :data:`BRIGHT_SHARE` of the robust range
    (an inverted image), else None (the usual dark background). Reads the corners and every
    third voxel along each axis (256^3: ~0.03 s)."""
    data = np.asarray(data)
    if data.ndim != 3 or min(data.shape) < 4:
        return None
    lo, hi = np.percentile(np.nan_to_num(np.asarray(data[::3, ::3, ::3], dtype=np.float32)), RANGE_PERCENTILES)
    level = corner_level(data)
    if hi <= lo or (level - lo) / (hi - lo) <= BRIGHT_SHARE:
        return None
    return level


def with_dark_background(volume: Volume) -> tuple[Volume, bool]:
    """``volume`` as the pipeline works on it: ``level - data`` (clipped at 0) when its
    background is bright (:func:`bright_background`), else ``volume`` itself; and whether it
    was flipped."""
    level = bright_background(volume.data)
    if level is None:
        return volume, False
    flipped = np.clip(np.float32(level) - np.asarray(volume.data, dtype=np.float32), 0.0, None)
    return Volume(flipped.astype(np.float32, copy=False), volume.affine, volume.path), True
