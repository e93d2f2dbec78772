"""The full registration as a world-space map: affine pre-alignment composed with the dense fields.

A :class:`Registration` holds

* ``affine`` ``M`` (4x4): fixed world -> moving world (ITK convention), from pre-alignment;
* ``grid``: the model grid, placed in fixed world space;
* ``forward`` / ``inverse``: voxel displacements ``(1, 3, *grid.shape)`` on the model grid
  (``None``: affine only). ``forward`` maps the grid (fixed side) into the affinely moved grid,
  ``inverse`` the other way;
* ``exact_inverse``: the inverse map is refined at every point it is evaluated on to the
  preimage under the forward map (one quasi-Newton step from the interpolated ``inverse``), so the
  written inverse warp inverts the written forward warp between model-grid nodes too.

The forward map (fixed world -> moving world) is ``x -> M A_g (v + u_f(v))`` with
``v = A_g^-1 x``, the inverse map (moving world -> fixed world) is
``y -> A_g (w + u_i(w))`` with ``w = A_g^-1 M^-1 y``; ``A_g`` is the grid's affine. Fields are
sampled with border padding outside the model grid, so the maps stay continuous there.

Speed (the 1 mm outputs of ``dccnn register``): every affine part is folded into one 4x4
matrix and built from per-axis float64 terms broadcast into float32 volumes (no full-size
float64 pass); each dense map costs one ``grid_sample`` (threaded) and one 3x3 product.
Full-size maps are computed in *file order* (array axis 0 fastest in memory, as NIfTI stores
it): :func:`Registration.forward_points` returns a ``(1, 3, D, H, W)`` tensor that is a
transposed view, and :func:`sample_at`, :func:`world_displacement` and :func:`map_jacobian`
return Fortran-ordered arrays, so writing them is a plain copy. Any tensor layout is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dccnn_deploy.ops import native
from dccnn_deploy.ops.invert import REPAIR_ROUNDS, repair_folds
from dccnn_deploy.ops.jacobian import axis_derivative, jacobian_determinant
from dccnn_deploy.ops.warp import vector_length, volume_sampler
from dccnn_deploy.preprocess.grid import Grid

#: largest correction of an interpolated inverse point (model voxels): a real one is ~0.1; where a
#: forward cell is compressed so much that its trilinear interpolant folds, uncapped steps
#: (up to 1 voxel) folded 0.015 % of the Colin27 head -> ICBM brain inverse warp, capped none
PREIMAGE_MAX_STEP = 0.25
SLAB = 8  # file-order planes per step: cache-sized temporaries (about 3x less CPU than whole volumes)


def _file_order(points: torch.Tensor) -> torch.Tensor:
    """``(1, 3, D, H, W)`` -> contiguous ``(3, W, H, D)`` (a view when already in file order)."""
    return points[0].permute(0, 3, 2, 1).contiguous()


def _from_file_order(t: torch.Tensor) -> torch.Tensor:
    """``(C, W, H, D)`` -> ``(1, C, D, H, W)`` view."""
    return t.permute(0, 3, 2, 1).unsqueeze(0)


def _slabs(n: int, size: int = SLAB):
    """``(start, stop)`` of consecutive runs of ``size`` planes covering ``range(n)``."""
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _with_halo(start: int, stop: int, n: int) -> tuple[int, int]:
    """Planes ``start .. stop-1`` widened by one plane each side within ``range(n)``: the central
    differences of a slab then equal those of the whole volume."""
    return max(start - 1, 0), min(stop + 1, n)


def _affine_volume(
    matrix: np.ndarray, shape: tuple[int, int, int], channels_last: bool = False, planes: tuple[int, int] | None = None
) -> torch.Tensor:
    """``matrix[:3] @ (i, j, k, 1)`` for the voxels of ``shape``, in file order: ``(3, W, H, D)``,
    or ``(W, H, D, 3)`` with ``channels_last`` (a ``grid_sample`` grid); ``planes=(a, b)``:
    only ``k`` in ``a .. b-1`` (a slab of the file-order volume).

    Built from float64 per-axis terms (``m_k3 + m_k0 i``, ``m_k1 j``, ``m_k2 k``) rounded to
    float32 and broadcast-added: about 1e-5 of a unit from the float64 result at 256 voxels.
    """
    m = np.asarray(matrix, dtype=np.float64)
    axes = [np.arange(n, dtype=np.float64) for n in shape]
    if planes is not None:
        axes[2] = axes[2][planes[0] : planes[1]]
    size_t = (len(axes[2]), shape[1], shape[0])
    out = torch.empty((*size_t, 3) if channels_last else (3, *size_t), dtype=torch.float32)
    views = [(1, 1, -1), (1, -1, 1), (-1, 1, 1)]  # i runs along the last (W) dim in file order
    for k in range(3):
        terms = [m[k, j] * axes[j] + (m[k, 3] if j == 0 else 0.0) for j in range(3)]
        t = [torch.from_numpy(v.astype(np.float32)).view(views[j]) for j, v in enumerate(terms)]
        torch.add(t[0] + t[1], t[2], out=out[..., k] if channels_last else out[k])
    return out


def _normaliser(shape) -> np.ndarray:
    """4x4 voxel index -> grid_sample coordinate in [-1, 1] (``align_corners=True``)."""
    scale = [2.0 / max(int(n) - 1, 1) for n in shape]
    norm = np.diag([*scale, 1.0])
    norm[:3, 3] = -1.0
    return norm


def _channels_last(matrix: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """``matrix[:3] @ p`` for points ``(3, N)`` as ``(N, 3)`` rows (one threaded GEMM)."""
    m = torch.from_numpy(np.asarray(matrix, dtype=np.float64)[:3]).float()
    return torch.addmm(m[:, 3], points.t(), m[:, :3].t())


def _sample_file_order(sampler, grid: torch.Tensor, shape_t):
    """A file-order source's :func:`~dccnn_deploy.ops.warp.volume_sampler` (``(1, C, Z, Y, X)``)
    at ``grid`` (``(N, 3)`` rows or ``(*shape_t, 3)``, normalised ``(i, j, k)``) -> file-order
    output ``(C, *shape_t)``."""
    return sampler(grid.reshape(1, *shape_t, 3))[0]


def _field_file_order(field: torch.Tensor) -> torch.Tensor:
    """A model-grid field ``(1, 3, D, H, W)`` as a file-order ``grid_sample`` source ``(1, 3, W, H, D)``."""
    return field.float().permute(0, 1, 4, 3, 2).contiguous()


@dataclass
class Registration:
    """Affine ``M`` + dense fields on ``grid``; see the module docstring."""

    affine: np.ndarray
    grid: Grid
    forward: torch.Tensor | None = None
    inverse: torch.Tensor | None = None
    exact_inverse: bool = False

    def _map(self, to_grid_voxels: np.ndarray, out_matrix: np.ndarray, target: Grid, field,
             preimage_of: torch.Tensor | None = None) -> torch.Tensor:
        """``out_matrix @ (v + u(v))`` with ``v = to_grid_voxels @ p`` for the target voxels ``p``;
        with ``preimage_of`` (a field ``f``), ``v + u(v)`` is refined to the point that ``id + f``
        maps onto ``v`` (:func:`_preimage`)."""
        points = _affine_volume(out_matrix @ to_grid_voxels, target.shape)
        if field is None:
            return _from_file_order(points)
        source = volume_sampler(_field_file_order(field), "border")
        to_norm = _normaliser(self.grid.shape) @ to_grid_voxels
        linear = torch.tensor(np.asarray(out_matrix)[:3, :3], dtype=torch.float32)
        slabs = _slabs(points.shape[1])
        grids = lambda a, b: _affine_volume(to_norm, target.shape, channels_last=True, planes=(a, b))  # noqa: E731
        sampled = torch.empty_like(points) if preimage_of is not None else None
        for a, b in slabs:
            grid = grids(a, b)
            u = _sample_file_order(source, grid, grid.shape[:3])
            if sampled is not None:  # the preimage step needs u's neighbours in the next slab too
                sampled[:, a:b] = u
                continue
            part = points[:, a:b]
            part.copy_(torch.addmm(part.reshape(3, -1), linear, u.view(3, -1)).view(part.shape))
        if sampled is not None:
            per_grid_voxel = np.linalg.inv(np.asarray(to_grid_voxels, dtype=np.float64)[:3, :3])
            if native.serves(preimage_of):  # the compiled step: one pass, no sampling grid
                compiled = native.NativeSource(preimage_of, "border")
                step = lambda a, b: native.preimage_step(  # noqa: E731
                    sampled, (a, b), to_norm, compiled, per_grid_voxel, PREIMAGE_MAX_STEP)
            else:
                forward = volume_sampler(_field_file_order(preimage_of), "border")
                step = lambda a, b: _preimage(  # noqa: E731
                    forward, grids(a, b), sampled, (a, b), per_grid_voxel, self.grid.shape)
            for a, b in slabs:
                u = step(a, b)
                part = points[:, a:b]
                part.copy_(torch.addmm(part.reshape(3, -1), linear, u.reshape(3, -1)).view(part.shape))
        return _from_file_order(points)

    def forward_points(self, target: Grid) -> torch.Tensor:
        """Moving-world positions ``(1, 3, *target.shape)`` of a fixed-world grid's voxels."""
        a_g = self.grid.affine
        return self._map(np.linalg.inv(a_g) @ target.affine, self.affine @ a_g, target, self.forward)

    def inverse_points(self, target: Grid) -> torch.Tensor:
        """Fixed-world positions ``(1, 3, *target.shape)`` of a moving-world grid's voxels."""
        a_g = self.grid.affine
        to_grid = np.linalg.inv(a_g) @ np.linalg.inv(self.affine) @ target.affine
        exact = self.exact_inverse and self.forward is not None and self.inverse is not None
        return self._map(to_grid, a_g, target, self.inverse, self.forward if exact else None)


