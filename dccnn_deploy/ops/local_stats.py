"""Local (box-window) statistics: the one box filter and the one local NCC of the package.

Box sums use cumulative sums (two subtractions per voxel and axis, whatever the window), which
makes local statistics and their backward pass cheap; windows are clipped at the borders (the
mean is over the voxels inside the volume). Used by the training losses, the report's metrics
and the refine similarities.
"""

from __future__ import annotations

import torch


def _box_sum_axis(t: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sum over ``[i - radius, i + radius]`` (clipped to the volume) along ``dim``, via cumsum."""
    n = t.shape[dim]
    c = torch.cumsum(t, dim=dim)
    head = torch.zeros_like(c.narrow(dim, 0, 1)).repeat_interleave(radius + 1, dim)
    tail = c.narrow(dim, n - 1, 1).repeat_interleave(radius, dim)
    # ext[j] = c'[clamp(j - radius, 0, n)] with c' = [0, c]; sum_i = ext[i + 2r + 1] - ext[i]
    ext = torch.cat([head, c, tail], dim=dim)
    return ext.narrow(dim, 2 * radius + 1, n) - ext.narrow(dim, 0, n)


def _box_count(n: int, radius: int) -> torch.Tensor:
    i = torch.arange(n)
    return ((i + radius).clamp(max=n - 1) - (i - radius).clamp(min=0) + 1).float()


def box_mean(t: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over ``window``^3 boxes clipped at the borders (``(B, C, D, H, W)``), via cumsums."""
    radius = window // 2
    count = torch.ones((), dtype=t.dtype, device=t.device)
    for axis in range(3):
        dim = 2 + axis
        t = _box_sum_axis(t, radius, dim)
        shape = [1] * 5
        shape[dim] = t.shape[dim]
        count = count * _box_count(t.shape[dim], radius).to(t).view(shape)
    return t / count


def local_ncc_map(a: torch.Tensor, b: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """Voxelwise local NCC of ``a`` and ``b`` ``(B, 1, D, H, W)`` over ``window``^3 boxes.

    The five local statistics are box-filtered in one batched pass.
    """
    stats = box_mean(torch.cat([a, b, a * a, b * b, a * b], dim=1), window)
    mu_a, mu_b, aa, bb, ab = stats.unbind(1)
    cov = ab - mu_a * mu_b
    var_a = (aa - mu_a * mu_a).clamp(min=0)
    var_b = (bb - mu_b * mu_b).clamp(min=0)
    return (cov / torch.sqrt(var_a * var_b + eps)).unsqueeze(1)


def local_ncc(a: torch.Tensor, b: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """Mean local normalised cross-correlation per batch row, ``(B, 1, ...)`` x2 -> ``(B,)``;
    values lie in [-1, 1]."""
    return local_ncc_map(a, b, window, eps).flatten(1).mean(dim=1)
