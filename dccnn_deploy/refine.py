"""Instance optimisation (``--refine N``): Adam on a residual stationary velocity field.

The refined maps are ``phi = phi_net o exp(v)`` and ``phi^-1 = exp(-v) o phi_net^-1``: both are
diffeomorphic when the network's maps are (exp of a velocity is, by scaling and squaring), and
the pair stays as inverse-consistent as the network's. With no network the maps start at the
identity. The objective is the paper's: symmetric local NCC (lambda_1), smoothness of v
(lambda_3) and the Jacobian folding penalty (lambda_2) on both maps. v lives on a grid half as
fine as the images (smoother, 8x cheaper); the images are registered coarse to fine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from dccnn_deploy.config import LossWeights
from dccnn_deploy.losses import local_ncc
from dccnn_deploy.ops.integrate import exp_velocity
from dccnn_deploy.ops.jacobian import jacobian_determinant, spatial_gradient
from dccnn_deploy.ops.warp import compose, warp_gridsample


#: smoothness weight of the refinement (lambda_3 = 1 is the paper's for training the network);
#: chosen on a known synthetic deformation of ICBM 2009c: CerebrA Dice 0.875 / 0.900 / 0.904 for
#: 1 / 0.3 / 0.1 with no folding (docs/benchmarks.md); 0.25 keeps a margin for real anatomy.
REFINE_SMOOTH = 0.25


@dataclass
class RefineResult:
    """Refined ``forward`` / ``inverse`` voxel displacements ``(1, 3, D, H, W)`` and the loss history."""

    forward: torch.Tensor
    inverse: torch.Tensor
    history: list[float] = field(default_factory=list)


def _resize_field(disp: torch.Tensor, size) -> torch.Tensor:
    """Trilinear resize of a voxel displacement to ``size`` (``align_corners=True`` geometry)."""
    scale = torch.tensor(
        [(n_out - 1) / max(n_in - 1, 1) for n_in, n_out in zip(disp.shape[2:], size)], dtype=disp.dtype
    ).view(1, 3, 1, 1, 1)
    return F.interpolate(disp, size=tuple(size), mode="trilinear", align_corners=True) * scale


def _resize_image(img: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(img, size=tuple(size), mode="trilinear", align_corners=True)


def refine(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    iterations: int,
    forward: torch.Tensor | None = None,
    inverse: torch.Tensor | None = None,
    weights: LossWeights | None = None,
    lr: float = 0.1,
    shrink_factors: tuple[int, ...] = (4, 2, 1),
    progress: Callable[[int, float], None] | None = None,
) -> RefineResult:
    """Refine a registration of ``moving`` to ``fixed`` (``(1, 1, D, H, W)``, same grid).

    ``iterations`` Adam steps in all, split evenly over the image resolutions
    ``1 / shrink_factors`` (coarse first; the velocity lives at 1/2, so resolutions finer than
    1/2 refine the same field against more image detail). ``progress(i, loss)`` after each step.
    """
    w = weights or LossWeights(smooth=REFINE_SMOOTH)
    size = moving.shape[2:]
    zeros = moving.new_zeros((1, 3, *size))
    fwd0 = zeros if forward is None else forward.detach()
    inv0 = zeros if inverse is None else inverse.detach()
    vel_size = [max(n // 2, 2) for n in size]
    velocity = torch.zeros((1, 3, *vel_size), requires_grad=True)
    opt = torch.optim.Adam([velocity], lr=lr)
    history: list[float] = []
    levels = len(shrink_factors)
    per_level = [iterations // levels + (1 if i < iterations % levels else 0) for i in range(levels)]
    for factor, n_iter in zip(shrink_factors, per_level):
        lsize = [max(n // factor, 4) for n in size]
        mov, fix = _resize_image(moving, lsize), _resize_image(fixed, lsize)
        f0 = None if forward is None else _resize_field(fwd0, lsize)
        i0 = None if inverse is None else _resize_field(inv0, lsize)
        for _ in range(n_iter):
            opt.zero_grad()
            phi, phi_inv = _maps(velocity, f0, i0, lsize)
            sim = -(local_ncc(warp_gridsample(mov, phi), fix, w.ncc_window) + local_ncc(
                warp_gridsample(fix, phi_inv), mov, w.ncc_window
            ))
            smooth = spatial_gradient(velocity).pow(2).sum(dim=(1, 2)).mean()
            fold = F.relu(-jacobian_determinant(torch.cat([phi, phi_inv]))).mean()
            loss = w.similarity * sim.mean() + w.smooth * smooth + w.jacobian * fold
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
            if progress:
                progress(len(history), history[-1])
    with torch.no_grad():
        phi, phi_inv = _maps(velocity, None if forward is None else fwd0, None if inverse is None else inv0, size)
    return RefineResult(forward=phi, inverse=phi_inv, history=history)


def _maps(velocity, fwd0: torch.Tensor | None, inv0: torch.Tensor | None, size):
    """phi_net o exp(v) and exp(-v) o phi_net^-1 on a grid of ``size`` (no network: exp(+-v)).

    exp(+-v) is integrated on the velocity's own (coarser) grid, then resized.
    """
    ex = _resize_field(exp_velocity(torch.cat([velocity, -velocity]), steps=6), size)
    phi = ex[:1] if fwd0 is None else compose(fwd0, ex[:1], sampler=warp_gridsample)
    phi_inv = ex[1:] if inv0 is None else compose(ex[1:], inv0, sampler=warp_gridsample)
    return phi, phi_inv