def _preimage(forward, grid: torch.Tensor, sampled: torch.Tensor, planes: tuple[int, int],
              per_grid_voxel: np.ndarray, grid_shape) -> torch.Tensor:
    """Quasi-Newton-refined inverse displacement at the target voxels of one slab (file-order planes
    ``planes``) inside the model grid.

    ``grid``: the slab's points ``w`` (normalised, channels last, file order); ``sampled``: the
    interpolated inverse field ``u`` at every target voxel (model voxels, ``(3, *file order)``);
    ``forward``: a sampler of the forward field ``f`` (file order); ``per_grid_voxel``: target
    voxels per model-grid voxel (3x3). Returns ``d`` with ``d + f(w + d) ~ 0``: the written inverse
    is then the inverse of the forward map at every voxel it is written on, not only at the
    model-grid nodes (trilinear interpolation of the node inverse alone leaves ~0.3 mm at 1 mm
    where the forward map is far from affine). The step ``d <- d - (I + grad u) r`` with the residual
    ``r = d + f(w + d)`` takes the inverse of the forward Jacobian at ``w + d`` as the Jacobian of
    the inverse map at ``w`` (equal at the solution), from central differences of ``u`` between
    the target voxels: one 3-channel read a point instead of the forward field's 12 channels and
    gradient (same residual, ~0.014 mm mean on Colin27 -> ICBM 2009c; docs/benchmarks.md).
    Points outside the model grid keep ``u`` (the fields are constant-extended there).
    """
    a, b = planes
    lo, hi = _with_halo(a, b, sampled.shape[1])
    halo = sampled[None, :, lo:hi]
    d = sampled[:, a:b]
    # d u / d (target voxel i, j, k): file-order axes are (k, j, i)
    along = [axis_derivative(halo, axis)[0, :, a - lo : b - lo] for axis in (2, 1, 0)]
    scale = torch.tensor([(m - 1) / 2.0 for m in grid_shape], dtype=torch.float32).view(3, 1, 1, 1)
    step = d + _sample_file_order(forward, grid + (d / scale).permute(1, 2, 3, 0), grid.shape[:3])  # r
    residual = step.clone()
    for c in range(3):  # + (d u / d w_c) r_c, d u / d w_c = sum_m d u / d p_m * d p_m / d w_c
        du_dw = sum(along[m] * float(per_grid_voxel[m, c]) for m in range(3))
        step.addcmul_(du_dw, residual[c : c + 1])
    step.mul_(torch.clamp(PREIMAGE_MAX_STEP / (vector_length(step[None])[0] + 1e-12), max=1.0))
    outside = (grid.abs() > 1.0).any(dim=-1)
    return d - step.masked_fill_(outside, 0.0)


