"""Checks of the *written* warps as a user's tools read them (SimpleITK), for the benchmarks.

* :func:`inverse_consistency_mm`: ``fwd_warp`` then ``inv_warp`` composed by SimpleITK (the
  inverse field resampled through the forward displacement transform); the norm of
  ``d_fwd(x) + d_inv(x + d_fwd(x))`` in mm, mean (and 95th percentile) over a fixed-space mask.
* :func:`folding_percent_of`: % of voxels with ``det(I + du/dx) <= 0`` of a written warp, with
  the derivative taken in physical space (the field in voxel units of its own grid). ITK's ``DisplacementFieldJacobianDeterminant`` ignores the direction and reports
  false folds on RAS-stored grids, so it is not used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _read_field(path: Path):
    import SimpleITK as sitk

    return sitk.ReadImage(str(path), sitk.sitkVectorFloat64)


def inverse_consistency_mm(fwd_warp: Path, inv_warp: Path, fixed_mask: Path) -> dict[str, float]:
    """Mean and p95 (mm) of ``|fwd then inv - id|`` over ``fixed_mask > 0`` (on the fwd grid)."""
    import SimpleITK as sitk

    fwd, inv = _read_field(fwd_warp), _read_field(inv_warp)
    transform = sitk.DisplacementFieldTransform(sitk.Image(fwd))
    inv_at = sitk.Resample(inv, fwd, transform, sitk.sitkLinear, 0.0, inv.GetPixelID())
    error = np.linalg.norm(sitk.GetArrayFromImage(fwd) + sitk.GetArrayFromImage(inv_at), axis=-1)
    mask = sitk.Resample(sitk.ReadImage(str(fixed_mask)), fwd, sitk.Transform(), sitk.sitkNearestNeighbor)
    inside = error[sitk.GetArrayFromImage(mask) > 0]
    return {"mean": float(inside.mean()), "p95": float(np.percentile(inside, 95))}


def folding_percent_of(path: Path) -> float:
    """% voxels with J <= 0 of a written ITK displacement field (direction-aware: the world
    displacement is taken to voxel units through the image's affine, then the package's one
    Jacobian)."""
    from dccnn_deploy.io.itk_transforms import load_itk_displacement, world_to_voxel_displacement
    from dccnn_deploy.metrics import folding_percent

    disp, affine = load_itk_displacement(path)
    return folding_percent(world_to_voxel_displacement(disp, affine))
