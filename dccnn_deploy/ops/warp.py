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

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from dccnn_deploy.ops import native

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


#: largest side (pixels) of the 2-D mosaic :func:`volume_sampler` samples: float32 normalised
#: positions are then exact to ~2e-4 pixel (a model-grid field or feature map makes ~1000; a
#: 1 mm image may make more and keeps the 3-D kernel)
MOSAIC_MAX_SIDE = 2048
#: fewest channels for which the mosaic pays (one channel: 0.46 s in 3-D vs 0.85 s as a mosaic at 1 mm)
MOSAIC_MIN_CHANNELS = 3


def _mosaic_layout(depth: int) -> tuple[int, int]:
    """(rows, cols) of tiles holding ``depth`` slices, as square as possible."""
    cols = math.ceil(math.sqrt(depth))
    return math.ceil(depth / cols), cols


def _mosaic_margin(padding: Padding) -> int:
    """Zero pixels around each tile: one for zero padding (exact per corner), none for border."""
    return 1 if padding == "zeros" else 0


def _mosaic(volume: torch.Tensor, margin: int) -> tuple[torch.Tensor, int]:
    """``(B, C, D, H, W)`` -> its slices tiled into a ``(B, C, rows*(H+2m), cols*(W+2m))`` image
    (``margin`` zero pixels around each slice, :func:`_mosaic_layout`), and ``cols``."""
    b, c, d, h, w = volume.shape
    rows, cols = _mosaic_layout(d)
    padded = F.pad(volume, (margin, margin, margin, margin, 0, rows * cols - d))
    hp, wp = h + 2 * margin, w + 2 * margin
    tiles = padded.reshape(b, c, rows, cols, hp, wp).permute(0, 1, 2, 4, 3, 5)
    return tiles.reshape(b, c, rows * hp, cols * wp), cols


