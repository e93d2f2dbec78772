"""Binary morphology on ``(..., D, H, W)`` masks."""

from __future__ import annotations

import torch


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """``mask`` (any dtype; non-zero = inside) dilated by a ``(2 radius + 1)^3`` cube, as a bool
    tensor: what ``max_pool3d(mask, 2 radius + 1, stride=1, padding=radius) > 0`` gives, by
    OR-ing shifted views one axis at a time (on the CPU ~80x faster than the 3-D max pool)."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    out = mask != 0
    for dim in (-3, -2, -1):
        n = out.shape[dim]
        src, out = out, out.clone()
        for shift in range(1, min(radius, n - 1) + 1):
            out.narrow(dim, 0, n - shift).logical_or_(src.narrow(dim, shift, n - shift))
            out.narrow(dim, shift, n - shift).logical_or_(src.narrow(dim, 0, n - shift))
    return out
