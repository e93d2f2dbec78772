"""Several passes of the network at inference (a recursive cascade at test time).

Each pass registers the moving image, already pulled through the deformation of the passes
before it, to the fixed image; the new forward field is applied first
(``phi = phi_1 o ... o phi_k``, displacements composed with :func:`~dccnn_deploy.ops.warp.compose`)
and the inverse fields in the reverse order (``phi^-1 = phi_k^-1 o ... o phi_1^-1``). Every pass
is a diffeomorphism, so their composition is one too. On the held-out donor pairs one pass
leaves most of the residual misalignment that a second and third pass remove
(docs/benchmarks.md); pairs of different contrasts gain nothing from more passes. The model's
passes are scored (:func:`settle_passes`): they end at the first pass that no longer raises the local
NCC, so a pair that is already aligned (an image against itself, a rescan) is not pulled apart by
passes that only add the network's own small residual field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from dccnn_deploy.ops.local_stats import local_ncc
from dccnn_deploy.ops.warp import compose, warp_gridsample

RunFn = Callable[..., tuple[np.ndarray, np.ndarray | None]]

#: :func:`settle_passes` stops at the first pass that raises the local NCC (9³ windows, the
#: similarity the network was trained on) of the moving image through the composed map and the fixed
#: image by less than this, and drops that pass. Gains per pass (1 -> 5) on the held-out pairs of
#: one contrast: donors 0.079 / 0.023 / 0.010 / 0.005 / 0.002, Colin27 <-> ICBM 0.076-0.087 ... 0.003
#: (all five kept, as before); a template moved by a known deformation 0.039 / 0.005 / 0.001 / 0.000
#: (CerebrA Dice 0.826 / 0.836 / 0.833 / 0.825 / 0.816: three kept); an image against itself: every
#: pass lowers it (Dice 1.000 / 0.996 / 0.977 / 0.941 / 0.908 / 0.884: none kept); docs/benchmarks.md
MIN_PASS_GAIN = 1e-3
NCC_WINDOW = 9


@dataclass
class PassResult:
    """Forward and inverse displacement ``(1, 3, D, H, W)`` (voxels; inverse None when not asked
    for) of the ``kept`` passes; ``scores``: the local NCC before the first pass and after each
    pass run (empty when the passes were not scored)."""

    forward: torch.Tensor
    inverse: torch.Tensor | None
    kept: int
    scores: list[float] = field(default_factory=list)


def _field(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]


def run_passes(run: RunFn, moving_g: np.ndarray, fixed_g: np.ndarray, passes: int = 1, inverse: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward and inverse displacement ``(1, 3, D, H, W)`` (voxels) after ``passes`` network
    passes; ``run(moving, fixed, inverse=...) -> (fwd, inv)`` is one pass of any backend (arrays
    ``(3, D, H, W)``). ``inverse=False``: the network's inverse path is not needed (the caller
    inverts the forward map numerically); a backend may then skip it, and the inverse is None."""
    result = settle_passes(run, moving_g, fixed_g, passes, inverse, min_gain=None)
    return result.forward, result.inverse


def settle_passes(run: RunFn, moving_g: np.ndarray, fixed_g: np.ndarray, passes: int = 1, inverse: bool = True,
                  min_gain: float | None = MIN_PASS_GAIN) -> PassResult:
    """At most ``passes`` network passes (see :func:`run_passes`); with ``min_gain`` each is scored
    (local NCC, :data:`NCC_WINDOW`, of ``moving_g`` through the composed map against ``fixed_g``)
    and the first pass that gains less than ``min_gain`` ends them and is dropped: a pair already
    aligned keeps no pass (the identity), a pass that starts to fit noise is not kept."""
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    moving = torch.from_numpy(np.ascontiguousarray(moving_g, dtype=np.float32))[None, None]
    fixed = torch.from_numpy(np.ascontiguousarray(fixed_g, dtype=np.float32))[None, None] if min_gain is not None else None
    scores = [] if fixed is None else [float(local_ncc(moving, fixed, NCC_WINDOW))]
    fwd = inv = None
    kept, current = 0, moving_g
    for index in range(passes):
        step_fwd, step_inv = run(current, fixed_g, inverse=inverse)
        step_fwd = _field(step_fwd)
        # the new pass first, then the earlier ones; inverses the other way round
        new_fwd = step_fwd if fwd is None else compose(fwd, step_fwd, sampler=warp_gridsample)
        new_inv = None if not inverse else _field(step_inv) if inv is None else compose(_field(step_inv), inv,
                                                                                        sampler=warp_gridsample)
        if fixed is None and index == passes - 1:
            fwd, inv, kept = new_fwd, new_inv, index + 1
            break
        warped = warp_gridsample(moving, new_fwd, padding="zeros")
        if fixed is not None:
            scores.append(float(local_ncc(warped, fixed, NCC_WINDOW)))
            if scores[-1] - scores[-2] < min_gain:
                break
        fwd, inv, kept, current = new_fwd, new_inv, index + 1, warped[0, 0].numpy()
    if fwd is None:  # not one pass kept: the identity
        fwd = moving.new_zeros((1, 3, *moving.shape[2:]))
        inv = torch.zeros_like(fwd) if inverse else None
    return PassResult(fwd, inv, kept, scores)
