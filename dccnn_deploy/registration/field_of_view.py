"""The part of the model grid both images cover, when one of them does not cover the other's brain.

A slab, a scan that cuts the cerebellum or the vertex, a template against such a scan: tissue that
one image has and the other lacks (the other is zero there, beyond its field of view) reads to
the network as brain against background, and it stretches the brain at the edge of the field of
view towards the missing part, misaligning what both images show (ICBM T1 moved by a known
deformation, its lowest 60 mm cut: CerebrA Dice over what the cut image shows 0.765 uncut, 0.693
cut, 0.737 with both cut to the common view; docs/benchmarks.md). Both network images are then
multiplied by the common field of view: the same edge in both, nothing to stretch towards.
"""

from __future__ import annotations

import numpy as np

from dccnn_deploy.io import Volume
from dccnn_deploy.preprocess.brain_mask import TISSUE_LEVEL
from dccnn_deploy.preprocess.grid import Grid, grid_in_field_of_view

#: both images are cut to their common field of view when more than this share of either's tissue
#: lies outside the other's (the 53 held-out cases of benchmarks/register_real.py, heads and brains:
#: at most 0.1 %; the synthetic ICBM subject without the top 43 / 63 mm of its volume: 0.6 % / 8 %)
FOV_UNCOVERED_SHARE = 0.03


def _outside(image_g: np.ndarray, view: np.ndarray) -> float:
    """The share of ``image_g``'s tissue (above :data:`TISSUE_LEVEL`) outside ``view``."""
    tissue = image_g > TISSUE_LEVEL
    total = int(np.count_nonzero(tissue))
    return float(np.count_nonzero(tissue & ~view)) / total if total else 0.0


def common_field_of_view(moving_g: np.ndarray, fixed_g: np.ndarray, grid: Grid, moving: Volume, fixed: Volume,
                         matrix: np.ndarray) -> tuple[np.ndarray | None, dict]:
    """The model-grid voxels (bool) that both images cover (``moving`` through ``matrix``, fixed
    world -> moving world), when more than :data:`FOV_UNCOVERED_SHARE`
    of either network image's (``moving_g`` / ``fixed_g``) tissue lies outside the other's field
    of view, else None; and what report.json says of it (``field_of_view``)."""
    moving_view = grid_in_field_of_view(grid, moving.shape, moving.affine, matrix)
    fixed_view = grid_in_field_of_view(grid, fixed.shape, fixed.affine)
    outside = {"moving": _outside(moving_g, fixed_view), "fixed": _outside(fixed_g, moving_view)}
    cut = max(outside.values()) > FOV_UNCOVERED_SHARE
    info = {f"{side}_tissue_outside_other_view": round(share, 4) for side, share in outside.items()}
    info["cut_to_common_view"] = cut
    return (moving_view & fixed_view) if cut else None, info
