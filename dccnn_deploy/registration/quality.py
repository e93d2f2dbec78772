"""The quality figures of report.json: similarity on the model grid, field regularity, label overlap."""

from __future__ import annotations

import numpy as np
import torch

from dccnn_deploy.ops.local_stats import local_ncc
from dccnn_deploy.metrics import dice, folding_percent, hd95, inverse_consistency, mean_of, ncc, ssim


def image_metrics(moved: np.ndarray, fixed: np.ndarray) -> dict[str, float]:
    """Similarity on the model grid: global NCC, local NCC (9^3), SSIM."""
    lncc = float(local_ncc(torch.from_numpy(moved)[None, None], torch.from_numpy(fixed)[None, None])[0])
    return {"ncc": ncc(moved, fixed), "local_ncc": lncc, "ssim": ssim(moved, fixed, data_range=1.0)}


def label_metrics(moved: np.ndarray, fixed: np.ndarray, spacing) -> dict:
    """Dice and HD95 per label of ``fixed`` (and their means)."""
    labels = sorted(int(l) for l in np.unique(fixed) if l != 0)
    d = dice(moved, fixed, labels)
    h = hd95(moved, fixed, spacing, labels)
    return {"dice_mean": mean_of(d), "hd95_mean_mm": mean_of(h), "dice": {str(k): v for k, v in d.items()}}


def field_metrics(forward: torch.Tensor | None, inverse: torch.Tensor | None) -> dict:
    """% of folding voxels of both fields and their inverse consistency (model grid voxels)."""
    if forward is None:
        return {"folding_percent_forward": 0.0, "folding_percent_inverse": 0.0}
    fwd, inv = forward[0], inverse[0]
    return {
        "folding_percent_forward": folding_percent(fwd),
        "folding_percent_inverse": folding_percent(inv),
        "inverse_consistency_voxels": inverse_consistency(fwd, inv),
    }
