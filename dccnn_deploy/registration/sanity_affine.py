"""Sanity checks of an affine pre-alignment that do not depend on the contrasts.

Each check returns warning strings (empty when all is well), so callers can print them, store
them in report.json and turn them into an exit code. The bounds hold for adult brains against
adult brains or a template: per-axis scales within 0.75-1.33, volume change (determinant)
within 0.67-1.5, shears below 0.2; outside them an affine has usually squashed a head into a
brain or fitted a contrast artefact (issue 15: a T2 -> T1 NCC fit reached determinant 1.69).
The similarity check uses mutual information, which unlike NCC does not stay high when the
contrasts differ, and the overlap check the Dice of the moved and fixed foreground masks.
"""

from __future__ import annotations

import numpy as np

SCALE_BOUNDS = (0.75, 1.0 / 0.75)
DETERMINANT_BOUNDS = (1.0 / 1.5, 1.5)
MAX_SHEAR = 0.2
MIN_OVERLAP = 0.8
MI_TOLERANCE = 0.01  # relative: MI may fall this much (sampling noise) before it counts as a loss


def decompose(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Scales ``(3,)``, shears ``(3,)`` (xy, xz, yz) and determinant of a 4x4 affine's linear
    part ``L = R @ diag(scales) @ K`` (``R`` a rotation, ``K`` unit upper triangular)."""
    linear = np.asarray(matrix, dtype=np.float64)[:3, :3]
    det = float(np.linalg.det(linear))
    gram = linear.T @ linear  # = K^T S^2 K, so its upper Cholesky factor is S @ K
    try:
        upper = np.linalg.cholesky(gram).T
    except np.linalg.LinAlgError:  # singular
        return np.zeros(3), np.zeros(3), det
    scales = np.diag(upper).copy()
    unit = upper / scales[:, None]
    return scales, np.array([unit[0, 1], unit[0, 2], unit[1, 2]]), det


def geometry_warnings(matrix: np.ndarray) -> list[str]:
    """Scale, shear and determinant bounds of a 4x4 affine (either direction)."""
    if not np.all(np.isfinite(np.asarray(matrix, dtype=np.float64))):
        return ["affine: the matrix has non-finite entries"]
    scales, shears, det = decompose(matrix)
    out = []
    lo, hi = SCALE_BOUNDS
    if np.any(scales < lo) or np.any(scales > hi):
        out.append(f"affine: scales {np.round(scales, 2).tolist()} outside [{lo:.2f}, {hi:.2f}]")
    lo, hi = DETERMINANT_BOUNDS
    if not lo <= det <= hi:
        out.append(f"affine: volume change (determinant) {det:.2f} outside [{lo:.2f}, {hi:.2f}]")
    if np.any(np.abs(shears) > MAX_SHEAR):
        out.append(f"affine: shears {np.round(shears, 2).tolist()} beyond +-{MAX_SHEAR}")
    return out


def similarity_warnings(mi_before: float, mi_after: float) -> list[str]:
    """Mutual information (any contrasts) must not fall: a registration that lowers it has
    made the images less alike."""
    if not np.isfinite(mi_before) or not np.isfinite(mi_after):
        return []
    if mi_after < mi_before * (1.0 - MI_TOLERANCE):
        return [f"affine: mutual information fell from {mi_before:.3f} to {mi_after:.3f}"]
    return []


def overlap_warnings(overlap: float) -> list[str]:
    """The Dice of the moved and fixed foreground masks must stay high."""
    if np.isfinite(overlap) and overlap < MIN_OVERLAP:
        return [f"affine: foreground overlap (Dice) {overlap:.2f} below {MIN_OVERLAP}"]
    return []


def foreground_overlap(
    moving_mask: np.ndarray, moving_affine: np.ndarray, fixed_mask: np.ndarray, fixed_affine: np.ndarray,
    matrix: np.ndarray,
) -> float:
    """Dice of ``fixed_mask`` and ``moving_mask`` pulled onto the fixed grid by ``matrix``
    (fixed world -> moving world), nearest neighbour."""
    from dccnn_deploy.preprocess.grid import Grid, resample_to_grid

    fixed = np.asarray(fixed_mask, dtype=bool)
    moved = resample_to_grid(np.asarray(moving_mask, dtype=np.uint8), moving_affine, Grid(fixed.shape, fixed_affine),
                             matrix, order=0).astype(bool)
    total = int(moved.sum()) + int(fixed.sum())
    return 2.0 * int(np.logical_and(moved, fixed).sum()) / total if total else 0.0


def affine_warnings(
    matrix: np.ndarray,
    mi_before: float | None = None,
    mi_after: float | None = None,
    overlap: float | None = None,
) -> list[str]:
    """All the checks that have their inputs: geometry always; MI when both values are given;
    the foreground overlap when given (e.g. :attr:`AffineResult.overlap` or
    :func:`foreground_overlap`)."""
    out = geometry_warnings(matrix)
    if mi_before is not None and mi_after is not None:
        out += similarity_warnings(mi_before, mi_after)
    if overlap is not None:
        out += overlap_warnings(overlap)
    return out


def result_warnings(result) -> list[str]:
    """:func:`affine_warnings` of an :class:`~dccnn_deploy.preprocess.affine.AffineResult`."""
    return affine_warnings(result.matrix, result.mi_before, result.mi_after, getattr(result, "overlap", None))
