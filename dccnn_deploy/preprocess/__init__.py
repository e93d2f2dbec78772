"""Preprocessing of user images before the deformable model: world grids and resampling,
intensity normalisation, and affine pre-alignment in world coordinates."""

from dccnn_deploy.preprocess.affine import AffineResult, register_affine
from dccnn_deploy.preprocess.grid import (
    Grid,
    bounding_grid,
    displacement_between,
    model_grid,
    resample_to_grid,
    voxel_transform,
)
from dccnn_deploy.preprocess.intensity import foreground_mask, normalise_intensity

__all__ = [
    "AffineResult",
    "register_affine",
    "Grid",
    "bounding_grid",
    "displacement_between",
    "model_grid",
    "resample_to_grid",
    "voxel_transform",
    "foreground_mask",
    "normalise_intensity",
]
