"""Voxel grids in world space and resampling between them.

A :class:`Grid` is a voxel lattice ``shape`` with a 4x4 ``affine`` (voxel index -> RAS world mm,
as nibabel gives it). Resampling maps the target grid's voxels to world, optionally through a
4x4 world matrix ``M`` (target world point ``x`` -> source world point ``M @ x``, the ITK
"fixed -> moving" convention), then to source voxels, and samples there with
:func:`dccnn_deploy.ops.warp.warp_gridsample`. Everything between grids is affine, so the
voxel-to-voxel map is a single 4x4 matrix (:func:`voxel_transform`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dccnn_deploy.io.image import voxel_spacing
from dccnn_deploy.ops.warp import identity_grid, warp_gridsample

_CHUNK_VOXELS = 1 << 21  # output voxels sampled per grid_sample call (bounds the memory)


@dataclass(frozen=True)
class Grid:
    """A voxel lattice of ``shape`` (D, H, W) with ``affine`` (4x4, voxel -> world mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        affine = np.array(self.affine, dtype=np.float64).reshape(4, 4)
        affine.setflags(write=False)
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "affine", affine)
        if len(self.shape) != 3:
            raise ValueError(f"a Grid is 3-D, got shape {self.shape}")

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Grid)
            and self.shape == other.shape
            and np.array_equal(self.affine, other.affine)
        )

    def __hash__(self) -> int:
        return hash((self.shape, self.affine.tobytes()))

    @property
    def spacing(self) -> np.ndarray:
        """Voxel sizes in mm along the three array axes, ``(3,)``."""
        return voxel_spacing(self.affine)

    def corners_world(self) -> np.ndarray:
        """World positions of the 8 corner voxel centres, ``(8, 3)``."""
        hi = np.asarray(self.shape, dtype=np.float64) - 1.0
        corners = np.array([[(c >> k & 1) * hi[k] for k in range(3)] for c in range(8)])
        return apply_affine(self.affine, corners)

    def centre_world(self) -> np.ndarray:
        """World position of the grid centre, ``(3,)``."""
        return apply_affine(self.affine, (np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 ``matrix`` to points ``(..., 3)``."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def foreground_corners(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World corners ``(8, 3)`` of the voxel bounding box of ``mask`` (all of it if empty)."""
    bounds = []
    for k in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != k)))
        bounds.append((present[0], present[-1]) if present.size else (0, mask.shape[k] - 1))
    corners = np.array([[bounds[k][c >> k & 1] for k in range(3)] for c in range(8)], dtype=np.float64)
    return apply_affine(affine, corners)


