"""Separable Gaussian smoothing (the homotopy h of eq. (8) and the metrics' SSIM window)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dccnn_deploy.ops import native


def gaussian_kernel1d(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps, radius ``ceil(2 sigma)`` by default."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    r = int(math.ceil(2.0 * sigma)) if radius is None else int(radius)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_smooth(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smooth ``(B, C, D, H, W)`` with a separable Gaussian (replicate borders: constants stay).

    Each axis is a weighted sum of shifted slices of the padded volume rather than a depthwise
    convolution: on the CPU 2-8x faster (one channel at 1 mm 0.85 -> 0.14 s, a training step's
    homotopy forward and backward 8x), in the volume's own dtype (autocast does not reach it),
    and the same values within float rounding. A float32 volume that needs no gradient is
    smoothed by the compiled kernel on the CPU (:func:`~dccnn_deploy.ops.native.smooth`, same
    sums in the same order)."""
    taps = [float(t) for t in gaussian_kernel1d(sigma)]
    r = len(taps) // 2
    if volume.dtype == torch.float32 and r <= native.MAX_SMOOTH_RADIUS and native.serves(volume):
        return native.smooth(volume, taps)
    in_place = not (torch.is_grad_enabled() and volume.requires_grad)
    out = volume
    for axis in range(3):
        dim, n = 2 + axis, volume.shape[2 + axis]
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        padded = F.pad(out, pad, mode="replicate")
        out = padded.narrow(dim, 0, n) * taps[0]
        for k in range(1, len(taps)):
            shifted = padded.narrow(dim, k, n)
            out = out.add_(shifted, alpha=taps[k]) if in_place else out + shifted * taps[k]
    return out
