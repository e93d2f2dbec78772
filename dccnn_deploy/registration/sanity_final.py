"""Sanity of the final result: did the registration make the images more alike than no registration?

The geometry checks (:mod:`~dccnn_deploy.registration.sanity`,
:mod:`~dccnn_deploy.registration.sanity_affine`) look at the affine alone. This module compares
the whole registration (affine + deformable) with two references on the model grid, with one
contrast-blind similarity, Mattes mutual information
(:func:`~dccnn_deploy.preprocess.mutual_information.mutual_information`) over the fixed image's
foreground:

* ``none``: the moving image through the two headers only (the identity world map);
* ``affine``: after the affine pre-alignment;
* ``final``: after the affine and the deformable fields.

A registration is expected to raise the similarity. :func:`final_warnings` flags a final
result below no registration, a deformable step that lowered it clearly below the affine
stage, and images that share almost no structure at all (e.g. a noise image: its MI is no
higher than that of the fixed image with the moved values shuffled).
"""

from __future__ import annotations

import numpy as np
import torch

from dccnn_deploy.preprocess.intensity import foreground_mask
from dccnn_deploy.preprocess.mutual_information import mutual_information
from dccnn_deploy.registration.prepare import PreparedPair
from dccnn_deploy.registration.sanity import RESULT_PREFIX

STRIDE = 2  # every second model-grid voxel along each axis (4 mm at the default 2 mm grid)
NONE_MARGIN = 0.03  # relative: final MI below (1 - this) x no registration's MI warns (estimator noise: 0.6 % seen)
AFFINE_MARGIN = 0.1  # relative: final MI below (1 - this) x the affine stage's MI warns
MIN_MI = 0.02  # nats above the MI of unrelated images (``chance``): less shares almost no structure


def final_similarity(prepared: PreparedPair, moved_g: np.ndarray, stride: int = STRIDE) -> dict[str, float]:
    """MI (nats) of the fixed image with the moving image without registration (``none``), after
    the affine (``affine``) and after the whole registration (``final``: ``moved_g``, e.g.
    ``prepared.warped(forward)``), on the model grid (every ``stride``-th voxel) over the fixed
    foreground; ``chance``: the MI of the same final values in a random order, the level of two
    unrelated images for this many voxels (the estimate's bias: larger on small grids)."""
    step = (slice(None, None, stride),) * 3
    fixed = prepared.fixed_g[step]
    mask = foreground_mask(fixed)
    images = {"none": prepared.unaligned_g, "affine": prepared.moving_g, "final": moved_g}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small products: on a busy CPU one thread is 3-5x faster than two
    try:
        mi = {name: mutual_information(fixed, image[step], mask) for name, image in images.items()}
        shuffled = np.random.default_rng(0).permutation(moved_g[step][mask])
        mi["chance"] = mutual_information(fixed[mask], shuffled)
    finally:
        torch.set_num_threads(threads)
    return {name: round(value, 4) for name, value in mi.items()}


def final_warnings(mi: dict[str, float]) -> list[str]:
    """Warnings about :func:`final_similarity`'s values (empty when the registration raised the
    similarity), each starting with :data:`RESULT_PREFIX`."""
    none, affine, final, chance = (float(mi[k]) for k in ("none", "affine", "final", "chance"))
    if not all(np.isfinite(v) for v in (none, affine, final, chance)):
        return []
    out = []
    if final < chance + MIN_MI:
        out.append(f"the registered images share almost no structure (MI {final:.3f}, unrelated images "
                   f"{chance:.3f}): check the inputs")
    if final < none * (1.0 - NONE_MARGIN):
        out.append(f"registration made the images less similar than no registration (MI {final:.3f} < {none:.3f}): "
                   "check the inputs")
    elif final < affine * (1.0 - AFFINE_MARGIN):
        out.append(f"the deformable step lowered the similarity of the affine stage (MI {affine:.3f} -> {final:.3f})")
    return [RESULT_PREFIX + w for w in out]


__all__ = ["final_similarity", "final_warnings"]
