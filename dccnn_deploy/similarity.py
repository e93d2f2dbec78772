"""Image similarities for instance optimisation (``--similarity``) and a contrast detector.

Each similarity is a :class:`Similarity`: ``features(image)`` is computed once per image and
resolution (what gets warped), ``loss(warped, fixed)`` compares warped moving features with the
fixed ones (lower is better, a scalar):

* ``lncc``: local normalised cross-correlation, ``-LNCC`` (same contrast);
* ``mind``: MIND-SSC self-similarity context descriptors (Heinrich et al. 2013), mean absolute
  difference of the 12 descriptor channels (contrast-independent: each image is described by
  the self-similarity of its own patches);
* ``ngf``: normalised gradient fields (Haber & Modersitzki 2006), ``1 - <n_a, n_b>^2`` (edges
  aligned whatever their sign).

Local statistics come from :mod:`dccnn_deploy.ops.local_stats` (cumulative-sum box filters).
:func:`choose_similarity` resolves ``auto`` with :func:`contrast_agreement`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dccnn_deploy.ops.jacobian import spatial_gradient
from dccnn_deploy.ops.local_stats import box_mean, local_ncc_map
from dccnn_deploy.ops.morphology import dilate
from dccnn_deploy.ops.smoothing import gaussian_smooth

SIMILARITIES = ("lncc", "mind", "ngf")
#: ``auto`` picks ``mind`` when the intensity correlation inside the foreground is below this
#: (same contrast after an affine: > 0.6 on every real pair measured; inverted / T2-like: < 0).
SAME_CONTRAST_MIN_CORRELATION = 0.3


# the six face neighbours; MIND-SSC compares the 12 pairs of them at distance sqrt(2)
_SIX = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))
_SSC_PAIRS = tuple(
    (i, j) for i in range(6) for j in range(i + 1, 6)
    if sum((a - b) ** 2 for a, b in zip(_SIX[i], _SIX[j])) == 2
)


def _shift(t: torch.Tensor, offset: tuple[int, int, int]) -> torch.Tensor:
    """``t`` sampled at ``x + offset`` with replicate borders."""
    pad = []
    for o in reversed(offset):
        pad += [max(-o, 0), max(o, 0)]
    p = torch.nn.functional.pad(t, pad, mode="replicate")
    for axis, o in enumerate(offset):
        p = p.narrow(2 + axis, max(o, 0), t.shape[2 + axis])
    return p


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2, eps: float = 1e-6) -> torch.Tensor:
    """MIND-SSC descriptor ``(B, 12, D, H, W)`` of ``(B, 1, D, H, W)``.

    Patch distances (boxes of edge ``2 radius + 1``) between the 12 pairs of six-neighbourhood
    points ``dilation`` voxels away, ``exp(-D / V)`` with ``V`` the local mean distance,
    normalised by its maximum per voxel.
    """
    shifted = [_shift(image, tuple(dilation * c for c in off)) for off in _SIX]
    diffs = torch.cat([(shifted[i] - shifted[j]) ** 2 for i, j in _SSC_PAIRS], dim=1)
    dist = box_mean(diffs, 2 * radius + 1)
    dist = dist - dist.amin(dim=1, keepdim=True)
    var = dist.mean(dim=1, keepdim=True)
    var = var.clamp(min=float(var.mean()) * 1e-3 + eps, max=float(var.mean()) * 1e3 + eps)
    desc = torch.exp(-dist / var)
    return desc / desc.amax(dim=1, keepdim=True)


@dataclass(frozen=True)
class Similarity:
    """A refine similarity: ``features`` per image, ``loss(warped_moving, fixed) -> scalar``."""

    name: str
    features: Callable[[torch.Tensor], torch.Tensor]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _ngf(image: torch.Tensor, eps: float) -> torch.Tensor:
    g = spatial_gradient(image)[:, 0]  # (B, 3, D, H, W)
    return g / torch.sqrt((g * g).sum(dim=1, keepdim=True) + eps * eps)


def make_similarity(name: str, window: int = 9) -> Similarity:
    """The :class:`Similarity` called ``name`` (one of :data:`SIMILARITIES`)."""
    if name == "lncc":
        return Similarity(name, lambda x: x, lambda w, f: -local_ncc_map(w, f, window).mean())
    if name == "mind":
        return Similarity(name, mind_ssc, lambda w, f: (w - f).abs().mean())
    if name == "ngf":
        eps = 0.02  # gradients weaker than this (intensities in [0, 1]) count as noise

        def ngf_loss(w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
            return (1.0 - ((_ngf(w, eps) * _ngf(f, eps)).sum(dim=1)) ** 2).mean()

        return Similarity(name, lambda x: x, ngf_loss)
    raise ValueError(f"unknown similarity {name!r}: expected one of {', '.join(SIMILARITIES)} or auto")


def contrast_agreement(moving: torch.Tensor, fixed: torch.Tensor, threshold: float = 0.05) -> float:
    """Pearson correlation of the two (affinely aligned, same-grid) images inside their joint
    foreground (both above ``threshold`` of [0, 1] intensities, eroded by 2 voxels so that the
    shared tissue/background edge does not count), after a 1-voxel Gaussian blur so that residual
    misalignment matters less. Near 1: same contrast; near or below 0: different."""
    a, b = (t.float().reshape(1, 1, *t.shape[-3:]) for t in (moving, fixed))
    outside = (a <= threshold) | (b <= threshold)
    mask = ~dilate(outside, 2).flatten()
    if int(mask.sum()) < 10:
        return 0.0
    a, b = (gaussian_smooth(t, 1.0).flatten()[mask] for t in (a, b))
    a, b = a - a.mean(), b - b.mean()
    denom = torch.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if float(denom) > 0 else 0.0


def choose_similarity(spec: str, moving: torch.Tensor, fixed: torch.Tensor) -> str:
    """Resolve ``spec`` (a name or ``auto``): ``auto`` gives ``lncc`` for matching contrasts and
    ``mind`` when :func:`contrast_agreement` is below :data:`SAME_CONTRAST_MIN_CORRELATION`."""
    if spec != "auto":
        make_similarity(spec)  # validates
        return spec
    return "lncc" if contrast_agreement(moving, fixed) >= SAME_CONTRAST_MIN_CORRELATION else "mind"
