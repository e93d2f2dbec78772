"""Spatial operations shared by the model, losses, metrics, registration and export.

One implementation of each: the trilinear warp, field composition, the Jacobian, the
Gaussian smoothing of the homotopy h, and the x2 field upsampling.
"""

from dccnn_deploy.ops.warp import compose, identity_grid, warp, warp_gridsample
from dccnn_deploy.ops.jacobian import jacobian_determinant, spatial_gradient, divergence
from dccnn_deploy.ops.smoothing import gaussian_kernel1d, gaussian_smooth
from dccnn_deploy.ops.resize import upsample_field, upsample_features
from dccnn_deploy.ops.integrate import exp_velocity

__all__ = [
    "compose",
    "identity_grid",
    "warp",
    "warp_gridsample",
    "jacobian_determinant",
    "spatial_gradient",
    "divergence",
    "gaussian_kernel1d",
    "gaussian_smooth",
    "upsample_field",
    "upsample_features",
    "exp_velocity",
]
