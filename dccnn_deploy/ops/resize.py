"""x2 upsampling between pyramid scales.

Scale l+1 has exactly twice the voxels of scale l per axis (the model pads its input to a
multiple of 2**(L-1)); coarse voxel i covers fine voxels 2i and 2i+1, i.e. fine coordinate
2i + 0.5, which is trilinear interpolation with ``align_corners=False``. Displacements in voxel
units double.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dccnn_deploy.ops import native


def upsample_features(volume: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Trilinear upsampling of a ``(B, C, D, H, W)`` tensor by an integer ``factor`` (x2 on the
    CPU inference path: the compiled kernel, :func:`~dccnn_deploy.ops.native.upsample2x`)."""
    if factor == 1:
        return volume
    if factor == 2 and native.upsamples(volume):
        return native.upsample2x(volume)
    return F.interpolate(volume, scale_factor=float(factor), mode="trilinear", align_corners=False)


def upsample_field(displacement: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Upsampling of a voxel-unit displacement by ``factor`` (values scaled by ``factor``)."""
    if factor == 2 and native.upsamples(displacement):
        return native.upsample2x(displacement, 2.0)
    return upsample_features(displacement, factor) * float(factor)


def upsample_concat(coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``torch.cat([upsample_features(coarse), skip], dim=1)`` (the U-Net decoder's input); on the
    CPU inference path one channels-last tensor written in one pass."""
    if native.upsamples(coarse, skip):
        return native.upsample2x(coarse, skip=skip)
    return torch.cat([upsample_features(coarse), skip], dim=1)
