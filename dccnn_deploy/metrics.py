"""Evaluation metrics (paper Sec. IV-A-5), one implementation each, used by CLI, training, tests.

Label metrics work on integer numpy arrays; field metrics on voxel-unit displacements
``(3, D, H, W)`` or ``(B, 3, D, H, W)`` (numpy or torch), see :mod:`dccnn_deploy.ops.warp`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from dccnn_deploy.ops.jacobian import jacobian_determinant
from dccnn_deploy.ops.smoothing import gaussian_smooth
from dccnn_deploy.ops.warp import compose, vector_length, warp_gridsample

TISSUE_CLASSES = 3


def _as_field(disp) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(disp) if not torch.is_tensor(disp) else disp).float()
    return t.unsqueeze(0) if t.dim() == 4 else t


def _labels_of(a: np.ndarray, b: np.ndarray, labels: Iterable[int] | None) -> list[int]:
    if labels is not None:
        return [int(l) for l in labels]
    return sorted(int(l) for l in np.union1d(np.unique(a), np.unique(b)) if l != 0)


def dice(a: np.ndarray, b: np.ndarray, labels: Iterable[int] | None = None) -> dict[int, float]:
    """Dice per label (background 0 excluded unless listed); NaN where both lack a label.

    One pass over the volumes: label counts and overlaps by ``bincount``.
    """
    a, b = _compact_labels(np.asarray(a), np.asarray(b))
    wanted = _labels_of(a.values, b.values, labels)
    size = len(a.lut)
    count_a = np.bincount(a.index.ravel(), minlength=size)
    count_b = np.bincount(b.index.ravel(), minlength=size)
    same = a.values_equal(b)
    overlap = np.bincount(a.index[same].ravel(), minlength=size)
    out = {}
    for lab in wanted:
        k = a.position(lab)
        denom = (count_a[k] + count_b[k]) if k is not None else 0
        out[lab] = float(2.0 * overlap[k] / denom) if denom else float("nan")
    return out


class _Compact:
    """Label map as indices into a shared sorted table of label values (``lut``)."""

    def __init__(self, index: np.ndarray, lut: np.ndarray, values: np.ndarray):
        self.index, self.lut, self.values = index, lut, values

    def position(self, label: int) -> int | None:
        k = int(np.searchsorted(self.lut, label))
        return k if k < len(self.lut) and self.lut[k] == label else None

    def values_equal(self, other: "_Compact") -> np.ndarray:
        return self.index == other.index


def _compact_labels(a: np.ndarray, b: np.ndarray) -> tuple[_Compact, _Compact]:
    """Both maps re-indexed into one table of their label values (fast bincounts, find_objects)."""
    ua, ub = np.unique(a), np.unique(b)
    lut = np.union1d(ua, ub)
    return (
        _Compact(np.searchsorted(lut, a).astype(np.int64), lut, ua),
        _Compact(np.searchsorted(lut, b).astype(np.int64), lut, ub),
    )


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))


def hd95(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), labels: Iterable[int] | None = None
) -> dict[int, float]:
    """95th-percentile symmetric Hausdorff distance (mm) between label surfaces, per label.

    NaN where a label is missing from either map. Each label is measured inside the bounding
    box of both its masks (``find_objects``), so many small labels stay cheap.
    """
    from scipy import ndimage  # here, not at import: 0.2 s of every registration's start-up otherwise

    ca, cb = _compact_labels(np.asarray(a), np.asarray(b))
    boxes_a = ndimage.find_objects(ca.index + 1)
    boxes_b = ndimage.find_objects(cb.index + 1)
    out = {}
    for lab in _labels_of(ca.values, cb.values, labels):
        k = ca.position(lab)
        box_a = boxes_a[k] if k is not None and k < len(boxes_a) else None
        box_b = boxes_b[k] if k is not None and k < len(boxes_b) else None
        if box_a is None or box_b is None:
            out[lab] = float("nan")
            continue
        box = tuple(
            slice(max(min(sa.start, sb.start) - 1, 0), min(max(sa.stop, sb.stop) + 1, n))
            for sa, sb, n in zip(box_a, box_b, ca.index.shape)
        )
        ma, mb = ca.index[box] == k, cb.index[box] == k
        sa, sb = _surface(ma), _surface(mb)
        dist_to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
        dist_to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
        out[lab] = float(np.percentile(np.concatenate([dist_to_b[sa], dist_to_a[sb]]), 95))
    return out


def mean_of(per_label: dict[int, float]) -> float:
    """Mean over labels, ignoring NaN (NaN if no label has a value)."""
    vals = [v for v in per_label.values() if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def ssim(a: np.ndarray, b: np.ndarray, data_range: float | None = None, sigma: float = 1.5) -> float:
    """Mean 3-D structural similarity with a Gaussian window (Wang et al. 2004 constants)."""
    ta = torch.as_tensor(np.asarray(a, dtype=np.float32))[None, None]
    tb = torch.as_tensor(np.asarray(b, dtype=np.float32))[None, None]
    if data_range is None:
        data_range = float(max(ta.max(), tb.max()) - min(ta.min(), tb.min())) or 1.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    blur = lambda t: gaussian_smooth(t, sigma)  # noqa: E731
    mu_a, mu_b = blur(ta), blur(tb)
    var_a = blur(ta * ta) - mu_a**2
    var_b = blur(tb * tb) - mu_b**2
    cov = blur(ta * tb) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Global normalised cross-correlation (Pearson) of two images, optionally in a mask."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if mask is not None:
        x, y = x[mask], y[mask]
    x = x.ravel() - x.mean()
    y = y.ravel() - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def jacobian_map(disp) -> np.ndarray:
    """Jacobian determinant map ``(D, H, W)`` of one voxel-unit displacement ``(3, D, H, W)``."""
    return jacobian_determinant(_as_field(disp))[0, 0].numpy()


def folding_percent(disp) -> float:
    """Percentage of voxels with det(J) <= 0."""
    return float((jacobian_determinant(_as_field(disp)) <= 0).float().mean() * 100.0)


def inverse_consistency(forward, inverse) -> dict[str, float]:
    """|phi o phi^-1 - id| (voxels) on the moving grid and |phi^-1 o phi - id| on the fixed grid.

    ``forward`` lives on the fixed grid, ``inverse`` on the moving grid (same shapes here).
    Returns the mean and 95th percentile over both directions (the percentile over every k-th
    error when there are more than 2M). Composition through ``grid_sample`` (the same trilinear
    border sampling as the gather warp, about 1e-6 voxel apart, several times faster).
    """
    f, i = _as_field(forward), _as_field(inverse)
    err = torch.cat([vector_length(compose(a, b, sampler=warp_gridsample)).flatten() for a, b in ((f, i), (i, f))])
    err = err.double().numpy()
    return {"mean": float(err.mean()), "p95": float(np.percentile(err[:: max(1, err.size // 2_000_000)], 95))}


def tissue_classes(image: np.ndarray, classes: int = TISSUE_CLASSES) -> np.ndarray:
    """Labels ``1..classes`` by intensity quantiles inside the foreground of a normalised
    ``(D, H, W)`` image; 0 outside. A label-free proxy of CSF / grey / white matter on T1."""
    from dccnn_deploy.preprocess.intensity import foreground_mask  # preprocess imports this module

    mask = foreground_mask(image)
    labels = np.zeros(image.shape, np.int16)
    if mask.any():
        edges = np.quantile(image[mask], np.linspace(0, 1, classes + 1)[1:-1])
        labels[mask] = 1 + np.searchsorted(edges, image[mask]).astype(np.int16)
    return labels


def warped_label_dice(
    forward, moving_labels: np.ndarray, fixed_labels: np.ndarray,
    labels: Iterable[int] | None = None, ignore: Iterable[int] = (),
) -> float:
    """Mean Dice of ``moving_labels`` ``(D, H, W)`` pulled through the voxel displacement
    ``forward`` (nearest neighbour, zeros outside) against ``fixed_labels`` on the model grid.

    ``labels``: the labels to average (default: every non-zero label of either map, less
    ``ignore``). Label values must be exact in float32 (< 2**24).
    """
    source = torch.from_numpy(np.asarray(moving_labels, dtype=np.float32))[None, None]
    moved = warp_gridsample(source, _as_field(forward), mode="nearest")[0, 0].numpy().astype(np.int32)
    fixed = np.asarray(fixed_labels).astype(np.int32)
    if labels is None:
        skip = {int(v) for v in ignore}
        labels = [v for v in _labels_of(moved, fixed, None) if v not in skip]
    return mean_of(dice(moved, fixed, labels))


def class_dice(forward: np.ndarray, moving: np.ndarray, fixed: np.ndarray) -> float:
    """Mean Dice of ``tissue_classes(moving)`` pulled through ``forward`` ``(3, D, H, W)``
    (voxels, nearest neighbour) against ``tissue_classes(fixed)``."""
    return warped_label_dice(forward, tissue_classes(moving), tissue_classes(fixed), range(1, TISSUE_CLASSES + 1))
