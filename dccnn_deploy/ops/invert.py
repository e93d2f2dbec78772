"""Numerical inversion of a displacement field and an inverse-consistent forward/inverse pair.

For ``phi(x) = x + u(x)`` the inverse ``phi^-1(y) = y + w(y)`` solves
``r(w) = w + u(y + w) = 0`` at every voxel ``y``. :func:`invert_displacement` uses Newton's
method on that 3x3 system per voxel, ``w <- w - (I + grad u(y + w))^-1 r``, with ``grad u``
the package's one finite-difference gradient sampled trilinearly. Where ``I + grad u`` is
nearly singular the step falls back to the fixed-point update ``w <- -u(y + w)`` (Chen et al.
2008), i.e. Newton with the Jacobian taken as the identity; steps are capped so a far-off start
cannot jump. The fixed-point iteration alone only converges where ``|grad u| < 1``; the
multi-pass fields of the shipped model compress more than that at the brain's edge, where it
stalled at ~1 voxel residual and folded, while Newton reaches ~1e-4 voxel in a few steps.
Sampling uses :func:`dccnn_deploy.ops.warp.displaced_sampler` (border padding, voxel units).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from dccnn_deploy.ops import native
from dccnn_deploy.ops.jacobian import jacobian_determinant, spatial_gradient
from dccnn_deploy.ops.morphology import dilate
from dccnn_deploy.ops.warp import compose, displaced_sampler, vector_length, warp_gridsample

#: Newton iterations of :func:`invert_displacement` at most (it stops earlier at ``tolerance``)
INVERT_ITERATIONS = 12
#: below this determinant of ``I + grad u`` a voxel takes the fixed-point step instead
SINGULAR_DETERMINANT = 0.05
#: the largest update of one iteration (voxels)
MAX_STEP_VOXELS = 1.0
#: rounds of local smoothing :func:`repair_folds` may take
REPAIR_ROUNDS = 10
#: forward-field nodes compressed below this determinant are smoothed too: trilinear interpolation
#: between such a node and its neighbours can fold the 1 mm warp inside the 2 mm cell (donor
#: 10021 -> 9861: node minimum 0.012, 3 voxels with J <= 0 in the written warp; with 0.02 still 3,
#: with 0.05 none, DK Dice -0.0007; docs/benchmarks.md)
FORWARD_MIN_DETERMINANT = 0.05


def inverse_residual(forward: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``|phi o phi^-1 - id|`` per voxel (voxels), ``(B, 1, D, H, W)``: how far ``inverse`` is
    from inverting ``forward`` (both ``(B, 3, D, H, W)`` voxel displacements, same grid)."""
    return vector_length(compose(forward, inverse, sampler=warp_gridsample))


