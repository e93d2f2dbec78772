"""Affine pre-alignment of a moving image to a fixed image in world coordinates.

The result ``M`` (4x4) maps a fixed world point ``x`` to the moving world point ``M @ x`` (ITK
convention), so ``resample_to_grid(moving, moving_affine, Grid(fixed.shape, fixed_affine),
world_transform=M)`` puts the moving image on the fixed grid. Orientations (LIA, RAS, ...)
and spacings never matter: both images are only ever read through their affines.

Method: intensities to [0, 1] (robust percentiles); the centres of mass of the Otsu
foregrounds give the initial translation; then, per level (default 8, 4, 2 mm), the moving
image is box-downsampled and Gaussian-smoothed in its own voxel space, sampled at ``M @ x``
for (a random subset of) the points ``x`` of an RAS grid over the fixed foreground, and Adam
maximises the global NCC over translation, rotation vector, log-scales and shears about the
fixed centre of mass. The coarsest level first runs short rigid optimisations from seven
rotations (identity, +-20 degrees about each axis) and continues from the best one.

Assumptions: same contrast (T1 to T1; NCC needs a linear intensity relation) and alike
content: both heads with skull or both skull-stripped. A skull-stripped brain against a head
with skull is stretched to fill the head (strip both, or neither).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dccnn_deploy.metrics import ncc
from dccnn_deploy.io.image import voxel_spacing
from dccnn_deploy.ops.smoothing import gaussian_smooth
from dccnn_deploy.ops.warp import identity_grid
from dccnn_deploy.preprocess.grid import (
    Grid,
    apply_affine,
    bounding_grid,
    sample_affine,
    sample_points,
    voxel_transform,
)
from dccnn_deploy.preprocess.intensity import foreground_mask, normalise_intensity

Progress = Callable[[str, float], None]

_RADIUS_MM = 60.0  # rotation / log-scale / shear parameters are in mm of motion at this radius
_MARGIN_MM = 12.0  # the fixed level grids cover the fixed foreground plus this margin
_START_DEGREES = 20.0  # the coarsest level also starts from +-this rotation about each axis
_RIGID = torch.tensor([1.0] * 6 + [0.0] * 6, dtype=torch.float64)


@dataclass
class AffineResult:
    """``matrix``: 4x4 float64, fixed world -> moving world. Similarities: global NCC on the
    finest level's fixed grid, before (headers only) and after the registration."""

    matrix: np.ndarray
    similarity_before: float
    similarity_after: float
    iterations: int
    seconds: float


@dataclass
class _Volume:
    """A normalised image as a ``(1, 1, D, H, W)`` float32 tensor with its voxel -> world affine."""

    data: torch.Tensor
    affine: np.ndarray


def centre_of_mass(weights: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World position ``(3,)`` of the centre of mass of non-negative ``weights`` (D, H, W)."""
    total = float(weights.sum(dtype=np.float64))
    if total <= 0:
        return apply_affine(affine, (np.asarray(weights.shape, dtype=np.float64) - 1.0) / 2.0)
    index = [
        float(np.dot(weights.sum(axis=tuple(a for a in range(3) if a != k), dtype=np.float64),
                     np.arange(weights.shape[k]))) / total
        for k in range(3)
    ]
    return apply_affine(affine, np.asarray(index))


def _foreground_corners(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World corners ``(8, 3)`` of the voxel bounding box of ``mask`` (all of it if empty)."""
    bounds = []
    for k in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != k)))
        bounds.append((present[0], present[-1]) if present.size else (0, mask.shape[k] - 1))
    corners = np.array([[bounds[k][c >> k & 1] for k in range(3)] for c in range(8)], dtype=np.float64)
    return apply_affine(affine, corners)


def _prepare(data: np.ndarray, affine: np.ndarray) -> tuple[_Volume, np.ndarray, np.ndarray]:
    """Normalised volume, intensity-weighted foreground centre of mass (world), foreground corners."""
    norm = normalise_intensity(np.squeeze(np.asarray(data)))
    if norm.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {np.shape(data)}")
    mask = foreground_mask(norm)
    com = centre_of_mass(np.where(mask, norm, 0.0), affine)
    volume = _Volume(torch.from_numpy(norm)[None, None], np.asarray(affine, dtype=np.float64))
    return volume, com, _foreground_corners(mask, affine)


def _level_volume(volume: _Volume, spacing_mm: float) -> _Volume:
    """Anti-aliased copy of ``volume`` for sampling at ``spacing_mm``, in its own voxel space.

    Box-pools by powers of two while the voxels stay <= ``spacing_mm`` (the affine follows),
    then Gaussian-smooths the small volume to a total blur of about ``spacing_mm / 2`` (sigma).
    Smoothing before pooling would be cleaner but costs seconds on 256^3 volumes.
    """
    sizes = voxel_spacing(volume.affine)
    factors = [int(2 ** max(0, math.floor(math.log2(spacing_mm / s + 1e-6)))) for s in sizes]
    data, affine = volume.data, volume.affine
    if max(factors) > 1:
        data = F.avg_pool3d(data, kernel_size=factors, stride=factors)
        scale = np.diag([*factors, 1.0]).astype(np.float64)
        scale[:3, 3] = (np.asarray(factors) - 1.0) / 2.0
        affine = affine @ scale
    pooled = float(np.mean(voxel_spacing(affine)))
    sigma_mm = math.sqrt(max(0.0, (spacing_mm / 2.0) ** 2 - pooled**2 / 12.0))
    if sigma_mm / pooled >= 0.3:
        data = gaussian_smooth(data, sigma_mm / pooled)
    return _Volume(data.contiguous(), affine)


