"""Plausibility checks of a registration's geometry: a list of independent checks, each
returning warning strings (empty when fine). :func:`affine_sanity` runs the affine ones.

``matrix`` is the 4x4 RAS map fixed world -> moving world (what the pipeline estimates).
Its scale, shear and determinant bounds are :func:`~dccnn_deploy.registration.sanity_affine.geometry_warnings`
(the one implementation; the contrast-robust MI and overlap checks live there too).
The field-of-view overlap counts foreground voxels (Otsu, as the pipeline's grid placement)
so that the air around a head, or a large neck-to-vertex box, raises no warning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dccnn_deploy.registration.sanity_affine import geometry_warnings

#: the final-result check's warnings start with this (:mod:`~dccnn_deploy.registration.sanity_final`;
#: the batch report flags them as "result check", every other warning as "geometry")
RESULT_PREFIX = "result: "

MIN_FIXED_COVERED = 0.6  # share of the fixed foreground inside the moved moving image's box
MIN_MOVING_INSIDE = 0.5  # share of the moved moving foreground inside the fixed image's box

Box = tuple[Sequence[int], np.ndarray]  # (shape, voxel -> world affine): the whole image box
MAX_POINTS = 20000  # foreground voxels sampled per image for the overlap
#: the foreground is found on every FOREGROUND_STRIDE-th voxel along each axis (a 1 mm image:
#: 0.45-0.50 -> 0.05 s a call, overlaps within 0.005; at most MAX_POINTS voxels are counted anyway)
FOREGROUND_STRIDE = 2


def _lattice(shape: Sequence[int], n: int = 12) -> np.ndarray:
    """``n^3`` voxel positions spread over a box of ``shape`` (cell centres), as (N, 4) homogeneous."""
    axes = [(np.arange(n) + 0.5) / n * s - 0.5 for s in shape]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return np.concatenate([pts, np.ones((len(pts), 1))], axis=1)


def _geometry(image) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """(shape, affine, sample voxel positions (N, 4)) of a ``Volume`` (its foreground voxels,
    :func:`~dccnn_deploy.preprocess.intensity.foreground_mask` on a :data:`FOREGROUND_STRIDE`
    lattice) or a ``(shape, affine)`` box (a lattice)."""
    if hasattr(image, "data"):
        from dccnn_deploy.preprocess.intensity import foreground_mask, normalise_intensity

        shape, affine = tuple(image.data.shape), np.asarray(image.affine, dtype=np.float64)
        coarse = image.data[::FOREGROUND_STRIDE, ::FOREGROUND_STRIDE, ::FOREGROUND_STRIDE]
        idx = np.argwhere(foreground_mask(normalise_intensity(coarse))) * FOREGROUND_STRIDE
        if len(idx) == 0:
            return shape, affine, _lattice(shape)
        idx = idx[:: max(1, len(idx) // MAX_POINTS)]
        return shape, affine, np.concatenate([idx, np.ones((len(idx), 1))], axis=1)
    shape, affine = image
    return tuple(shape), np.asarray(affine, dtype=np.float64), _lattice(shape)


def _inside(voxels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    v = voxels[:, :3]
    return ((v >= -0.5) & (v <= np.asarray(shape) - 0.5)).all(axis=1)


def fov_overlap(matrix: np.ndarray, moving, fixed) -> tuple[float, float]:
    """(share of the fixed image inside the moved moving image's box, share of the moved moving
    image inside the fixed box). ``moving``/``fixed``: a ``Volume`` (its foreground is counted,
    so air around a head does not matter) or a ``(shape, affine)`` box (the whole box)."""
    m = np.asarray(matrix, dtype=np.float64)
    m_shape, m_aff, m_pts = _geometry(moving)
    f_shape, f_aff, f_pts = _geometry(fixed)
    to_moving_vox = np.linalg.inv(m_aff) @ m @ f_aff  # fixed voxel -> moving voxel
    covered = _inside(f_pts @ to_moving_vox.T, m_shape).mean()
    inside = _inside(m_pts @ np.linalg.inv(to_moving_vox).T, f_shape).mean()
    return float(covered), float(inside)


def check_fov_overlap(matrix: np.ndarray, moving, fixed) -> list[str]:
    """The moved moving image covers too little of the fixed field of view, or lands mostly outside it."""
    covered, inside = fov_overlap(matrix, moving, fixed)
    out = []
    if covered < MIN_FIXED_COVERED:
        out.append(f"the moved moving image covers only {covered:.0%} of the fixed field of view")
    if inside < MIN_MOVING_INSIDE:
        out.append(f"only {inside:.0%} of the moved moving image lies inside the fixed field of view")
    return out


MATRIX_CHECKS: list[Callable[[np.ndarray], list[str]]] = [geometry_warnings]


def affine_sanity(matrix: np.ndarray, moving=None, fixed=None) -> list[str]:
    """Warnings about the affine ``matrix`` (fixed world -> moving world): every check of
    :data:`MATRIX_CHECKS`, plus the field-of-view overlap when both images are given (``Volume``
    objects, or ``(shape, affine)`` boxes). Empty when the geometry looks plausible."""
    warnings = [w for check in MATRIX_CHECKS for w in check(matrix)]
    if moving is not None and fixed is not None:
        warnings += check_fov_overlap(matrix, moving, fixed)
    return warnings


__all__ = ["RESULT_PREFIX", "affine_sanity", "check_fov_overlap", "fov_overlap", "MATRIX_CHECKS"]
