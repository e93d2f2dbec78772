"""Affine pre-alignment of a moving image to a fixed image in world coordinates.

The result ``M`` (4x4) maps a fixed world point ``x`` to the moving world point ``M @ x`` (ITK
convention), so ``resample_to_grid(moving, moving_affine, Grid(fixed.shape, fixed_affine),
world_transform=M)`` puts the moving image on the fixed grid. Orientations (LIA, RAS, ...)
and spacings never matter: both images are only ever read through their affines.

Method: each image is box-averaged once to about the finest level's spacing and put on
[0, 1] (robust percentiles); the centres of mass of the Otsu foregrounds give the initial
translation. When one image is a head with skull and the other a skull-stripped brain
(:mod:`~dccnn_deploy.preprocess.brain_mask`: tissue volume), the head is stripped by the bundled
template's brain mask carried through a template -> head registration, so that the skull
cannot pull the brain into the shape of a head. Then, per level (default 8, 4, 2 mm), the
moving image is Gaussian-smoothed in its own voxel space, sampled at ``M @ x`` for a random
subset of the points ``x`` of an RAS grid over the fixed foreground, and Adam maximises the
cost over translation, rotation vector, log-scales and shears about the fixed centre of mass.
The cost is Mattes mutual information (:mod:`~dccnn_deploy.preprocess.mutual_information`;
any contrasts) or global NCC (same contrast only). The coarsest level first runs short rigid
optimisations from seven rotations (identity, +-20 degrees about each axis) and continues from
the best one; a level stops early once the cost has stopped improving.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dccnn_deploy.metrics import ncc
from dccnn_deploy.io.image import voxel_spacing
from dccnn_deploy.ops.smoothing import gaussian_smooth
from dccnn_deploy.ops.warp import identity_grid
from dccnn_deploy.preprocess.brain_mask import TISSUE_LEVEL, has_skull, template_in_image_space
from dccnn_deploy.preprocess.grid import (
    Grid,
    apply_affine,
    bounding_grid,
    foreground_corners,
    sample_affine,
    sample_points,
    voxel_transform,
)
from dccnn_deploy.preprocess.intensity import foreground_mask, normalise_intensity
from dccnn_deploy.preprocess.mutual_information import FixedParzen

Progress = Callable[[str, float], None]
Cost = Literal["auto", "mi", "ncc"]
Skull = Literal["auto", "never"]

_RADIUS_MM = 60.0  # rotation / log-scale / shear parameters are in mm of motion at this radius
_MARGIN_MM = 12.0  # the fixed level grids cover the fixed foreground plus this margin
_START_DEGREES = 20.0  # the coarsest level also starts from +-this rotation about each axis
_RIGID = torch.tensor([1.0] * 6 + [0.0] * 6, dtype=torch.float64)
_MI_VOXELS = 200_000  # voxels of the finest grid in the reported MI
_TEMPLATE_LEVELS = ((8.0, 4.0), (60, 30))  # template head -> user head (for its brain mask only)


@dataclass
class AffineResult:
    """``matrix``: 4x4 float64, fixed world -> moving world. ``similarity_*``: global NCC on the
    finest level's fixed grid, before (headers only) and after; ``mi_*``: Mattes MI (nats) there,
    the contrast-blind twin. ``cost``: what was optimised (``"mi"`` or ``"ncc"``). ``content``:
    ``"head"`` or ``"brain"`` for (moving, fixed); ``stripped``: the images whose skull was
    masked out (by the template brain mask) before matching, and ``brain_mask`` that mask
    (brain fraction in [0, 1], its voxel -> world affine). ``overlap``: Dice of the moved and
    fixed foregrounds (tissue above a tenth of the range, after any stripping) on the finest grid."""

    matrix: np.ndarray
    similarity_before: float
    similarity_after: float
    iterations: int
    seconds: float
    cost: str = "ncc"
    mi_before: float = float("nan")
    mi_after: float = float("nan")
    content: tuple[str, str] = ("brain", "brain")
    stripped: tuple[str, ...] = field(default_factory=tuple)
    overlap: float = float("nan")
    brain_mask: tuple[np.ndarray, np.ndarray] | None = None
    template_head: np.ndarray | None = None  # the template head on brain_mask's voxels (same fit)


@dataclass
class _Volume:
    """A normalised image as a ``(1, 1, D, H, W)`` float32 tensor with its voxel -> world affine,
    the intensity-weighted foreground centre of mass and the foreground box corners (world)."""

    data: torch.Tensor
    affine: np.ndarray
    centre: np.ndarray
    corners: np.ndarray


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


def _box_pool(data: torch.Tensor, affine: np.ndarray, spacing_mm: float) -> tuple[torch.Tensor, np.ndarray]:
    """Average blocks of powers of two voxels while the voxels stay <= ``spacing_mm`` (the affine
    follows)."""
    sizes = voxel_spacing(affine)
    factors = [int(2 ** max(0, math.floor(math.log2(spacing_mm / s + 1e-6)))) for s in sizes]
    if max(factors) == 1:
        return data, affine
    data = F.avg_pool3d(data, kernel_size=factors, stride=factors)  # whole blocks only
    scale = np.diag([*factors, 1.0]).astype(np.float64)
    scale[:3, 3] = (np.asarray(factors) - 1.0) / 2.0
    return data, affine @ scale


def _describe(normalised: np.ndarray, affine: np.ndarray) -> _Volume:
    """A :class:`_Volume` of a ``[0, 1]`` array: foreground centre of mass and box corners."""
    mask = foreground_mask(normalised)
    centre = centre_of_mass(np.where(mask, normalised, 0.0), affine)
    data = torch.from_numpy(np.ascontiguousarray(normalised, dtype=np.float32))[None, None]
    return _Volume(data, np.asarray(affine, dtype=np.float64), centre, foreground_corners(mask, affine))


def _prepare(data: np.ndarray, affine: np.ndarray, finest_mm: float) -> _Volume:
    """``data`` box-averaged to about ``finest_mm`` (never finer than given) and put on [0, 1]."""
    array = np.squeeze(np.asarray(data))
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {np.shape(data)}")
    tensor = torch.from_numpy(np.require(array, np.float32, ["C"]))[None, None]
    pooled, affine = _box_pool(tensor, np.asarray(affine, dtype=np.float64), finest_mm)
    return _describe(normalise_intensity(pooled[0, 0].numpy()), affine)


def _level_volume(volume: _Volume, spacing_mm: float) -> tuple[torch.Tensor, np.ndarray]:
    """Anti-aliased copy of ``volume`` for sampling at ``spacing_mm``, in its own voxel space:
    box-pooled (:func:`_box_pool`), then Gaussian-smoothed to a total blur of about
    ``spacing_mm / 2`` (sigma)."""
    data, affine = _box_pool(volume.data, volume.affine, spacing_mm)
    pooled = float(np.mean(voxel_spacing(affine)))
    sigma_mm = math.sqrt(max(0.0, (spacing_mm / 2.0) ** 2 - pooled**2 / 12.0))
    if sigma_mm / pooled >= 0.3:
        data = gaussian_smooth(data, sigma_mm / pooled)
    return data.contiguous(), affine


def rotation_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """3x3 rotation of a rotation vector ``(..., 3)`` (axis * angle, rad) -> ``(..., 3, 3)``;
    differentiable."""
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack(
        [torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1), torch.stack([-y, x, zero], -1)], -2
    )
    return torch.linalg.matrix_exp(skew)


def parameters_to_matrix(params: torch.Tensor, centre_fixed: torch.Tensor, centre_moving: torch.Tensor) -> torch.Tensor:
    """4x4 world map ``x -> L (x - c_f) + c_m + t`` of 12 parameters (float64, differentiable);
    ``params`` ``(..., 12)`` -> ``(..., 4, 4)`` (a batch of candidates at once).

    ``params``: translation (mm), rotation vector, log-scales, shears (xy, xz, yz); the last nine
    in mm at ``_RADIUS_MM`` (divided by it here) so that one Adam step size suits them all.
    ``L = R @ diag(exp(log_scales)) @ shear`` (shear upper triangular, unit diagonal).
    """
    t, r = params[..., :3], params[..., 3:6] / _RADIUS_MM
    s, h = params[..., 6:9] / _RADIUS_MM, params[..., 9:] / _RADIUS_MM
    one, zero = torch.ones_like(h[..., 0]), torch.zeros_like(h[..., 0])
    shear = torch.stack([torch.stack([one, h[..., 0], h[..., 1]], -1), torch.stack([zero, one, h[..., 2]], -1),
                         torch.stack([zero, zero, one], -1)], -2)
    linear = rotation_matrix(r) @ torch.diag_embed(torch.exp(s)) @ shear
    offset = centre_moving + t - (linear @ centre_fixed.to(linear.dtype).unsqueeze(-1)).squeeze(-1)
    top = torch.cat([linear, offset.unsqueeze(-1)], dim=-1)
    bottom = params.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(*params.shape[:-1], 1, 4)
    return torch.cat([top, bottom], dim=-2)


def _ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Global NCC along the last axis (``(..., N)`` -> ``(...)``): the differentiable twin of
    :func:`dccnn_deploy.metrics.ncc`."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / torch.sqrt((a * a).sum(-1) * (b * b).sum(-1) + 1e-12)


class _Level:
    """One resolution: the fixed image on an RAS grid and the moving image to sample.

    The optimisation reads at most ``max_points`` random voxels of the grid (a fixed subset, as
    ITK's random sampling) and maximises ``cost`` there (NCC, or Mattes MI with the fixed
    values' Parzen weights computed once); :meth:`full_similarity` reads them all. ``region``
    (a bool array and its voxel -> world affine): only the grid voxels on its true voxels are read.
    """

    def __init__(self, fixed: _Volume, moving: _Volume, spacing_mm: float, max_points: int, cost: str,
                 region: tuple[np.ndarray, np.ndarray] | None = None):
        self.grid: Grid = bounding_grid(fixed.corners, spacing_mm, _MARGIN_MM)
        fixed_data, fixed_affine = _level_volume(fixed, spacing_mm)
        to_fixed = torch.as_tensor(voxel_transform(fixed_affine, self.grid))
        self.fixed = sample_affine(fixed_data, to_fixed, self.grid.shape)
        self.moving, self.moving_affine = _level_volume(moving, spacing_mm)
        self._world_to_moving = torch.as_tensor(np.linalg.inv(self.moving_affine))
        grid_affine = torch.as_tensor(np.array(self.grid.affine))
        keep = torch.arange(self.fixed.numel())
        if region is not None:  # only the fixed voxels inside the region: (bool array, its voxel -> world affine)
            keep = keep[torch.from_numpy(_inside(region, self.grid))]
        if keep.numel() > max_points:  # sorted: memory-order reads in the moving volume
            keep = torch.randperm(keep.numel(), generator=torch.Generator().manual_seed(0))[:max_points].sort().values
        voxels = identity_grid(self.grid.shape, dtype=torch.float64).reshape(3, -1)[:, keep].T
        self.points = (voxels @ grid_affine[:3, :3].T + grid_affine[:3, 3]).float()  # world mm (N, 3)
        self.fixed_points = self.fixed.reshape(-1)[keep]
        self.cost = cost
        self._fixed_parzen = FixedParzen(self.fixed_points) if cost == "mi" else None
        self.iterations = 0  # optimiser steps taken on this level

    def similarity(self, matrix: torch.Tensor) -> torch.Tensor:
        """The cost's similarity (NCC or MI) of the moving image at ``matrix @ x`` and the fixed
        image at the optimisation points ``x``; differentiable in ``matrix``. ``matrix``
        ``(4, 4)`` -> scalar, or a batch ``(K, 4, 4)`` -> ``(K,)`` (one sampling call for all)."""
        world_to_voxel = (self._world_to_moving @ matrix).float()
        coords = self.points @ world_to_voxel[..., :3, :3].transpose(-1, -2) + world_to_voxel[..., None, :3, 3]
        values = sample_points(self.moving, coords.reshape(-1, 3))[0, 0].reshape(coords.shape[:-1])
        if self._fixed_parzen is not None:
            return self._fixed_parzen.mutual_information(values)
        return _ncc(values, self.fixed_points)

    def full_similarity(self, matrix: np.ndarray) -> tuple[float, float, float]:
        """(NCC, Mattes MI, foreground Dice) of the whole fixed grid and the moving image at
        ``matrix @ x`` (foregrounds: above :data:`TISSUE_LEVEL`, which any MR contrast's tissue
        is, unlike an Otsu threshold that may split tissue classes)."""
        voxel_map = torch.as_tensor(voxel_transform(self.moving_affine, self.grid, matrix))
        warped = sample_affine(self.moving, voxel_map, self.grid.shape)[0, 0].numpy()
        fixed = self.fixed[0, 0].numpy()
        step = max(1, fixed.size // _MI_VOXELS)  # a regular subset: enough for a stable histogram
        with torch.no_grad():
            mi = float(FixedParzen(torch.from_numpy(fixed.reshape(-1)[::step])).mutual_information(
                torch.from_numpy(warped.reshape(-1)[::step])))
        a, b = warped > TISSUE_LEVEL, fixed > TISSUE_LEVEL
        overlap = 2.0 * float(np.count_nonzero(a & b)) / max(1, int(a.sum()) + int(b.sum()))
        return ncc(warped, fixed), mi, overlap


class _Adam:
    """Adam on one parameter vector with the step size given per call (bias-corrected)."""

    def __init__(self, size: int | tuple[int, ...], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
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
    patience: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on ``-similarity`` with a cosine-decayed step; ``mask`` zeroes the frozen
    parameters' steps. ``params`` ``(K, 12)``: K independent starts optimised together (one
    sampling call a step). ``patience > 0``: stop once the best similarity (the best start's)
    has not risen by ``1e-4`` (relative) for that many steps. Returns each start's best
    parameters seen (the cost is deterministic on the fixed point subset, and an early stop
    leaves Adam mid-oscillation) ``(K, 12)`` and the similarity there ``(K,)`` (optimisation
    points)."""
    params = params.detach().clone().requires_grad_(True)
    adam = _Adam(params.shape)
    best = torch.full(params.shape[:1], -math.inf, dtype=torch.float64)
    best_params, best_at, rising = params.detach().clone(), 0, -math.inf
    for i in range(iterations):
        value = level.similarity(parameters_to_matrix(params, *centres))
        (grad,) = torch.autograd.grad(-value.sum(), params)
        current = value.detach().double()
        better = current > best
        best = torch.where(better, current, best)
        best_params[better] = params.detach()[better]
        top = float(current.max())
        if top > rising + 1e-4 * abs(rising):
            rising, best_at = top, i
        elif patience and i - best_at >= patience:
            break
        if mask is not None:
            grad = grad * mask
        level.iterations += 1
        with torch.no_grad():
            adam.step(params, grad, lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * i / iterations))))
    with torch.no_grad():
        final = level.similarity(parameters_to_matrix(params, *centres)).double()
    better = final >= best
    return torch.where(better[:, None], params.detach(), best_params), torch.where(better, final, best)


