"""The pair the network (and refine) sees when the two images differ in contrast: one of them
mapped into the other's contrast.

Either image can be mapped; the network is symmetric (forward and inverse fields from one
pass), so the choice only decides which contrast the network and refine work in. The moving
image is mapped unless mapping the fixed one brings the pair into clearly better agreement
(:func:`~dccnn_deploy.similarity.contrast_agreement` after mapping, by :data:`FIXED_MAP_MARGIN`):
a painted donor T1 against the other donor inverted: agreement 0.67 mapping the T1 (DK Dice
0.458), 0.79 mapping the inverted image (0.551). Near a tie the agreement does not tell which
is better (synthetic T2 heads 0.91 / 0.92: 0.854 / 0.858 mapping the moving image, 0.841 /
0.847 the fixed one; docs/benchmarks.md, session 33).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from dccnn_deploy.preprocess.contrast_map import ContrastMap, LocalContrastMap, fit_contrast_map
from dccnn_deploy.preprocess.grid import resample_to_grid
from dccnn_deploy.registration.prepare import PreparedPair, moving_on_grid

#: the two images, in the order :func:`network_input` tries mapping them
SIDES = ("moving", "fixed")
#: the fixed image is mapped instead of the moving one when the pair then agrees better by this
#: much (painted donors against an inverted donor: 0.79 against 0.67; near-ties 0.00-0.02 went
#: either way by up to 0.04 Dice; at 0.035, two heads of different contrasts, the fixed map lost 0.006)
FIXED_MAP_MARGIN = 0.05


@dataclass(frozen=True)
class NetworkInput:
    """The model-grid pair the network and refine register (``moving``, ``fixed``), what was done
    (``info``: report.json ``contrast``), the fitted map and the ``side`` it was applied to
    (None: the contrasts agree, nothing mapped); ``mapped_native``: that image mapped on its own
    voxels, when it was mapped there (an affine refit reads it)."""

    moving: np.ndarray
    fixed: np.ndarray
    info: dict = field(default_factory=dict)
    contrast_map: ContrastMap | LocalContrastMap | None = None
    side: str | None = None
    mapped_native: np.ndarray | None = None


@dataclass(frozen=True)
class _Candidate:
    mapped: np.ndarray
    agreement: float
    fitted: ContrastMap | LocalContrastMap
    mapped_native: np.ndarray | None = None


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    from dccnn_deploy import similarity  # looked up at call time (tests replace it)

    return similarity.contrast_agreement(torch.from_numpy(a), torch.from_numpy(b))


def _map_into(source_g: np.ndarray, target_g: np.ndarray,
              native: tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]] | None) -> _Candidate:
    """``source_g`` mapped into ``target_g``'s contrast: at the source's own resolution when
    ``native`` (its normalised voxels, and how they go onto the model grid) is given and the map
    applies there; a monotone (rank) map that leaves the pair disagreeing gives way to the local
    conditional mean (Colin27 T1 head -> ICBM T2 head: agreement -0.19 -> -0.14 under a rank map)."""
    from dccnn_deploy.similarity import SAME_CONTRAST_MIN_CORRELATION

    fitted = fit_contrast_map(source_g, target_g)
    mapped_native = fitted(native[0]) if native is not None and not fitted.grid_only else None
    mapped = native[1](mapped_native) if mapped_native is not None else fitted(source_g)
    after = _agreement(mapped, target_g)
    if after < SAME_CONTRAST_MIN_CORRELATION and not fitted.grid_only:
        fitted = fit_contrast_map(source_g, target_g, monotone=False)
        mapped, mapped_native = fitted(source_g), None
        after = _agreement(mapped, target_g)
    return _Candidate(mapped, after, fitted, mapped_native)


def network_input(prepared: PreparedPair, moving_affine: np.ndarray | None = None,
                  fixed_affine: np.ndarray | None = None) -> NetworkInput:
    """The network's input pair: ``prepared``'s images as they are when their contrasts agree
    (:func:`~dccnn_deploy.similarity.contrast_agreement` at least
    :data:`~dccnn_deploy.similarity.SAME_CONTRAST_MIN_CORRELATION`), else with one image mapped
    into the other's contrast (:func:`~dccnn_deploy.preprocess.contrast_map.fit_contrast_map`):
    the moving one, or the fixed one when the pair then agrees better by :data:`FIXED_MAP_MARGIN`. ``moving_affine`` / ``fixed_affine`` (voxel -> world):
    that image is mapped at its own resolution (``prepared.moving_n`` / ``fixed_n``) before
    resampling (a stripped head, whose network image exists on the grid only, is not given one)."""
    from dccnn_deploy.similarity import SAME_CONTRAST_MIN_CORRELATION

    agreement = _agreement(prepared.moving_g, prepared.fixed_g)
    info = {"agreement": round(agreement, 4), "mapped": False}
    if agreement >= SAME_CONTRAST_MIN_CORRELATION:
        return NetworkInput(prepared.moving_g, prepared.fixed_g, info)
    moving_n, fixed_n = getattr(prepared, "moving_n", None), getattr(prepared, "fixed_n", None)
    native = {
        "moving": (moving_n, lambda image: moving_on_grid(image, moving_affine, prepared))
        if moving_affine is not None and moving_n is not None else None,
        "fixed": (fixed_n, lambda image: resample_to_grid(image, fixed_affine, prepared.grid))
        if fixed_affine is not None and fixed_n is not None else None,
    }
    images = {"moving": prepared.moving_g, "fixed": prepared.fixed_g}
    other = {"moving": "fixed", "fixed": "moving"}
    candidates = {side: _map_into(images[side], images[other[side]], native[side]) for side in SIDES}
    side = "fixed" if candidates["fixed"].agreement >= candidates["moving"].agreement + FIXED_MAP_MARGIN else "moving"
    chosen = candidates[side]
    info.update(mapped=True, map=chosen.fitted.kind, agreement_after=round(chosen.agreement, 4), mapped_image=side,
                agreement_after_other=round(candidates[other[side]].agreement, 4))
    moving, fixed = (chosen.mapped, prepared.fixed_g) if side == "moving" else (prepared.moving_g, chosen.mapped)
    return NetworkInput(moving, fixed, info, chosen.fitted, side, chosen.mapped_native)
