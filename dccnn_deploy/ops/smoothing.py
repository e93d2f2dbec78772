"""Separable Gaussian smoothing (the homotopy h of eq. (8) and the metrics' SSIM window)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps, radius ``ceil(2 sigma)`` by default."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    r = int(math.ceil(2.0 * sigma)) if radius is None else int(radius)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_smooth(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smooth ``(B, C, D, H, W)`` with a separable Gaussian (replicate borders: constants stay)."""
    taps = gaussian_kernel1d(sigma).to(device=volume.device, dtype=volume.dtype)
    r = taps.numel() // 2
    c = volume.shape[1]
    out = volume
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = taps.numel()
        weight = taps.view(shape).expand(c, 1, *shape[2:]).contiguous()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = r
        pad[2 * (2 - axis) + 1] = r
        out = F.conv3d(F.pad(out, pad, mode="replicate"), weight, groups=c)
    return out
