"""The full registration as a world-space map: affine pre-alignment composed with the dense fields.

A :class:`Registration` holds

* ``affine`` ``M`` (4x4): fixed world -> moving world (ITK convention), from pre-alignment;
* ``grid``: the model grid, placed in fixed world space;
* ``forward`` / ``inverse``: voxel displacements ``(1, 3, *grid.shape)`` on the model grid
  (``None``: affine only). ``forward`` maps the grid (fixed side) into the affinely moved grid,
  ``inverse`` the other way.

The forward map (fixed world -> moving world) is ``x -> M A_g (v + u_f(v))`` with
``v = A_g^-1 x``, the inverse map (moving world -> fixed world) is
``y -> A_g (w + u_i(w))`` with ``w = A_g^-1 M^-1 y``; ``A_g`` is the grid's affine. Fields are
sampled with border padding outside the model grid, so the maps stay continuous there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dccnn_deploy.ops.jacobian import jacobian_determinant
from dccnn_deploy.ops.warp import identity_grid, warp_gridsample
from dccnn_deploy.preprocess.grid import Grid, affine_displacement


def _apply(matrix: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """4x4 ``matrix`` applied to points ``(1, 3, ...)``."""
    m = torch.tensor(np.asarray(matrix), dtype=torch.float64)
    out = torch.einsum("ij,bj...->bi...", m[:3, :3], points.double())
    return (out + m[:3, 3].view(1, 3, *([1] * (points.dim() - 2)))).float()


@dataclass
class Registration:
    """Affine ``M`` + dense fields on ``grid``; see the module docstring."""

    affine: np.ndarray
    grid: Grid
    forward: torch.Tensor | None = None
    inverse: torch.Tensor | None = None

    def _through_grid(self, to_grid_voxels: np.ndarray, target: Grid, field: torch.Tensor | None) -> torch.Tensor:
        """Grid voxel coordinates ``v + u(v)`` ``(1, 3, *target.shape)`` of the target's voxels."""
        disp = affine_displacement(torch.as_tensor(to_grid_voxels, dtype=torch.float64), target.shape).float()
        coords = identity_grid(target.shape) + disp
        if field is not None:
            coords = coords + warp_gridsample(field, disp, padding="border")
        return coords

    def forward_points(self, target: Grid) -> torch.Tensor:
        """Moving-world positions ``(1, 3, *target.shape)`` of a fixed-world grid's voxels."""
        a_g = self.grid.affine
        v = self._through_grid(np.linalg.inv(a_g) @ target.affine, target, self.forward)
        return _apply(self.affine @ a_g, v)

    def inverse_points(self, target: Grid) -> torch.Tensor:
        """Fixed-world positions ``(1, 3, *target.shape)`` of a moving-world grid's voxels."""
        a_g = self.grid.affine
        w = self._through_grid(np.linalg.inv(a_g) @ np.linalg.inv(self.affine) @ target.affine, target, self.inverse)
        return _apply(a_g, w)


def world_displacement(points: torch.Tensor, target: Grid) -> np.ndarray:
    """RAS mm displacement ``(D, H, W, 3)`` of mapped ``points`` from the target voxels' positions."""
    base = _apply(target.affine, identity_grid(target.shape))
    return (points - base)[0].permute(1, 2, 3, 0).numpy()


def sample_at(data: np.ndarray, affine: np.ndarray, points: torch.Tensor, labels: bool = False) -> np.ndarray:
    """Sample a volume (world affine ``affine``) at world ``points`` ``(1, 3, *S)``: trilinear
    (zeros outside) or nearest for ``labels``. Returns an array of shape ``S``."""
    vox = _apply(np.linalg.inv(affine), points)
    disp = vox - identity_grid(tuple(points.shape[2:]))
    vol = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None, None]
    out = warp_gridsample(vol, disp, padding="zeros", mode="nearest" if labels else "bilinear")[0, 0].numpy()
    return np.rint(out).astype(data.dtype) if labels else out


def map_jacobian(points: torch.Tensor, target: Grid) -> np.ndarray:
    """det of the world Jacobian of a mapping given by ``points`` on ``target`` ``(D, H, W)``.

    ``A^-1 y(x) - x`` is a voxel-unit displacement whose Jacobian determinant equals the world
    one (similarity transform), so the package's one Jacobian serves.
    """
    vox = _apply(np.linalg.inv(target.affine), points) - identity_grid(target.shape)
    return jacobian_determinant(vox)[0, 0].numpy()
