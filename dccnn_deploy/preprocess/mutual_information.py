"""Mattes mutual information: a joint histogram with cubic B-spline Parzen windows (torch).

Intensities in ``[0, 1]`` are spread over ``bins`` histogram bins by the cubic B-spline kernel
(its weights sum to one, so every sample adds unit mass), as in Mattes et al. (IEEE TMI 2003)
and ITK's ``MattesMutualInformationImageToImageMetric``. The joint histogram is one matrix
product of the two (N, bins) weight matrices, or, with the compiled kernels, a sum over each
value pair's 4 x 4 non-zero weights (:class:`FixedParzen`); either way the MI is differentiable
in the moving values (and through them in whatever produced them, e.g. a transform's parameters). Unlike NCC it
needs no linear relation between the intensities: T2 against T1, inverted contrasts.
"""

from __future__ import annotations

import numpy as np
import torch

from dccnn_deploy.ops import native

BINS = 32
_EPS = 1e-10


def _parzen_taps(values: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first of the four non-zero bins ``(N,)`` (int64) and their cubic B-spline weights
    ``(N, 4)`` of ``values`` ``(N,)`` in ``[0, 1]`` (clamped); differentiable in ``values``.

    A value ``v`` sits at bin position ``p = 2 + v (bins - 5)``, so the kernel's support (+-2
    bins) stays inside the histogram and the weights sum to one."""
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
    return first.long() - 1, weights


def parzen_weights(values: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Cubic B-spline weights ``(N, bins)`` of ``values`` ``(N,)`` in ``[0, 1]`` (clamped): the
    four taps of :func:`_parzen_taps` scattered into each row. Differentiable in ``values``."""
    first, weights = _parzen_taps(values, bins)
    index = first[:, None] + torch.arange(4, device=values.device)[None, :]
    return values.new_zeros(values.shape[0], bins).scatter(1, index, weights)


def _mi_of_joint(joint: torch.Tensor) -> torch.Tensor:
    """MI (nats) of joint histograms ``(..., bins, bins)`` (any scale): ``(...)``."""
    joint = joint / joint.sum(dim=(-2, -1), keepdim=True).clamp(min=_EPS)
    p_fixed = joint.sum(dim=-1, keepdim=True)
    p_moving = joint.sum(dim=-2, keepdim=True)
    ratio = (joint + _EPS) / (p_fixed * p_moving + _EPS)
    return (joint * torch.log(ratio)).sum(dim=(-2, -1))


def mutual_information_from_weights(fixed_weights: torch.Tensor, moving_weights: torch.Tensor) -> torch.Tensor:
    """MI (nats) of the joint histogram ``fixed_weights.T @ moving_weights``: a scalar, or
    ``(K,)`` for a batch of moving weights ``(K, N, bins)`` against one fixed ``(N, bins)``."""
    return _mi_of_joint(fixed_weights.T @ moving_weights)


class FixedParzen:
    """The Parzen windows of one fixed value set ``(N,)``, computed once, against which moving value
    sets are scored many times (an optimisation): :meth:`mutual_information`. With the compiled
    kernels (:mod:`dccnn_deploy.ops.native`) the joint histogram and its gradient are sums over
    each value's 4 x 4 taps; otherwise they are products of dense ``(N, bins)`` weight matrices."""

    def __init__(self, fixed: torch.Tensor, bins: int = BINS):
        self.values = fixed.detach().reshape(-1).float()
        self.bins = bins
        first, taps = _parzen_taps(self.values, bins)
        self.first = first.to(torch.int32).contiguous()
        self.taps = taps.contiguous()
        self._weights: torch.Tensor | None = None

    @property
    def weights(self) -> torch.Tensor:
        """The dense ``(N, bins)`` weights (:func:`parzen_weights`), built on first use."""
        if self._weights is None:
            self._weights = parzen_weights(self.values, self.bins)
        return self._weights

    def mutual_information(self, moving: torch.Tensor) -> torch.Tensor:
        """Mattes MI (nats) of the fixed set and ``moving`` ``(N,)`` (a scalar) or ``(K, N)`` (K
        sets: ``(K,)``), each moving value paired with the fixed value at its index;
        differentiable in ``moving``."""
        if native.serves_parzen(moving):
            batch = moving.reshape(-1, moving.shape[-1])
            return _CompiledMI.apply(batch, self).reshape(moving.shape[:-1])
        moving_weights = parzen_weights(moving.reshape(-1), self.bins).reshape(*moving.shape, self.bins)
        return mutual_information_from_weights(self.weights, moving_weights)


class _CompiledMI(torch.autograd.Function):
    """:meth:`FixedParzen.mutual_information` by the compiled kernels: the joint histograms
    (float64) and their MI; in the backward, the MI's gradient with respect to the histograms
    (autograd over the small histograms) taken back to the values through their taps."""

    @staticmethod
    def forward(ctx, moving: torch.Tensor, fixed: FixedParzen) -> torch.Tensor:  # noqa: D102
        values = moving.detach().float().contiguous()
        joint = native.parzen_joint(values, fixed.first, fixed.taps, fixed.bins)
        ctx.fixed = fixed
        ctx.save_for_backward(values, joint)
        return _mi_of_joint(joint).to(moving.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: D102
        values, joint = ctx.saved_tensors
        with torch.enable_grad():
            leaf = joint.detach().requires_grad_(True)
            # a scalar and no grad_outputs: a tensor there makes torch import sympy (~0.3 s)
            (joint_grad,) = torch.autograd.grad((_mi_of_joint(leaf) * grad_out.to(leaf.dtype)).sum(), leaf)
        fixed = ctx.fixed
        grad = native.parzen_joint_gradient(values, fixed.first, fixed.taps, joint_grad.float().contiguous())
        return grad.to(grad_out.dtype), None


def mattes_mi(fixed: torch.Tensor, moving: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Mattes MI (nats) of two equal-length value sets in ``[0, 1]``; differentiable in both (dense
    weights; :class:`FixedParzen` scores many moving sets against one fixed set faster)."""
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
        return float(FixedParzen(torch.from_numpy(scaled[0]), bins).mutual_information(torch.from_numpy(scaled[1])))
