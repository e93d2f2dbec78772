"""Several passes of the network at inference (a recursive cascade at test time).

Each pass registers the moving image, already pulled through the deformation of the passes
before it, to the fixed image; the new forward field is applied first
(``phi = phi_1 o ... o phi_k``, displacements composed with :func:`~dccnn_deploy.ops.warp.compose`)
and the inverse fields in the reverse order (``phi^-1 = phi_k^-1 o ... o phi_1^-1``). Every pass
is a diffeomorphism, so their composition is one too. On the held-out donor pairs one pass
leaves most of the residual misalignment that a second and third pass remove
(docs/benchmarks.md); pairs of different contrasts gain nothing from more passes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from dccnn_deploy.ops.warp import compose, warp_gridsample

RunFn = Callable[..., tuple[np.ndarray, np.ndarray | None]]


def _field(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]


def run_passes(run: RunFn, moving_g: np.ndarray, fixed_g: np.ndarray, passes: int = 1, inverse: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward and inverse displacement ``(1, 3, D, H, W)`` (voxels) after ``passes`` network
    passes; ``run(moving, fixed, inverse=...) -> (fwd, inv)`` is one pass of any backend (arrays
    ``(3, D, H, W)``). ``inverse=False``: the network's inverse path is not needed (the caller
    inverts the forward map numerically); a backend may then skip it, and the inverse is None."""
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    fwd, inv = (_field(a) for a in run(moving_g, fixed_g, inverse=True)) if inverse else (
        _field(run(moving_g, fixed_g, inverse=False)[0]), None)
    moving = torch.from_numpy(np.ascontiguousarray(moving_g, dtype=np.float32))[None, None]
    for _ in range(passes - 1):
        current = warp_gridsample(moving, fwd, padding="zeros")[0, 0].numpy()
        step_fwd, step_inv = run(current, fixed_g, inverse=inverse)
        fwd = compose(fwd, _field(step_fwd), sampler=warp_gridsample)  # the new pass first, then the earlier ones
        if inverse:
            inv = compose(_field(step_inv), inv, sampler=warp_gridsample)
    return fwd, inv
