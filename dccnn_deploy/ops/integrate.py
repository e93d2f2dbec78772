"""Scaling and squaring: the exponential of a stationary velocity field (diffeomorphic map)."""

from __future__ import annotations

import torch

from dccnn_deploy.ops.warp import compose, warp_gridsample


def exp_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Displacement of exp(v) for a voxel-unit velocity ``(B, 3, ...)`` (2**steps sub-steps)."""
    disp = velocity / (2.0**steps)
    for _ in range(steps):
        disp = compose(disp, disp, sampler=warp_gridsample)
    return disp