def _solve3(matrix: list[list[torch.Tensor]], rhs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-voxel solution of ``matrix @ x = rhs`` by the adjugate, and the determinant.

    ``matrix[i][j]``: ``(B, D, H, W)`` entries; ``rhs``: ``(B, 3, D, H, W)``. Where the
    determinant is below :data:`SINGULAR_DETERMINANT` the returned ``x`` is meaningless.
    """
    (a, b, c), (d, e, f), (g, h, i) = matrix
    adj = [[e * i - f * h, c * h - b * i, b * f - c * e],
           [f * g - d * i, a * i - c * g, c * d - a * f],
           [d * h - e * g, b * g - a * h, a * e - b * d]]
    det = a * adj[0][0] + b * adj[1][0] + c * adj[2][0]
    safe = torch.where(det > SINGULAR_DETERMINANT, det, torch.ones_like(det))
    x = torch.stack([sum(adj[r][k] * rhs[:, k] for k in range(3)) / safe for r in range(3)], dim=1)
    return x, det


def field_and_gradient(u: torch.Tensor) -> torch.Tensor:
    """``(B, 12, D, H, W)``: channels 0-2 the field ``u``, ``3 + 3r + c`` its derivative
    ``d u_r / d axis_c`` (one tensor, so one sampling grid serves both in a Newton iteration)."""
    b, _, *shape = u.shape
    return torch.cat([u, spatial_gradient(u).reshape(b, 9, *shape)], dim=1)


def newton_step(sampled: torch.Tensor, residual: torch.Tensor, fallback: bool = True,
                max_step: float = MAX_STEP_VOXELS) -> torch.Tensor:
    """The capped Newton step for ``d + u(y + d) = 0`` (voxels, ``(B, 3, ...)``).

    ``sampled``: :func:`field_and_gradient` sampled at ``y + d`` (``(B, 12, ...)``);
    ``residual``: ``d + u(y + d)``. The step solves ``(I + grad u) step = residual``, is the
    fixed-point step ``residual`` (``fallback``; else no step) where its determinant is at most
    :data:`SINGULAR_DETERMINANT`, and is at most ``max_step`` voxels long.
    """
    jac = [[sampled[:, 3 + 3 * r + c] + (1.0 if r == c else 0.0) for c in range(3)] for r in range(3)]
    step, det = _solve3(jac, residual)
    step = torch.where((det > SINGULAR_DETERMINANT).unsqueeze(1), step, residual if fallback else torch.zeros_like(step))
    return step * torch.clamp(max_step / (vector_length(step) + 1e-12), max=1.0)


@torch.no_grad()
def invert_displacement(
    forward: torch.Tensor, iterations: int = INVERT_ITERATIONS, init: torch.Tensor | None = None,
    tolerance: float = 1e-3,
) -> torch.Tensor:
    """The displacement of ``phi^-1`` for ``phi = id + forward`` (``(B, 3, D, H, W)``, voxels).

    Starts from ``init`` (default: one fixed-point step from ``-forward``, ``-u(y - u(y))``, which
    saves Newton iterations: 5-7 -> 4 on 5-pass fields) and stops when the mean residual
    ``|w + u(y + w)|`` is below ``tolerance`` voxels (the mean, because points mapped outside the
    grid, sampled with border padding, need not converge).
    """
    u = forward.float()
    sources = field_and_gradient(u)
    if init is None:
        w = -warp_gridsample(u, -u, padding="border")  # one read: no mosaic to build
    else:
        w = init.detach().float().clone()
    if native.serves(sources):  # the compiled iteration: sampling and Newton step in one pass
        compiled = native.NativeSource(sources, "border")
        for _ in range(iterations):
            stepped, mean_residual = native.newton_inverse_step(compiled, w, SINGULAR_DETERMINANT, MAX_STEP_VOXELS)
            if mean_residual < tolerance:
                break
            w = stepped
        return w.to(forward.dtype)
    sample = displaced_sampler(sources, "border")  # built once: 12 channels, up to `iterations` reads
    for _ in range(iterations):
        sampled = sample(w)
        residual = w + sampled[:, :3]
        if float(vector_length(residual).mean()) < tolerance:
            break
        w = w - newton_step(sampled, residual)
    return w.to(forward.dtype)


@torch.no_grad()
def make_inverse_consistent(
    forward: torch.Tensor, inverse: torch.Tensor | None, iterations: int = INVERT_ITERATIONS,
    fallback: Callable[[], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(forward, inverse')`` with ``inverse'`` the numerical inverse of ``forward``, started
    from the given ``inverse`` (so a near-inverse converges in a few iterations; None: from
    ``-forward``, a few iterations more). The forward map, which moves the images and labels, is
    kept as it is, except the rare voxel where the network's field folds or nearly folds (det below
    :data:`FORWARD_MIN_DETERMINANT`, ~20 of 600 000 on a held-out donor pair): that and its
    neighbourhood are smoothed (:func:`repair_folds`), as are the few voxels where the nodes of a
    strongly expanding inverse fold in finite differences. Should the numerical inverse still
    fold more voxels than the given one (a forward map folded somewhere has no inverse there), the
    given inverse is kept (fold-free output comes first); without a given inverse, ``fallback()``
    (e.g. the network's own inverse, computed only then) is that reference when the numerical
    inverse folds at all."""
    forward = repair_folds(forward, min_det=FORWARD_MIN_DETERMINANT)  # unchanged unless it (nearly) folds
    numerical = repair_folds(invert_displacement(forward, iterations, init=inverse))
    folds = _folded_voxels(numerical)
    if inverse is None and folds and fallback is not None:
        inverse = fallback()
    if inverse is not None and folds > _folded_voxels(inverse):
        return forward, inverse
    return forward, numerical


@torch.no_grad()
def repair_folds(disp: torch.Tensor, rounds: int = REPAIR_ROUNDS, min_det: float = 0.0) -> torch.Tensor:
    """``disp`` with its folded voxels (``det <= min_det``) and their 2-voxel neighbourhood replaced
    by a 3x3x3 mean, repeated until nothing folds (at most ``rounds`` times); elsewhere unchanged.

    Where a forward map compresses a shell ~12-fold (a scalp pulled onto the brain), its exact
    inverse stretches it as much, and the finite-difference Jacobian of the node values can turn
    negative in a few voxels (13 of 860 160 on the Colin27 head -> ICBM brain pair); one round
    removes them and changes the inverse consistency there by < 0.001 voxel on average.
    """
    for _ in range(rounds):
        folded = jacobian_determinant(disp.float()) <= min_det
        if not bool(folded.any()):
            break
        region = dilate(folded, 2)
        mean = F.avg_pool3d(F.pad(disp, (1,) * 6, mode="replicate"), 3, stride=1)
        disp = torch.where(region, mean, disp)
    return disp


def _folded_voxels(disp: torch.Tensor) -> int:
    return int((jacobian_determinant(disp.float()) <= 0).sum())