def apply_matrix(matrix: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """4x4 ``matrix`` applied to world points ``(1, 3, ...)`` (any memory layout), float32."""
    m = torch.tensor(np.asarray(matrix, dtype=np.float64), dtype=torch.float32)  # a copy: matrices may be read-only
    out = torch.einsum("ij,bj...->bi...", m[:3, :3], points.float())
    return out + m[:3, 3].view(1, 3, *([1] * (points.dim() - 2)))


def world_displacement(points: torch.Tensor, target: Grid, lps: bool = False) -> np.ndarray:
    """RAS mm displacement ``(D, H, W, 3)`` of mapped ``points`` from the target voxels' positions;
    ``lps``: in LPS (x and y negated, ITK's convention) in the same pass.

    Float32, Fortran-ordered (the NIfTI layout of an ITK field). Computed :data:`SLAB` planes at a
    time (cache-sized temporaries)."""
    pts = _file_order(points).float()
    disp = torch.empty(pts.shape, dtype=torch.float32)
    for a, b in _slabs(pts.shape[1]):
        at = _affine_volume(target.affine, target.shape, planes=(a, b))
        for c in range(3):
            first, second = (at[c], pts[c, a:b]) if lps and c < 2 else (pts[c, a:b], at[c])
            torch.sub(first, second, out=disp[c, a:b])
    return disp.permute(3, 2, 1, 0).numpy()


def sample_at(data: np.ndarray, affine: np.ndarray, points: torch.Tensor, labels: bool = False) -> np.ndarray:
    """Sample a volume (world affine ``affine``) at world ``points`` ``(1, 3, *S)``: trilinear
    (zeros outside) or nearest for ``labels``. Returns an array of shape ``S`` (Fortran order)."""
    data = np.asarray(data)
    source = volume_sampler(torch.from_numpy(np.ascontiguousarray(data.T, dtype=np.float32))[None, None],
                            "zeros", "nearest" if labels else "bilinear")
    pts = _file_order(points).float()
    to_norm = _normaliser(data.shape) @ np.linalg.inv(affine)
    out = torch.empty(pts.shape[1:], dtype=torch.float32)
    for a, b in _slabs(pts.shape[1]):
        grid = _channels_last(to_norm, pts[:, a:b].reshape(3, -1))
        out[a:b] = _sample_file_order(source, grid, out[a:b].shape)[0]
    out = out.numpy().T
    return np.rint(out).astype(data.dtype) if labels else out


def map_jacobian(points: torch.Tensor, target: Grid, slab: int = 8) -> np.ndarray:
    """det of the world Jacobian of a mapping given by ``points`` on ``target`` ``(D, H, W)``.

    ``A^-1 y(x) - x`` is a voxel-unit displacement whose Jacobian determinant equals the world
    one (similarity transform), so the package's one Jacobian serves. It is taken in file order
    (axes and components reversed: the same determinant), ``slab`` planes at a time with one
    plane of overlap each side (the same central differences, cache-sized temporaries). With the
    compiled kernel, one pass instead: the determinant of the world points' central differences
    along the file-order axes, divided by ``-det(A)`` (the same determinant).
    Float32, Fortran-ordered.
    """
    pts = _file_order(points).float()
    if native.serves_displacement(pts[None]):  # one compiled pass: det of the world points' differences
        # d y / d (file-order index) is d y / d x_world A_lin with A_lin's columns reversed (odd)
        scale = -1.0 / float(np.linalg.det(np.asarray(target.affine, dtype=np.float64)[:3, :3]))
        return (native.jacobian_determinant(pts[None], identity=False)[0, 0] * scale).numpy().T
    reverse = np.eye(4)[[2, 1, 0, 3]]
    m = torch.from_numpy((reverse @ np.linalg.inv(target.affine))[:3]).float()
    n = pts.shape[1]
    out = torch.empty(pts.shape[1:], dtype=torch.float32)
    for start, stop in _slabs(n, slab):
        lo, hi = _with_halo(start, stop, n)
        part = pts[:, lo:hi]
        vox = torch.addmm(m[:, 3:4], m[:, :3], part.reshape(3, -1)).view(part.shape)
        identity = reverse.copy()
        identity[0, 3] = lo  # the slab's first plane is plane ``lo`` of the volume
        vox -= _affine_volume(identity, target.shape[:2] + (hi - lo,))
        det = jacobian_determinant(vox[None])[0, 0]
        out[start:stop] = det[start - lo : stop - lo]
    return out.numpy().T


def unfold_map(points: torch.Tensor, target: Grid, rounds: int = REPAIR_ROUNDS) -> tuple[torch.Tensor, int, int]:
    """``points`` (world positions of ``target``'s voxels, ``(1, 3, *target.shape)``, a map that
    keeps orientation) with the voxels where the determinant of its Jacobian is <= 0 smoothed
    away, as :func:`~dccnn_deploy.ops.invert.repair_folds` smooths a model-grid field; the number
    of such voxels before and after. Trilinear interpolation between model-grid nodes can fold
    the written 1 mm map where the nodes do not (3 of 6.4 M voxels on a held-out donor pair, next
    to nodes of det 0.25-0.43): :func:`map_jacobian` over the whole map finds them, and only a box
    around them, wide enough that the repair's reach stays inside it, is changed (in place)."""
    det = map_jacobian(points, target)
    folded = np.argwhere(det <= 0)
    if len(folded) == 0:
        return points, 0, 0
    reach = 3 * rounds + 2  # a round changes voxels within 2 of a fold, reading 1 more: 3 a round
    lo = np.maximum(folded.min(axis=0) - reach, 0)
    hi = np.minimum(folded.max(axis=0) + reach + 1, np.asarray(target.shape))
    box = (slice(None), slice(None), *(slice(int(a), int(b)) for a, b in zip(lo, hi)))
    to_voxels = np.linalg.inv(np.asarray(target.affine, dtype=np.float64))
    corner = np.eye(4)
    corner[:3, 3] = lo  # the box's voxel (0, 0, 0) is voxel ``lo`` of the target
    box_grid = Grid(tuple(int(n) for n in hi - lo), np.asarray(target.affine, dtype=np.float64) @ corner)
    identity = _from_file_order(_affine_volume(np.eye(4), box_grid.shape))
    voxels = apply_matrix(np.linalg.inv(corner) @ to_voxels, points[box])  # box voxel coordinates
    repaired = repair_folds(voxels - identity, rounds) + identity
    points[box] = apply_matrix(box_grid.affine, repaired)
    remaining = int((map_jacobian(points[box].contiguous(), box_grid) <= 0).sum())
    return points, len(folded), remaining
