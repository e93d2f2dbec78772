"""Numerical inversion of a displacement field and an inverse-consistent forward/inverse pair.

For ``phi(x) = x + u(x)`` the inverse ``phi^-1(y) = y + w(y)`` satisfies
``w(y) = -u(y + w(y))``; the fixed-point iteration ``w <- -u(y + w)`` (Chen et al. 2008,
"A simple fixed-point approach to invert a deformation field") converges when ``phi`` is
smooth and folds nowhere (|grad u| < 1 locally). Sampling uses the package's one warp
(:func:`dccnn_deploy.ops.warp.warp_gridsample`, border padding, voxel units).
"""

from __future__ import annotations

import torch

from dccnn_deploy.ops.jacobian import jacobian_determinant
from dccnn_deploy.ops.warp import compose, warp_gridsample

#: iterations of :func:`invert_displacement` used by :func:`make_inverse_consistent`
INVERT_ITERATIONS = 15


def inverse_residual(forward: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``|phi o phi^-1 - id|`` per voxel (voxels), ``(B, 1, D, H, W)``: how far ``inverse`` is
    from inverting ``forward`` (both ``(B, 3, D, H, W)`` voxel displacements, same grid)."""
    return compose(forward, inverse, sampler=warp_gridsample).norm(dim=1, keepdim=True)


@torch.no_grad()
def invert_displacement(
    forward: torch.Tensor, iterations: int = INVERT_ITERATIONS, init: torch.Tensor | None = None,
    tolerance: float = 1e-3,
) -> torch.Tensor:
    """The displacement of ``phi^-1`` for ``phi = id + forward`` (``(B, 3, D, H, W)``, voxels).

    Starts from ``init`` (default ``-forward``) and stops early when the mean update is below
    ``tolerance`` voxels (the mean, because points mapped outside the grid, sampled with border
    padding, need not converge).
    """
    w = -forward.clone() if init is None else init.detach().clone()
    for _ in range(iterations):
        new = -warp_gridsample(forward, w, padding="border")
        step = float((new - w).norm(dim=1).mean())
        w = new
        if step < tolerance:
            break
    return w


@torch.no_grad()
def make_inverse_consistent(
    forward: torch.Tensor, inverse: torch.Tensor, iterations: int = INVERT_ITERATIONS
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(forward, inverse')`` with ``inverse'`` the numerical inverse of ``forward``, started
    from the given ``inverse`` (so a near-inverse converges in a few iterations). The forward
    map, which moves the images and labels, is kept as it is. Where the forward map compresses
    strongly (e.g. a scalp pulled onto a brain's edge) the fixed-point iteration can fold: then
    the given inverse is kept when it folds less (fold-free output comes first)."""
    numerical = invert_displacement(forward, iterations, init=inverse)
    if _folded_voxels(numerical) > _folded_voxels(inverse):
        return forward, inverse
    return forward, numerical


def _folded_voxels(disp: torch.Tensor) -> int:
    return int((jacobian_determinant(disp.float()) <= 0).sum())