def _initial_rotations(degrees: float) -> list[torch.Tensor]:
    """Identity and +-``degrees`` about each world axis, as 12-parameter starts."""
    starts = [torch.zeros(12, dtype=torch.float64)]
    for axis in range(3):
        for sign in (-1.0, 1.0):
            p = torch.zeros(12, dtype=torch.float64)
            p[3 + axis] = sign * math.radians(degrees) * _RADIUS_MM
            starts.append(p)
    return starts


def _coarse_search(
    level: _Level, centres: tuple[torch.Tensor, torch.Tensor], steps: int, lr: float, mask: torch.Tensor | None,
    patience: int,
) -> torch.Tensor:
    """Coarsest level: short rigid runs from a few rotations; the best one goes on for ``steps``."""
    trial = max(5, steps // 4)
    starts, values = _optimise(level, torch.stack(_initial_rotations(_START_DEGREES)), centres, trial, lr, _RIGID)
    params = starts[int(torch.argmax(values))][None]
    return _optimise(level, params, centres, steps, lr, mask, patience)[0][0]


def register_affine(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    levels: Sequence[float] = (8.0, 4.0, 2.0),
    iterations: Sequence[int] = (100, 60, 40),
    dof: Literal["affine", "rigid"] = "affine",
    progress: Progress | None = None,
    max_points: int = 20_000,
    num_threads: int | None = 2,
    cost: Cost = "auto",
    skull: Skull = "auto",
    patience: int = 10,
) -> AffineResult:
    """Affine (12 dof) or rigid (6 dof) registration of ``moving`` to ``fixed`` in world space.

    ``moving`` / ``fixed``: (D, H, W) arrays (a trailing singleton axis is dropped) with 4x4
    voxel -> world affines. ``levels``: grid spacings (mm), coarse to fine, at most
    ``iterations`` steps per level (fewer once converged: ``patience`` steps without gain; 0
    runs them all). ``progress(message, fraction)`` is called once per level. ``max_points``:
    fixed voxels read per step (a random subset of the level grid when it has more).
    ``cost``: ``"mi"`` (Mattes mutual information, any contrasts), ``"ncc"`` (same contrast
    only) or ``"auto"`` (MI). ``skull``: ``"auto"`` strips a head's skull with the template
    brain mask when the other image is a skull-stripped brain; ``"never"`` matches the images
    as they are. ``num_threads``: at most this many torch intra-op threads while registering
    (restored after; None leaves them): each step is small, so more threads than two mostly wait
    at OpenMP barriers (on a busy CPU they cost ten times the work itself); on an idle 2-core
    machine two threads take 15-25 % less time than one (docs/benchmarks.md). Returns the fixed world -> moving world matrix with the
    NCC and MI on the finest grid before (headers only) and after.
    """
    if dof not in ("affine", "rigid"):
        raise ValueError(f"dof must be 'affine' or 'rigid', got {dof!r}")
    if cost not in ("auto", "mi", "ncc"):
        raise ValueError(f"cost must be 'auto', 'mi' or 'ncc', got {cost!r}")
    if skull not in ("auto", "never"):
        raise ValueError(f"skull must be 'auto' or 'never', got {skull!r}")
    if len(levels) != len(iterations) or not levels:
        raise ValueError("levels and iterations must have the same, non-zero length")
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(max(1, min(num_threads, previous)))
    try:
        start = time.perf_counter()
        moving_vol = _prepare(moving, moving_affine, min(levels))
        fixed_vol = _prepare(fixed, fixed_affine, min(levels))
        content = tuple("head" if has_skull(v.data[0, 0].numpy(), v.affine) else "brain" for v in (moving_vol, fixed_vol))
        stripped: tuple[str, ...] = ()
        brain_mask = template_head = None
        if skull == "auto" and content[0] != content[1]:
            if content[0] == "head":
                (moving_vol, mask, template_head), stripped = _strip_skull(moving_vol), ("moving",)
                brain_mask = (mask, moving_vol.affine)
            else:
                (fixed_vol, mask, template_head), stripped = _strip_skull(fixed_vol), ("fixed",)
                brain_mask = (mask, fixed_vol.affine)
        name = "ncc" if cost == "ncc" else "mi"
        params, level, total = _align(moving_vol, fixed_vol, levels, iterations, dof, name, progress, max_points, patience)
        with torch.no_grad():
            matrix = parameters_to_matrix(params, torch.as_tensor(fixed_vol.centre), torch.as_tensor(moving_vol.centre))
            matrix = matrix.numpy().copy()
        (ncc_before, mi_before, _), (ncc_after, mi_after, overlap) = (
            level.full_similarity(np.eye(4)), level.full_similarity(matrix))
        if progress is not None:
            progress("affine done", 1.0)
        return AffineResult(
            matrix=matrix, similarity_before=ncc_before, similarity_after=ncc_after, iterations=total,
            seconds=time.perf_counter() - start, cost=name, mi_before=mi_before, mi_after=mi_after,
            content=content, stripped=stripped, overlap=overlap, brain_mask=brain_mask,
            template_head=template_head,
        )
    finally:
        torch.set_num_threads(previous)


def _align(
    moving: _Volume,
    fixed: _Volume,
    levels: Sequence[float],
    iterations: Sequence[int],
    dof: str,
    cost: str,
    progress: Progress | None,
    max_points: int,
    patience: int,
    region: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[torch.Tensor, _Level, int]:
    """Coarse-to-fine optimisation: the 12 parameters, the finest level and the steps taken
    (``region``: only the fixed voxels inside it count, see :class:`_Level`)."""
    centres = (torch.as_tensor(fixed.centre), torch.as_tensor(moving.centre))
    rigid_mask = _RIGID if dof == "rigid" else None
    params = torch.zeros(12, dtype=torch.float64)
    level, total = None, 0
    for index, (spacing, steps) in enumerate(zip(levels, iterations)):
        if progress is not None:
            progress(f"affine level {index + 1}/{len(levels)}: {spacing:g} mm", index / len(levels))
        level = _Level(fixed, moving, spacing, max_points, cost, region)
        lr = 0.15 * spacing
        if index == 0:
            params = _coarse_search(level, centres, steps, lr, rigid_mask, patience)
        else:
            params = _optimise(level, params[None], centres, steps, lr, rigid_mask, patience)[0][0]
        total += level.iterations
    return params, level, total


def _inside(region: tuple[np.ndarray, np.ndarray], grid: Grid) -> np.ndarray:
    """Which voxels of ``grid`` (flat, C order) fall on a true voxel of ``region`` (a bool array and
    its voxel -> world affine; nearest voxel, outside it: False)."""
    mask, affine = region
    world = apply_affine(np.array(grid.affine), np.indices(grid.shape).reshape(3, -1).T.astype(np.float64))
    voxels = np.rint(apply_affine(np.linalg.inv(affine), world)).astype(np.int64)
    within = np.all((voxels >= 0) & (voxels < np.array(mask.shape)), axis=1)
    inside = np.zeros(len(voxels), dtype=bool)
    inside[within] = mask[tuple(voxels[within].T)]
    return inside


def _template_to(template: np.ndarray, template_affine: np.ndarray, image: np.ndarray, affine: np.ndarray,
                 region: np.ndarray | None = None) -> np.ndarray:
    """Image world -> template world (4x4): the template head registered to a head, by MI, on the
    head's voxels in ``region`` (bool, the image's shape; None: all)."""
    moving = _describe(template, template_affine)
    fixed = _describe(image, affine)
    levels, iterations = _TEMPLATE_LEVELS
    params, _, _ = _align(moving, fixed, levels, iterations, "affine", "mi", None, 20_000, 10,
                          None if region is None else (region, affine))
    with torch.no_grad():
        matrix = parameters_to_matrix(params, torch.as_tensor(fixed.centre), torch.as_tensor(moving.centre))
    return matrix.numpy().copy()


def _strip_skull(volume: _Volume) -> tuple[_Volume, np.ndarray, np.ndarray]:
    """``volume`` times its template brain mask, renormalised to [0, 1], that mask and the
    template head fitted to ``volume`` (both on its voxels)."""
    image = volume.data[0, 0].numpy()
    mask, head = template_in_image_space(image, volume.affine, _template_to)
    return _describe(normalise_intensity(image * mask), volume.affine), mask, head
