"""Bring one image into the other's contrast before the network sees it. Here "moving" is the image
mapped and "fixed" the one whose contrast it takes; :mod:`dccnn_deploy.registration.contrast`
chooses which of a pair is mapped.

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
difference between the moving image's tissues that the blurred conditional mean loses. When no
monotone map fits (a FLAIR, or a T1 head against a T2 head), one moving intensity stands for
several fixed tissues, and a single ``E[fixed | moving]`` blurs them together; the conditional mean
is then taken **locally** (:class:`LocalContrastMap`: one table per node of a 16 mm lattice,
blended trilinearly, each shrunk towards the global table), where fewer tissues share an
intensity (donors painted with independent contrasts: DK Dice 0.426 / 0.412 -> 0.459 / 0.440;
ICBM T2 head <-> Colin27 T1 head +0.003 / +0.006). So the network,
trained mostly on pairs of one contrast, runs on a pair of one contrast, with all its passes. Only
the network's input changes: the written images keep their own intensities.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

#: intensity histogram bins of the moving image (normalised to [0, 1])
CONTRAST_BINS = 64
#: fewest joint-foreground voxels for a bin to get its own mean (else interpolated)
MIN_BIN_VOXELS = 20
#: the map :func:`map_contrast` used, by monotone direction (0: none fits)
MAPS = {1: "rank (increasing)", -1: "rank (decreasing)", 0: "local conditional mean"}
#: share of E[fixed | moving]'s explained variance a monotone map must keep to be used instead
MONOTONE_KEEP = 0.9
#: knots of the fitted lookup table, and quantiles of the distribution stretch
LOOKUP_KNOTS = 2049
QUANTILES = 1001
#: lattice spacing (model-grid voxels, 16 mm at 2 mm) of the local conditional mean, and the weight
#: (in voxels) of the global table in each node's table: measured on the painted donor pairs
#: (spacing 4 / 6 / 8 / 12 / 16 / 24 voxels at weight 10: 0.450 / 0.456 / 0.454 / 0.450 / 0.446 / 0.435;
#: weight 3 at 8: 0.459; docs/benchmarks.md)
LOCAL_SPACING = 8
LOCAL_PRIOR_VOXELS = 3.0


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
    #: applies to the moving image at any resolution (before resampling)
    grid_only = False

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        if self.kind == "none":
            return image.copy()
        return np.where(tissue_mask(image, self.threshold), np.interp(image, self.xs, self.ys), image).astype(np.float32)


def fit_contrast_map(moving: np.ndarray, fixed: np.ndarray, threshold: float = 0.05,
                     bins: int = CONTRAST_BINS, knots: int = LOOKUP_KNOTS,
                     monotone: bool = True) -> ContrastMap | LocalContrastMap:
    """The map taking ``moving`` (normalised, on the fixed image's grid after the affine) into
    ``fixed``'s contrast: ``E[fixed | moving]`` over the joint tissue (both :func:`tissue_mask` at
    ``threshold``), or, where a monotone map explains as much (:func:`monotone_direction`), the
    fixed intensity of the same rank; then stretched to the fixed tissue's distribution. Where no
    monotone map fits (or not ``monotone``), the conditional mean is local (:class:`LocalContrastMap`)."""
    moving = np.asarray(moving, dtype=np.float32)
    fixed = np.asarray(fixed, dtype=np.float32)
    none = ContrastMap(np.zeros(0), np.zeros(0), "none", threshold)
    moving_tissue, fixed_tissue = tissue_mask(moving, threshold), tissue_mask(fixed, threshold)
    joint = moving_tissue & fixed_tissue
    if int(joint.sum()) < MIN_BIN_VOXELS:
        return none
    edges = np.linspace(threshold, 1.0, bins + 1)
    index = _bin_of(moving[joint], edges)
    counts = np.bincount(index, minlength=bins)
    sums = np.bincount(index, weights=fixed[joint], minlength=bins)
    valid = counts >= MIN_BIN_VOXELS
    if not valid.any():
        return none
    centres = 0.5 * (edges[:-1] + edges[1:])
    means = sums[valid] / counts[valid]
    direction = monotone_direction(means, counts[valid], fixed[joint]) if monotone else 0
    qs = np.linspace(0.0, 1.0, QUANTILES)
    target = np.quantile(fixed[fixed_tissue], qs)
    if not direction:
        local = LocalContrastMap.fit(moving, fixed, joint, edges, np.interp(centres, centres[valid], means), threshold)
        source = np.maximum.accumulate(np.quantile(local.table_values(moving)[moving_tissue], qs) + qs * 1e-6)
        return replace(local, source=source, target=target)
    xs = np.linspace(threshold, 1.0, knots)
    source = np.maximum.accumulate(np.quantile(direction * moving[moving_tissue], qs) + qs * 1e-6)
    return ContrastMap(xs, np.interp(direction * xs, source, target), MAPS[direction], threshold)


@dataclass(frozen=True)
class LocalContrastMap:
    """``E[fixed | moving, position]`` on the grid it was fitted on: one conditional-mean table
    (``means``, one row per node of a lattice of ``spacing`` voxels, one column per moving-intensity
    bin of ``edges``) blended trilinearly between the nodes, then stretched monotonically
    (quantiles ``source`` -> ``target``) to the fixed tissue's distribution. The background
    (outside :func:`tissue_mask`) stays as it is."""

    means: np.ndarray
    edges: np.ndarray
    shape: tuple[int, int, int]
    spacing: int
    threshold: float
    source: np.ndarray = field(default_factory=lambda: np.zeros(0))
    target: np.ndarray = field(default_factory=lambda: np.zeros(0))
    kind: str = MAPS[0]
    #: applies to images on the grid it was fitted on only (``shape``)
    grid_only = True

    @classmethod
    def fit(cls, moving: np.ndarray, fixed: np.ndarray, joint: np.ndarray, edges: np.ndarray,
            global_means: np.ndarray, threshold: float, spacing: int = LOCAL_SPACING,
            prior: float = LOCAL_PRIOR_VOXELS) -> LocalContrastMap:
        """Tables from the ``joint`` tissue voxels, each node's shrunk towards ``global_means``
        (one per bin) with the weight of ``prior`` voxels."""
        bins = len(edges) - 1
        nodes = int(np.prod(_lattice_size(moving.shape, spacing)))
        index = _bin_of(moving[joint], edges)
        counts, sums = np.zeros(nodes * bins), np.zeros(nodes * bins)
        for node, weight in _lattice_corners(moving.shape, spacing):
            cell = node[joint] * bins + index
            counts += np.bincount(cell, weights=weight[joint], minlength=nodes * bins)
            sums += np.bincount(cell, weights=weight[joint] * fixed[joint], minlength=nodes * bins)
        means = (sums.reshape(nodes, bins) + prior * global_means) / (counts.reshape(nodes, bins) + prior)
        return cls(means.astype(np.float32), edges, tuple(moving.shape), spacing, threshold)

    def table_values(self, image: np.ndarray) -> np.ndarray:
        """The blended tables' value at every voxel of ``image`` (before the stretch)."""
        index = _bin_of(image, self.edges)
        out = np.zeros(self.shape, dtype=np.float32)
        for node, weight in _lattice_corners(self.shape, self.spacing):
            out += weight * self.means[node, index]
        return out

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        if image.shape != self.shape:
            raise ValueError(f"a local contrast map applies to its own grid {self.shape}, not {image.shape}")
        mapped = np.interp(self.table_values(image), self.source, self.target)
        return np.where(tissue_mask(image, self.threshold), mapped, image).astype(np.float32)


def _bin_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.digitize(values, edges) - 1, 0, len(edges) - 2)


def _lattice_size(shape: tuple[int, ...], spacing: int) -> tuple[int, ...]:
    return tuple(n // spacing + 2 for n in shape)


def _lattice_corners(shape: tuple[int, ...], spacing: int):
    """The 8 ``(node index, trilinear weight)`` arrays (each ``shape``) of every voxel's lattice cell."""
    size = _lattice_size(shape, spacing)
    axes = [np.arange(n, dtype=np.float32) / spacing for n in shape]
    low = [np.floor(a).astype(np.int64) for a in axes]
    frac = [a - lo for a, lo in zip(axes, low)]
    for corner in np.ndindex(2, 2, 2):
        node = np.zeros(shape, dtype=np.int64)
        weight = np.ones(shape, dtype=np.float32)
        for axis, offset in enumerate(corner):
            view = [None, None, None]
            view[axis] = slice(None)
            node = node * size[axis] + (low[axis] + offset)[tuple(view)]
            weight = weight * (frac[axis] if offset else 1.0 - frac[axis])[tuple(view)]
        yield node, weight


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
