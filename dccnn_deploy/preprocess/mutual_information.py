"""Mattes mutual information: a joint histogram with cubic B-spline Parzen windows (torch).

Intensities in ``[0, 1]`` are spread over ``bins`` histogram bins by the cubic B-spline kernel
(its weights sum to one, so every sample adds unit mass), as in Mattes et al. (IEEE TMI 2003)
and ITK's ``MattesMutualInformationImageToImageMetric``. The joint histogram is one matrix
product of the two (N, bins) weight matrices, so the MI is differentiable in the moving values
(and through them in whatever produced them, e.g. a transform's parameters). Unlike NCC it
needs no linear relation between the intensities: T2 against T1, inverted contrasts.
"""

from __future__ import annotations

import numpy as np
import torch

BINS = 32
_EPS = 1e-10


def parzen_weights(values: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Cubic B-spline weights ``(N, bins)`` of ``values`` ``(N,)`` in ``[0, 1]`` (clamped).

    A value ``v`` sits at bin position ``p = 2 + v (bins - 5)``, so the kernel's support (+-2
    bins) stays inside the histogram and each row sums to one. Only the four bins around ``p``
    are non-zero: they are computed from its fractional part and scattered into the row.
    Differentiable in ``values``.
    """
    if bins < 8:
        raise ValueError(f"bins must be >= 8, got {bins}")
    position = 2.0 + values.clamp(0.0, 1.0) * (bins - 5)
    first = position.detach().floor()
    t = position - first
    s = 1.0 - t
    weights = torch.stack(
        [s * s * s / 6.0, 2.0 / 3.0 - t * t + 0.5 * t * t * t, 2.0 / 3.0 - s * s + 0.5 * s * s * s, t * t * t / 6.0],
        dim=1,
    )
    index = (first.long() - 1)[:, None] + torch.arange(4, device=values.device)[None, :]
    return values.new_zeros(values.shape[0], bins).scatter(1, index, weights)


def mutual_information_from_weights(fixed_weights: torch.Tensor, moving_weights: torch.Tensor) -> torch.Tensor:
    """MI (nats) of the joint histogram ``fixed_weights.T @ moving_weights``: a scalar, or
    ``(K,)`` for a batch of moving weights ``(K, N, bins)`` against one fixed ``(N, bins)``."""
    joint = fixed_weights.T @ moving_weights
    joint = joint / joint.sum(dim=(-2, -1), keepdim=True).clamp(min=_EPS)
    p_fixed = joint.sum(dim=-1, keepdim=True)
    p_moving = joint.sum(dim=-2, keepdim=True)
    ratio = (joint + _EPS) / (p_fixed * p_moving + _EPS)
    return (joint * torch.log(ratio)).sum(dim=(-2, -1))


def mattes_mi(fixed: torch.Tensor, moving: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Mattes MI (nats) of two equal-length value sets in ``[0, 1]``; differentiable in both."""
    return mutual_information_from_weights(parzen_weights(fixed.reshape(-1), bins), parzen_weights(moving.reshape(-1), bins))


def mutual_information(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, bins: int = BINS) -> float:
    """Mattes MI (nats) of two arrays of equal shape, each rescaled by its own min/max (numpy).

    ``mask`` restricts it to some voxels. A contrast-blind similarity: 0 for independent
    images, larger the more one image's intensity predicts the other's.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if mask is not None:
        a, b = a[np.asarray(mask, dtype=bool)], b[np.asarray(mask, dtype=bool)]
    if a.size == 0:
        return 0.0
    scaled = [(x - x.min()) / max(float(x.max() - x.min()), _EPS) for x in (a.ravel(), b.ravel())]
    with torch.no_grad():
        return float(mattes_mi(torch.from_numpy(scaled[0]), torch.from_numpy(scaled[1]), bins))