def rotation_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """3x3 rotation of a rotation vector ``(3,)`` (axis * angle, rad); differentiable."""
    zero = rotvec.new_zeros(())
    x, y, z = rotvec
    skew = torch.stack(
        [torch.stack([zero, -z, y]), torch.stack([z, zero, -x]), torch.stack([-y, x, zero])]
    )
    return torch.linalg.matrix_exp(skew)


def parameters_to_matrix(params: torch.Tensor, centre_fixed: torch.Tensor, centre_moving: torch.Tensor) -> torch.Tensor:
    """4x4 world map ``x -> L (x - c_f) + c_m + t`` of 12 parameters (float64, differentiable).

    ``params``: translation (mm), rotation vector, log-scales, shears (xy, xz, yz); the last nine
    in mm at ``_RADIUS_MM`` (divided by it here) so that one Adam step size suits them all.
    ``L = R @ diag(exp(log_scales)) @ shear`` (shear upper triangular, unit diagonal).
    """
    t, r, s, h = params[:3], params[3:6] / _RADIUS_MM, params[6:9] / _RADIUS_MM, params[9:] / _RADIUS_MM
    one, zero = params.new_ones(()), params.new_zeros(())
    shear = torch.stack(
        [torch.stack([one, h[0], h[1]]), torch.stack([zero, one, h[2]]), torch.stack([zero, zero, one])]
    )
    linear = rotation_matrix(r) @ torch.diag(torch.exp(s)) @ shear
    top = torch.cat([linear, (centre_moving + t - linear @ centre_fixed)[:, None]], dim=1)
    return torch.cat([top, params.new_tensor([[0.0, 0.0, 0.0, 1.0]])], dim=0)


