"""The homotopy h(phi(x, t), t) of eqs. (6) and (8).

Eq. (6) gives det grad phi(x, t) = h(x, 0) / h(phi(x, t), t) with h(., 0) = 1, so
h(phi(x, t), t) = 1 / det grad phi(x, t); eq. (8) approximates it by Gaussian smoothing. Here
h = G_sigma * (1 / max(J, floor)): h = 1 for the identity (t = 0), h grows where the map
compresses so the Euler step ``dt * u / h`` brakes before folding.
"""

from __future__ import annotations

import torch

from dccnn_deploy.ops import native
from dccnn_deploy.ops.jacobian import jacobian_determinant
from dccnn_deploy.ops.smoothing import gaussian_smooth


def homotopy(displacement: torch.Tensor, sigma: float, floor: float) -> torch.Tensor:
    """h for a voxel-unit displacement ``(B, 3, ...)`` -> ``(B, 1, ...)``, always > 0 (CPU inference:
    the compiled determinant gives ``1 / max(J, floor)`` in one pass)."""
    if floor > 0 and native.serves_displacement(displacement):
        reciprocal = native.jacobian_determinant(displacement, floor)
    else:
        reciprocal = 1.0 / jacobian_determinant(displacement).clamp(min=floor)
    return gaussian_smooth(reciprocal, sigma)
