"""Analytic phantom heads in world coordinates, shared by the tests (any grid samples the same
world content, so resampling and registration results can be checked exactly)."""

from __future__ import annotations

import math

import numpy as np

from dccnn_deploy.preprocess.grid import Grid, apply_affine

CENTRE = np.array([4.0, -12.0, 9.0])  # world centre of the phantom head (mm)
RADII = np.array([56.0, 64.0, 52.0])  # head semi-axes (mm) along R, A, S


def rotation(axis, degrees: float) -> np.ndarray:
    """3x3 rotation about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * skew + (1 - math.cos(a)) * skew @ skew


def lia_affine(shape, spacing: float, centre_world) -> np.ndarray:
    """An LIA voxel -> world affine (axes: -R, -S, +A) centred at ``centre_world``."""
    affine = np.zeros((4, 4))
    affine[0, 0], affine[2, 1], affine[1, 2], affine[3, 3] = -spacing, -spacing, spacing, 1.0
    half = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = np.asarray(centre_world) - affine[:3, :3] @ half
    return affine


def grid_points(grid: Grid) -> np.ndarray:
    """World positions of all voxels, ``(*shape, 3)``."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), axis=-1)
    return apply_affine(grid.affine, index)


def phantom(points: np.ndarray) -> np.ndarray:
    """A smooth asymmetric "head" at world ``points`` (..., 3): scalp/skull shell, brain with
    blob texture, two unequal dark ventricles and a bright off-centre blob. Analytic, so any
    grid samples the same world content."""
    rng = np.random.default_rng(7)
    q = (points - CENTRE) / RADII
    r = np.linalg.norm(q, axis=-1)
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    head = sig((1.0 - r) * 14.0)
    brain = sig((0.82 - r) * 14.0)
    out = 0.25 * head + 0.55 * (head - brain) * sig((r - 0.9) * 30.0) + 0.45 * brain
    for _ in range(24):
        c = CENTRE + rng.uniform(-0.6, 0.6, 3) * RADII
        s = rng.uniform(6.0, 11.0)
        out = out + brain * rng.uniform(-0.15, 0.2) * np.exp(-np.sum((points - c) ** 2, -1) / (2 * s * s))
    for offset, radii, value in (((-12, 5, 6), (7, 20, 8), -0.35), ((10, 8, 6), (5, 14, 7), -0.3), ((20, -25, -10), (9, 9, 9), 0.3)):
        d = (points - CENTRE - np.asarray(offset)) / np.asarray(radii)
        out = out + value * brain * sig((1.0 - np.linalg.norm(d, axis=-1)) * 6.0)
    return out.astype(np.float32)