def model_grid(
    shape: tuple[int, int, int], spacing_mm: float | tuple[float, float, float], centre_world
) -> Grid:
    """An axis-aligned RAS grid (voxel axes = R, A, S) of ``shape`` centred at ``centre_world``."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
    affine = np.diag([*spacing, 1.0])
    half = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = np.asarray(centre_world, dtype=np.float64) - spacing * half
    return Grid(tuple(shape), affine)


def bounding_grid(points_world: np.ndarray, spacing_mm: float, margin_mm: float = 0.0) -> Grid:
    """The smallest RAS grid of ``spacing_mm`` covering ``points_world`` ``(N, 3)`` plus a margin."""
    points = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    lo, hi = points.min(axis=0) - margin_mm, points.max(axis=0) + margin_mm
    shape = tuple(int(np.ceil((h - l) / spacing_mm)) + 1 for l, h in zip(lo, hi))
    return model_grid(shape, spacing_mm, (lo + hi) / 2.0)


def voxel_transform(affine_src: np.ndarray, grid: Grid, world_transform: np.ndarray | None = None) -> np.ndarray:
    """The 4x4 map from ``grid`` voxels to source voxels: ``inv(A_src) @ M @ A_grid``."""
    world = np.eye(4) if world_transform is None else np.asarray(world_transform, dtype=np.float64)
    return np.linalg.inv(np.asarray(affine_src, dtype=np.float64)) @ world @ grid.affine


def affine_displacement(
    matrix: torch.Tensor, shape: tuple[int, int, int], start: int = 0
) -> torch.Tensor:
    """Voxel displacement ``(1, 3, d, H, W)`` of a voxel map ``matrix`` (4x4 torch) on a slab.

    The slab holds rows ``start .. start + shape[0] - 1`` of the output grid's first axis, so the
    result feeds :func:`warp_gridsample` directly: ``p_local + u = matrix @ p_global``.
    Differentiable in ``matrix``.
    """
    axes = [torch.arange(n, device=matrix.device, dtype=matrix.dtype) for n in shape]
    axes[0] = axes[0] + float(start)
    views = [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]
    channels = []
    for k in range(3):  # u_k = sum_j (V_kj - delta_kj) p_j + V_k3, as broadcast sums over the axes
        u = matrix[k, 3] + (float(start) if k == 0 else 0.0)  # p_global - p_local = start
        for j in range(3):
            u = u + ((matrix[k, j] - (1.0 if j == k else 0.0)) * axes[j]).view(views[j])
        channels.append(u.expand(*shape))
    return torch.stack(channels).unsqueeze(0)


def displacement_between(
    grid_from: Grid, grid_to: Grid, world_transform: np.ndarray | None = None
) -> torch.Tensor:
    """Voxel displacement ``(1, 3, *grid_from.shape)`` on ``grid_from`` into ``grid_to``'s voxels.

    ``warp_gridsample(volume_on_grid_to, u)`` equals ``resample_to_grid`` of that volume onto
    ``grid_from`` (with the same ``world_transform``); also the affine part to compose with a
    dense field. Float32.
    """
    vox = torch.as_tensor(voxel_transform(grid_to.affine, grid_from, world_transform))
    return affine_displacement(vox, grid_from.shape).float()


def sample_affine(
    volume: torch.Tensor, matrix: torch.Tensor, shape: tuple[int, int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """Sample ``volume`` ``(1, C, *S_in)`` at ``matrix @ p`` for the voxels ``p`` of ``shape``.

    Returns ``(1, C, *shape)``, zeros outside. Differentiable in ``matrix`` (one call when
    ``matrix`` requires grad; otherwise slab by slab to bound memory).
    """
    if matrix.requires_grad:
        return warp_gridsample(volume, affine_displacement(matrix, shape), padding="zeros", mode=mode)
    rows = max(1, _CHUNK_VOXELS // max(1, shape[1] * shape[2]))
    slabs = [
        warp_gridsample(
            volume,
            affine_displacement(matrix, (min(rows, shape[0] - s), shape[1], shape[2]), start=s),
            padding="zeros",
            mode=mode,
        )
        for s in range(0, shape[0], rows)
    ]
    return torch.cat(slabs, dim=2)


def sample_points(volume: torch.Tensor, points: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``volume`` ``(1, C, *S)`` at voxel coordinates ``points`` ``(N, 3)``: ``(1, C, N)``.

    Zeros outside; differentiable in ``points``. The points are laid out as a ``(1, 1, N)`` grid
    for :func:`warp_gridsample`.
    """
    n = points.shape[0]
    identity = identity_grid((1, 1, n), device=points.device, dtype=points.dtype)
    displacement = points.T.reshape(1, 3, 1, 1, n) - identity
    return warp_gridsample(volume, displacement, padding="zeros", mode=mode)[:, :, 0, 0]


