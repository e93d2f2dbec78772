"""The trilinear warp: sample a volume at displaced voxel coordinates.

Conventions (used everywhere in the package):

* volumes are ``(B, C, D, H, W)``; displacement fields are ``(B, 3, D, H, W)`` in **voxel
  units** of the grid they live on, channel ``k`` displacing array axis ``k`` (D, H, W);
* ``warp(x, u)(p) = x(p + u(p))`` (pull-back): ``warp(moving, forward)`` lies on the fixed grid;
* voxel ``i`` sits at coordinate ``i`` (``align_corners=True`` in grid_sample terms).

:func:`warp` is written with gathers over the eight corner voxels only (Floor, Clip, Gather,
Mul, Add), so it exports to ONNX without GridSample and TensorRT's parser accepts it.
:func:`warp_gridsample` is the faster training path; tests tie the two together.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Padding = Literal["zeros", "border"]


def identity_grid(shape: tuple[int, int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates of a ``shape`` grid, ``(1, 3, D, H, W)``."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def _axis_corners(
    coord: torch.Tensor, size: int, stride: int, padding: Padding
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The two sample corners of one axis: ``((offset, weight) lower, (offset, weight) upper)``.

    ``offset`` = clamped index x ``stride`` (int64), ``weight`` = the linear weight, zeroed
    where ``padding="zeros"`` and the corner lies outside the volume.
    """
    if padding == "border":
        coord = coord.clamp(0.0, float(size - 1))
    base = torch.floor(coord)
    frac = coord - base
    lower = base.to(torch.int64)
    upper = lower + 1
    weights = [1.0 - frac, frac]
    if padding == "zeros":
        weights = [w * ((i >= 0) & (i <= size - 1)).to(w.dtype) for w, i in zip(weights, (lower, upper))]
    return tuple((i.clamp(0, size - 1) * stride, w) for i, w in zip((lower, upper), weights))


def warp(volume: torch.Tensor, displacement: torch.Tensor, padding: Padding = "zeros") -> torch.Tensor:
    """Trilinear sample of ``volume`` at ``identity + displacement`` using gathers.

    ``volume``: ``(B, C, *S_in)``; ``displacement``: ``(B, 3, *S_out)`` in voxels of ``S_in``.
    Returns ``(B, C, *S_out)``. ``padding="zeros"`` treats samples outside the volume as 0
    (per corner, exactly as grid_sample), ``"border"`` clamps coordinates to the volume.
    Coordinates are computed in float32 whatever the volume's dtype. Index and weight terms
    are built once per axis and combined per corner (few element-wise ops in an ONNX graph).
    """
    b, c = volume.shape[:2]
    size_in = volume.shape[2:]
    size_out = displacement.shape[2:]
    coords = identity_grid(tuple(size_out), device=displacement.device) + displacement.float()
    strides = (size_in[1] * size_in[2], size_in[2], 1)
    axes = [_axis_corners(coords[:, k], size_in[k], strides[k], padding) for k in range(3)]

    n_in = size_in[0] * size_in[1] * size_in[2]
    # (B*N, C) rows: one Gather of whole voxels per corner with 1-D indices (no expand over C)
    flat = volume.reshape(b, c, n_in).transpose(1, 2).reshape(b * n_in, c)
    batch_offset = (torch.arange(b, device=volume.device, dtype=torch.int64) * n_in).view(b, 1, 1, 1)
    first = [(i + batch_offset, w) for i, w in axes[0]]
    pairs = [(i0 + i1, w0 * w1) for i0, w0 in first for i1, w1 in axes[1]]

    out = None
    for i01, w01 in pairs:
        for i2, w2 in axes[2]:
            term = flat.index_select(0, (i01 + i2).reshape(-1)) * (w01 * w2).reshape(-1, 1).to(flat.dtype)
            out = term if out is None else out + term
    return out.reshape(b, *size_out, c).permute(0, 4, 1, 2, 3)


def _normalised_grid(displacement: torch.Tensor, size_in) -> torch.Tensor:
    """Voxel displacement -> grid_sample grid ``(B, *S_out, 3)`` in (x=W, y=H, z=D) order."""
    coords = identity_grid(tuple(displacement.shape[2:]), device=displacement.device) + displacement
    norm = [2.0 * coords[:, k] / max(size_in[k] - 1, 1) - 1.0 for k in range(3)]
    return torch.stack(norm[::-1], dim=-1)


def warp_gridsample(
    volume: torch.Tensor, displacement: torch.Tensor, padding: Padding = "zeros", mode: str = "bilinear"
) -> torch.Tensor:
    """Same sampling as :func:`warp` through ``grid_sample`` (fast backward; training path).

    ``mode="nearest"`` gives nearest-neighbour sampling for label maps.
    """
    grid = _normalised_grid(displacement.float(), volume.shape[2:])
    out = F.grid_sample(volume.float(), grid, mode=mode, padding_mode=padding, align_corners=True)
    return out.to(volume.dtype)


def vector_length(field: torch.Tensor) -> torch.Tensor:
    """``|v|`` of a ``(B, 3, ...)`` displacement per voxel, ``(B, 1, ...)``: the square root of the
    summed squared components (``torch.norm(dim=1)`` over 3 channels is ~15x slower on the CPU)."""
    return (field[:, 0:1] ** 2 + field[:, 1:2] ** 2 + field[:, 2:3] ** 2).sqrt_()


def compose(outer: torch.Tensor, inner: torch.Tensor, sampler=warp) -> torch.Tensor:
    """Displacement of ``phi_outer o phi_inner``: ``x -> inner(x) + outer(x + inner(x))``.

    ``inner`` lives on the output grid; ``outer`` is sampled with border padding.
    """
    return inner + sampler(outer, inner, padding="border")
