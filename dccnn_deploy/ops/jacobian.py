"""Finite-difference derivatives of displacement fields: gradient, Jacobian determinant, divergence.

Central differences inside, one-sided differences on the first and last voxel of each axis, so
the derivative of an affine field is exact everywhere. Written with slices and concatenation
only, so it exports to ONNX (the homotopy h in the network uses it).
"""

from __future__ import annotations

import torch

from dccnn_deploy.ops import native


def axis_derivative(field: torch.Tensor, axis: int) -> torch.Tensor:
    """Derivative of ``field`` along spatial ``axis`` (0, 1, 2 -> tensor dims 2, 3, 4)."""
    dim = axis + 2
    n = field.shape[dim]
    if n < 2:
        return torch.zeros_like(field)
    first = field.narrow(dim, 1, 1) - field.narrow(dim, 0, 1)
    last = field.narrow(dim, n - 1, 1) - field.narrow(dim, n - 2, 1)
    if n == 2:
        return torch.cat([first, last], dim=dim)
    inner = (field.narrow(dim, 2, n - 2) - field.narrow(dim, 0, n - 2)) * 0.5
    return torch.cat([first, inner, last], dim=dim)


def spatial_gradient(field: torch.Tensor) -> torch.Tensor:
    """``(B, C, D, H, W)`` -> ``(B, C, 3, D, H, W)``: d field_c / d axis_k (per voxel)."""
    return torch.stack([axis_derivative(field, k) for k in range(3)], dim=2)


def jacobian_determinant(displacement: torch.Tensor) -> torch.Tensor:
    """det(I + grad u) of a voxel-unit displacement ``(B, 3, D, H, W)`` -> ``(B, 1, D, H, W)``.

    The determinant is invariant to voxel spacing (diag(s) J diag(s)^-1 has the same det), so
    voxel units give the physical Jacobian determinant for any spacing. On the CPU without
    gradients the compiled kernel computes the same differences for a float32 field (:mod:`~dccnn_deploy.ops.native`).
    """
    if native.serves_displacement(displacement):
        return native.jacobian_determinant(displacement)
    g = [axis_derivative(displacement, k) for k in range(3)]  # d u / d axis_k (no stacked copy: h runs every step)
    a = [[g[c][:, r] + (1.0 if r == c else 0.0) for c in range(3)] for r in range(3)]
    det = (
        a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
    )
    return det.unsqueeze(1)


def divergence(field: torch.Tensor) -> torch.Tensor:
    """div u = sum_k d u_k / d axis_k, ``(B, 3, D, H, W)`` -> ``(B, 1, D, H, W)``."""
    return sum(axis_derivative(field[:, k : k + 1], k) for k in range(3))