class _MosaicSource:
    """A ``(B, C, D, H, W)`` volume tiled once into a 2-D mosaic (:func:`_mosaic`), sampled
    trilinearly at voxel coordinates as two bilinear samples of the slices around each point's
    depth, blended linearly (see :func:`volume_sampler`)."""

    def __init__(self, volume: torch.Tensor, padding: Padding):
        self.shape = volume.shape
        self.padding = padding
        self.margin = _mosaic_margin(padding)
        self.image, self.cols = _mosaic(volume.float(), self.margin)
        d, h, w = self.shape[2:]
        self.scale_y, self.scale_x = 2.0 / (self.image.shape[2] - 1), 2.0 / (self.image.shape[3] - 1)
        self.tile_y, self.tile_x = (h + 2 * self.margin) * self.scale_y, (w + 2 * self.margin) * self.scale_x

    def sample(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Values ``(B, C, *S)`` at voxel coordinates ``x`` (W), ``y`` (H), ``z`` (D), each a float32
        ``(B, *S)`` tensor this call may overwrite."""
        b, c, d, h, w = self.shape
        out_shape = x.shape[1:]
        m = self.margin
        if self.padding == "border":
            x, y, z = x.clamp_(0.0, w - 1.0), y.clamp_(0.0, h - 1.0), z.clamp_(0.0, d - 1.0)
            lower = z.floor().clamp_(max=d - 2.0)
        else:  # past the margin both corners are outside: 0 either way
            x, y, lower = x.clamp_(-1.0, float(w)), y.clamp_(-1.0, float(h)), z.floor()
        upper_weight = z.sub_(lower)
        x = x.mul_(self.scale_x).add_(m * self.scale_x - 1.0)
        y = y.mul_(self.scale_y).add_(m * self.scale_y - 1.0)
        out = None
        for corner, weight in ((lower, 1.0 - upper_weight), (lower + 1.0, upper_weight)):
            if self.padding == "zeros":
                weight = weight * ((corner >= 0) & (corner <= d - 1))
                corner = corner.clamp(0.0, d - 1.0)
            tile_row = torch.div(corner, self.cols, rounding_mode="floor")
            grid2d = torch.stack([(corner - tile_row * self.cols).mul_(self.tile_x).add_(x),
                                  tile_row.mul_(self.tile_y).add_(y)], dim=-1)
            part = F.grid_sample(self.image, grid2d.reshape(b, -1, out_shape[-1], 2), mode="bilinear",
                                 padding_mode=self.padding, align_corners=True).view(b, c, *out_shape)
            weight = weight.unsqueeze(1)
            out = part.mul_(weight) if out is None else out.addcmul_(part, weight)
        return out


def _needs_grad(t: torch.Tensor) -> bool:
    """Whether sampling at ``t`` must be differentiable (training): then PyTorch samples."""
    return torch.is_grad_enabled() and t.requires_grad


def _mosaic_pays(volume: torch.Tensor, padding: Padding, mode: str = "bilinear") -> bool:
    """Whether :class:`_MosaicSource` serves ``volume`` (see :func:`volume_sampler`)."""
    b, c, d, h, w = volume.shape
    margin = _mosaic_margin(padding)
    rows, cols = _mosaic_layout(d)
    side = max(rows * (h + 2 * margin), cols * (w + 2 * margin))
    return not (mode != "bilinear" or volume.device.type != "cpu" or d < 2 or side > MOSAIC_MAX_SIDE
                or c < MOSAIC_MIN_CHANNELS or (torch.is_grad_enabled() and volume.requires_grad))


def volume_sampler(volume: torch.Tensor, padding: Padding = "zeros", mode: str = "bilinear"
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``grid -> F.grid_sample(volume, grid, mode, padding, align_corners=True)`` for a 5-D
    ``volume`` sampled many times (e.g. slab by slab).

    On the CPU, without gradients, the compiled kernel samples where it is built
    (:mod:`~dccnn_deploy.ops.native`: ~8x faster than ``grid_sample``). Without it, trilinear
    sampling runs as two bilinear samples of the slices tiled once into a 2-D mosaic (the two
    slices around each point's depth, blended linearly): PyTorch's 2-D CPU kernel is vectorised,
    its 3-D one is not. Same values within
    float rounding of the sample position (~2e-4 voxel, :data:`MOSAIC_MAX_SIDE`); zero padding
    is exact per corner (a zero margin around every tile), border padding clamps as in 3-D.
    It pays where several channels are read at many points (:data:`MOSAIC_MIN_CHANNELS`): the written 1 mm inverse warp samples
    the 12 channels of a model-grid field and its gradient 1.4x faster (2.27 -> 1.59 s).
    :func:`displaced_sampler` is the same for displacements in voxels (the network's feature warps).
    """
    def plain(grid: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(volume, grid, mode=mode, padding_mode=padding, align_corners=True)

    if mode == "bilinear" and native.serves(volume):
        compiled = native.NativeSource(volume, padding)
        return lambda grid: plain(grid) if _needs_grad(grid) else compiled.at_grid(grid)
    if not _mosaic_pays(volume, padding, mode):
        return plain
    source = _MosaicSource(volume, padding)
    d, h, w = volume.shape[2:]

    def mosaic(grid: torch.Tensor) -> torch.Tensor:
        if _needs_grad(grid):
            return plain(grid)
        grid = grid.float()
        x = (grid[..., 0] + 1.0) * (0.5 * (w - 1))
        y = (grid[..., 1] + 1.0) * (0.5 * (h - 1))
        z = (grid[..., 2] + 1.0) * (0.5 * (d - 1))
        return source.sample(x, y, z)

    return mosaic


def displaced_sampler(volume: torch.Tensor, padding: Padding = "zeros") -> Callable[[torch.Tensor], torch.Tensor]:
    """``disp -> warp_gridsample(volume, disp, padding)`` (trilinear, voxel displacements on the
    volume's own grid) for a volume read at many displacements: the CPU backend's network warps
    each scale's features N times. Through the compiled kernel where it is built
    (:mod:`~dccnn_deploy.ops.native`), else :class:`_MosaicSource` where it pays (tiled once, voxel
    coordinates straight from the displacement: no normalised grid), else ``warp_gridsample``."""
    if native.serves(volume):
        compiled = native.NativeSource(volume, padding)  # copied channels-last once, read N times
        return lambda disp: (warp_gridsample(volume, disp, padding=padding) if _needs_grad(disp)
                             else compiled.displaced(disp))

    if not _mosaic_pays(volume, padding):
        return lambda disp: warp_gridsample(volume, disp, padding=padding)
    source = _MosaicSource(volume, padding)
    axes = [torch.arange(n, dtype=torch.float32).view([n if k == j else 1 for k in range(3)])
            for j, n in enumerate(volume.shape[2:])]

    def sample(disp: torch.Tensor) -> torch.Tensor:
        if disp.shape[2:] != volume.shape[2:] or _needs_grad(disp):
            return warp_gridsample(volume, disp, padding=padding)
        disp = disp.float()
        z, y, x = (disp[:, k] + axes[k] for k in range(3))
        return source.sample(x, y, z)

    return sample


def normalised_grid(displacement: torch.Tensor, size_in) -> torch.Tensor:
    """Voxel displacement -> grid_sample grid ``(B, *S_out, 3)`` in (x=W, y=H, z=D) order."""
    coords = identity_grid(tuple(displacement.shape[2:]), device=displacement.device) + displacement
    norm = [2.0 * coords[:, k] / max(size_in[k] - 1, 1) - 1.0 for k in range(3)]
    return torch.stack(norm[::-1], dim=-1)


def warp_gridsample(
    volume: torch.Tensor, displacement: torch.Tensor, padding: Padding = "zeros", mode: str = "bilinear"
) -> torch.Tensor:
    """Same sampling as :func:`warp` through ``grid_sample`` (fast backward; training path).

    ``mode="nearest"`` gives nearest-neighbour sampling for label maps. On the CPU, bilinear
    sampling of a volume that needs no gradient runs in the compiled kernel
    (:mod:`~dccnn_deploy.ops.native`), differentiable in ``displacement`` with zeros padding.
    """
    if mode == "bilinear" and native.serves(volume):
        if not _needs_grad(displacement):
            return native.NativeSource(volume, padding).displaced(displacement).to(volume.dtype)
        if padding == "zeros" and volume.shape[1] <= native.MAX_SLOPE_CHANNELS:  # gradient to the displacement only
            return native.displaced_differentiable(volume, displacement).to(volume.dtype)
    grid = normalised_grid(displacement.float(), volume.shape[2:])
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