def _ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Global NCC of two tensors of equal shape (scalar): the differentiable twin of
    :func:`dccnn_deploy.metrics.ncc`."""
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum() + 1e-12)


class _Level:
    """One resolution: the fixed image on an RAS grid and the moving image to sample.

    The optimisation reads at most ``max_points`` random voxels of the grid (a fixed subset, as
    ITK's random sampling); :meth:`full_similarity` reads them all.
    """

    def __init__(self, fixed: _Volume, moving: _Volume, corners: np.ndarray, spacing_mm: float, max_points: int):
        self.grid: Grid = bounding_grid(corners, spacing_mm, _MARGIN_MM)
        fixed_level = _level_volume(fixed, spacing_mm)
        to_fixed = torch.as_tensor(voxel_transform(fixed_level.affine, self.grid))
        self.fixed = sample_affine(fixed_level.data, to_fixed, self.grid.shape)
        self.moving = _level_volume(moving, spacing_mm)
        self._world_to_moving = torch.as_tensor(np.linalg.inv(self.moving.affine))
        self._grid_affine = torch.as_tensor(np.array(self.grid.affine))
        keep = torch.arange(self.fixed.numel())
        if keep.numel() > max_points:  # sorted: memory-order reads in the moving volume
            keep = torch.randperm(keep.numel(), generator=torch.Generator().manual_seed(0))[:max_points].sort().values
        voxels = identity_grid(self.grid.shape, dtype=torch.float64).reshape(3, -1)[:, keep].T
        self.points = (voxels @ self._grid_affine[:3, :3].T + self._grid_affine[:3, 3]).float()  # world mm (N, 3)
        self.fixed_points = self.fixed.reshape(-1)[keep]
        self.iterations = 0  # optimiser steps taken on this level

    def similarity(self, matrix: torch.Tensor) -> torch.Tensor:
        """Global NCC of the moving image sampled at ``matrix @ x`` with the fixed image (points)."""
        world_to_voxel = (self._world_to_moving @ matrix).float()
        coords = self.points @ world_to_voxel[:3, :3].T + world_to_voxel[:3, 3]
        return _ncc(sample_points(self.moving.data, coords)[0, 0], self.fixed_points)

    def full_similarity(self, matrix: np.ndarray) -> float:
        """:func:`dccnn_deploy.metrics.ncc` of the fixed grid and the moving image at ``matrix @ x``."""
        voxel_map = torch.as_tensor(voxel_transform(self.moving.affine, self.grid, matrix))
        warped = sample_affine(self.moving.data, voxel_map, self.grid.shape)
        return ncc(warped[0, 0].numpy(), self.fixed[0, 0].numpy())


class _Adam:
    """Adam on one parameter vector with the step size given per call (bias-corrected)."""

    def __init__(self, size: int, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.m = torch.zeros(size, dtype=torch.float64)
        self.v = torch.zeros(size, dtype=torch.float64)
        self.betas, self.eps, self.t = betas, eps, 0

    def step(self, params: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        params.sub_(lr * m_hat / (v_hat.sqrt() + self.eps))


def _optimise(
    level: _Level,
    params: torch.Tensor,
    centres: tuple[torch.Tensor, torch.Tensor],
    iterations: int,
    lr: float,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, float]:
    """Adam on ``-NCC`` with a cosine-decayed step; ``mask`` zeroes the frozen parameters' steps.

    Returns the parameters and the NCC (optimisation points) at them.
    """
    params = params.detach().clone().requires_grad_(True)
    adam = _Adam(params.numel())
    for i in range(iterations):
        loss = -level.similarity(parameters_to_matrix(params, *centres))
        (grad,) = torch.autograd.grad(loss, params)
        if mask is not None:
            grad = grad * mask
        level.iterations += 1
        with torch.no_grad():
            adam.step(params, grad, lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * i / iterations))))
    with torch.no_grad():
        final = float(level.similarity(parameters_to_matrix(params, *centres)))
    return params.detach(), final


def _initial_rotations(degrees: float) -> list[torch.Tensor]:
    """Identity and +-``degrees`` about each world axis, as 12-parameter starts."""
    starts = [torch.zeros(12, dtype=torch.float64)]
    for axis in range(3):
        for sign in (-1.0, 1.0):
            p = torch.zeros(12, dtype=torch.float64)
            p[3 + axis] = sign * math.radians(degrees) * _RADIUS_MM
            starts.append(p)
    return starts


def register_affine(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    levels: Sequence[float] = (8.0, 4.0, 2.0),
    iterations: Sequence[int] = (100, 60, 40),
    dof: Literal["affine", "rigid"] = "affine",
    progress: Progress | None = None,
    max_points: int = 60_000,
    num_threads: int | None = 1,
) -> AffineResult:
    """Affine (12 dof) or rigid (6 dof) registration of ``moving`` to ``fixed`` in world space.

    ``moving`` / ``fixed``: (D, H, W) arrays (a trailing singleton axis is dropped) with 4x4
    voxel -> world affines. ``levels``: grid spacings (mm), coarse to fine, ``iterations`` per
    level. ``progress(message, fraction)`` is called once per level. ``max_points``: fixed voxels
    read per iteration (a random subset of the level grid when it has more). ``num_threads``:
    torch intra-op threads while registering (restored after; None leaves them): each step is
    small, and on a busy CPU OpenMP barriers across threads cost ten times the work itself.
    Returns the fixed world -> moving world matrix and the global NCC on the finest grid before
    (headers only) and after.
    """
    if dof not in ("affine", "rigid"):
        raise ValueError(f"dof must be 'affine' or 'rigid', got {dof!r}")
    if len(levels) != len(iterations) or not levels:
        raise ValueError("levels and iterations must have the same, non-zero length")
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _register(moving, moving_affine, fixed, fixed_affine, levels, iterations, dof, progress, max_points)
    finally:
        torch.set_num_threads(previous)


def _register(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    levels: Sequence[float],
    iterations: Sequence[int],
    dof: str,
    progress: Progress | None,
    max_points: int,
) -> AffineResult:
    """:func:`register_affine` without the argument checks and the thread setting."""
    start = time.perf_counter()
    fixed_vol, centre_fixed, corners = _prepare(fixed, fixed_affine)
    moving_vol, centre_moving, _ = _prepare(moving, moving_affine)
    centres = (torch.as_tensor(centre_fixed), torch.as_tensor(centre_moving))
    rigid_mask = _RIGID if dof == "rigid" else None

    params = torch.zeros(12, dtype=torch.float64)
    level, total = None, 0
    for index, (spacing, steps) in enumerate(zip(levels, iterations)):
        if progress is not None:
            progress(f"affine level {index + 1}/{len(levels)}: {spacing:g} mm", index / len(levels))
        level = _Level(fixed_vol, moving_vol, corners, spacing, max_points)
        lr = 0.15 * spacing
        if index == 0:
            params = _coarse_search(level, centres, steps, lr, rigid_mask)
        else:
            params, _ = _optimise(level, params, centres, steps, lr, rigid_mask)
        total += level.iterations

    with torch.no_grad():
        matrix = parameters_to_matrix(params, *centres).numpy().copy()
        before, after = level.full_similarity(np.eye(4)), level.full_similarity(matrix)
    if progress is not None:
        progress("affine done", 1.0)
    return AffineResult(
        matrix=matrix,
        similarity_before=before,
        similarity_after=after,
        iterations=total,
        seconds=time.perf_counter() - start,
    )


def _coarse_search(
    level: _Level, centres: tuple[torch.Tensor, torch.Tensor], steps: int, lr: float, mask: torch.Tensor | None
) -> torch.Tensor:
    """Coarsest level: short rigid runs from a few rotations; the best one goes on for ``steps``."""
    trial = max(5, steps // 4)
    candidates = [_optimise(level, p, centres, trial, lr, _RIGID) for p in _initial_rotations(_START_DEGREES)]
    params = max(candidates, key=lambda c: c[1])[0]
    return _optimise(level, params, centres, steps, lr, mask)[0]