def resample_to_grid(
    data: np.ndarray,
    affine_src: np.ndarray,
    grid: Grid,
    world_transform: np.ndarray | None = None,
    order: int = 1,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Sample ``data`` (D, H, W) with ``affine_src`` at the world positions of ``grid``'s voxels.

    ``world_transform`` (4x4) maps a grid world point ``x`` to the source world point ``M @ x``
    (identity if None). ``order=1`` trilinear (float32 out), ``order=0`` nearest (label maps;
    the source dtype is kept; sampled through float32, so labels must stay below 2**24).
    Zeros outside the source. Returns ``grid.shape``. Output slabs of ~2M voxels bound the memory.
    """
    if order not in (0, 1):
        raise ValueError(f"order must be 0 or 1, got {order}")
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {data.shape}")
    volume = torch.from_numpy(np.require(data, np.float32, ["C", "W"])).to(device)[None, None]
    vox = voxel_transform(affine_src, grid, world_transform)
    # float64 matrix -> exact-enough coordinates; warp_gridsample samples in float32
    matrix = torch.as_tensor(vox, dtype=torch.float64, device=device)
    out = sample_affine(volume, matrix, grid.shape, mode="nearest" if order == 0 else "bilinear")
    out = out[0, 0].cpu().numpy()
    if order == 0:
        return np.rint(out).astype(data.dtype) if np.issubdtype(data.dtype, np.integer) else out.astype(data.dtype)
    return out.astype(np.float32)


def _within_box(voxels, shape) -> np.ndarray:
    """Whether voxel coordinates (one array per axis, broadcastable) lie in the box of ``shape``'s
    voxels, half a voxel beyond the outer centres: an image's field of view."""
    inside = True
    for coordinate, size in zip(voxels, shape[:3]):
        inside = inside & (coordinate >= -0.5) & (coordinate <= size - 0.5)
    return np.asarray(inside)


def in_field_of_view(points_world: np.ndarray, shape, affine: np.ndarray, world_transform: np.ndarray | None = None
                     ) -> np.ndarray:
    """Which world points ``(..., 3)`` an image of ``shape`` (voxel -> world ``affine``) covers (its
    field of view: the voxels' box, half a voxel beyond the outer centres); ``world_transform`` (4x4)
    maps the points into the image's world first. Bool ``(...)``."""
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    if world_transform is not None:
        to_voxel = to_voxel @ np.asarray(world_transform, dtype=np.float64)
    voxels = apply_affine(to_voxel, points_world)
    return _within_box(np.moveaxis(voxels, -1, 0), shape)


def grid_in_field_of_view(grid: Grid, shape, affine: np.ndarray, world_transform: np.ndarray | None = None) -> np.ndarray:
    """:func:`in_field_of_view` of every voxel of ``grid``: bool ``grid.shape``. The grid -> image
    voxel map is affine, so each image coordinate is a sum of one line per grid axis (float32
    broadcasts: ~5 ms for the 2 mm model grid, not a ``(N, 3)`` array of world points)."""
    matrix = voxel_transform(affine, grid, world_transform).astype(np.float32)
    lines = [np.arange(n, dtype=np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
             for axis, n in enumerate(grid.shape)]
    voxels = [matrix[row, 0] * lines[0] + matrix[row, 1] * lines[1] + matrix[row, 2] * lines[2] + matrix[row, 3]
              for row in range(3)]
    return _within_box(voxels, shape)  # each coordinate spans all three axes: grid.shape


#: room (mm) kept beyond the fixed foreground's box on each side when the model grid is fitted to
#: it (:func:`fitted_model_grid`): for the moving image's deformation and the network's context
FIT_MARGIN_MM = 16.0


def fitted_model_grid(
    shape: tuple[int, int, int], spacing_mm: float, centre_world, box_corners: np.ndarray, divisor: int
) -> Grid:
    """The RAS model grid of at most ``shape``, shortened along each axis where the fixed image's
    foreground box (``box_corners``, world ``(8, 3)``) plus :data:`FIT_MARGIN_MM` each side
    needs fewer voxels, to a multiple of ``divisor`` (the network's padding multiple), and then
    centred on the box along that axis; the other axes keep ``shape`` and ``centre_world``. A
    skull-stripped brain needs ~96 of the default grid's 112 voxels along S: the network, which is
    fully convolutional, then does ~14 % less work and sees only background less."""
    lo, hi = np.min(box_corners, axis=0), np.max(box_corners, axis=0)
    full = np.asarray(shape, dtype=np.int64)
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
    need = (hi - lo + 2 * FIT_MARGIN_MM) / spacing + 1.0
    fitted = np.minimum(full, np.ceil(need / divisor).astype(np.int64) * divisor)
    centre = np.where(fitted < full, (lo + hi) / 2.0, np.asarray(centre_world, dtype=np.float64))
    return model_grid(tuple(int(n) for n in fitted), spacing_mm, centre)
