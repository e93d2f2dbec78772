"""The pair as the network sees it: both images normalised and on the model grid."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from dccnn_deploy.io import Volume
from dccnn_deploy.preprocess.affine import centre_of_mass
from dccnn_deploy.preprocess.grid import Grid, fitted_model_grid, foreground_corners, model_grid, resample_to_grid
from dccnn_deploy.preprocess.intensity import foreground_mask, normalise_intensity
from dccnn_deploy.preprocess.settings import PreprocessSettings

if TYPE_CHECKING:
    import torch


@dataclass
class PreparedPair:
    """Both images on the model grid, normalised: what the network sees.

    ``moving_g`` went through the affine ``matrix`` (fixed world -> moving world); ``unaligned_g``
    is the moving image through the headers only (the "before" similarity). ``moving_n`` /
    ``fixed_n``: the normalised images on their own voxels, which ``moving_g`` / ``fixed_g`` were
    resampled from (kept for a contrast map applied at the image's resolution and an affine refit;
    None once dropped).
    ``brain_mask_g``: the brain mask (bool, on the grid) a head was stripped with for the network
    (:func:`strip_for_network`), else None; ``warnings``: what went wrong preparing it (one line each).
    """

    grid: Grid
    matrix: np.ndarray
    moving_g: np.ndarray
    fixed_g: np.ndarray
    unaligned_g: np.ndarray
    moving_n: np.ndarray | None = None
    fixed_n: np.ndarray | None = None
    brain_mask_g: np.ndarray | None = None
    warnings: tuple[str, ...] = ()

    def warped(self, forward: torch.Tensor | None) -> np.ndarray:
        """``moving_g`` through the forward voxel displacement ``(1, 3, *grid)`` (None: ``moving_g``):
        the moving image on the model grid after the whole registration."""
        if forward is None:
            return self.moving_g
        import torch

        from dccnn_deploy.ops.warp import warp_gridsample

        return warp_gridsample(torch.from_numpy(self.moving_g)[None, None], forward)[0, 0].numpy()


def normalised(image: np.ndarray, settings: PreprocessSettings) -> np.ndarray:
    """``image`` put on [0, 1] with ``settings``' percentiles (the network's input scale)."""
    return normalise_intensity(image, lower=settings.lower_percentile, upper=settings.upper_percentile)


def prepare_pair(moving: Volume, fixed: Volume, matrix: np.ndarray, settings: PreprocessSettings,
                 fit_divisor: int | None = None) -> PreparedPair:
    """Normalise each image once (``settings``' percentiles), place the RAS model grid
    (``settings``' shape and spacing) on the fixed image's foreground centre of mass and resample
    both onto it (the moving image through ``matrix``). ``fit_divisor``: a network that takes any
    grid size that is a multiple of it; the grid is then shortened to the fixed foreground
    (:func:`~dccnn_deploy.preprocess.grid.fitted_model_grid`)."""
    fixed_n, moving_n = normalised(fixed.data, settings), normalised(moving.data, settings)
    mask = foreground_mask(fixed_n)
    centre = centre_of_mass(fixed_n * mask, fixed.affine)
    if fit_divisor:
        grid = fitted_model_grid(tuple(settings.grid_shape), settings.spacing_mm, centre,
                                 foreground_corners(mask, fixed.affine), fit_divisor)
    else:
        grid = model_grid(tuple(settings.grid_shape), settings.spacing_mm, centre)
    return PreparedPair(
        grid=grid,
        matrix=matrix,
        moving_g=resample_to_grid(moving_n, moving.affine, grid, world_transform=matrix),
        fixed_g=resample_to_grid(fixed_n, fixed.affine, grid),
        unaligned_g=resample_to_grid(moving_n, moving.affine, grid),
        moving_n=moving_n,
        fixed_n=fixed_n,
    )


def moving_on_grid(image: np.ndarray, moving_affine: np.ndarray, prepared: PreparedPair) -> np.ndarray:
    """A normalised image on the moving image's voxels (e.g. contrast-mapped at its own
    resolution) resampled onto the model grid through ``prepared.matrix``, as ``moving_g`` was."""
    return resample_to_grid(image, moving_affine, prepared.grid, world_transform=prepared.matrix)


def realigned(prepared: PreparedPair, moving_affine: np.ndarray, matrix: np.ndarray) -> PreparedPair:
    """``prepared`` with another affine ``matrix``: what :func:`prepare_pair` gives for it (the grid,
    the fixed image and the unaligned moving image do not depend on it)."""
    moved = replace(prepared, matrix=matrix)
    return replace(moved, moving_g=moving_on_grid(prepared.moving_n, moving_affine, moved))


#: ``register(moving_g, fixed_g) -> forward`` voxel displacement ``(1, 3, *grid)`` on the model grid
GridRegister = Callable[[np.ndarray, np.ndarray], "torch.Tensor"]


#: the template head deformed onto a head correlates this well with it (NCC around the mask) when
#: the head is the template itself or an image in its space (ICBM 2009c T1 head: 0.976-0.979;
#: Colin27's head: 0.89): its mask is then the head's own and is kept as it is
TEMPLATE_MATCH_NCC = 0.95
#: the carried (and refined) brain mask's volume over the affinely fitted template mask's, outside
#: which the carried one is taken for a failure and the template mask used (with a warning): 0.93-1.00
#: on nine heads (Colin27, ICBM T1 / T2, ROBEX, synthetic ICBM / Colin27 heads; docs/benchmarks.md)
CARRIED_MASK_VOLUME = (0.7, 1.3)


def strip_for_network(prepared: PreparedPair, side: str, brain_mask: tuple[np.ndarray, np.ndarray],
                      settings: PreprocessSettings, template_head: np.ndarray | None = None,
                      register: GridRegister | None = None, refine_edge: bool = True) -> PreparedPair:
    """``prepared`` with the ``side`` (``"moving"`` / ``"fixed"``) image, a head matched against a
    brain, multiplied by its brain mask (brain fraction, its voxel -> world affine: the affine
    stage's template mask) on the model grid and normalised again, so that the network sees two
    brains. The written images keep the head; only the network's (and refine's) input changes.
    The mask cuts with a hard edge (brain fraction above 0.5), as skull stripping does: a fraction
    multiplied in dims the edge into a faint rim, which a decreasing (T2) contrast map turns
    bright (synthetic ICBM heads -> ICBM brain, CerebrA Dice: T1 0.809 -> 0.827, T2 with the
    template's T2 head 0.779 -> 0.802; docs/benchmarks.md).

    With ``template_head`` (the template head on the mask's voxels, the same affine fit) and
    ``register``, the mask follows the template head deformed onto the head (a head-to-head
    registration on the model grid): the outline of this brain, not of an affinely fitted one.
    Unless the deformed template matches the head (:data:`TEMPLATE_MATCH_NCC`) or not
    ``refine_edge``, its edge is then moved onto the head's own brain edge
    (:func:`~dccnn_deploy.preprocess.brain_mask.refine_brain_mask`). A carried mask whose volume
    is implausible next to the template mask's (:data:`CARRIED_MASK_VOLUME`) is not used: the
    template mask is, and the pair's ``warnings`` say so."""
    mask, mask_affine = brain_mask
    transform = prepared.matrix if side == "moving" else None
    on_grid = resample_to_grid(np.asarray(mask, dtype=np.float32), mask_affine, prepared.grid, world_transform=transform)
    head = getattr(prepared, f"{side}_g")
    warnings = ()
    if template_head is not None and register is not None:
        carried = _carried_mask(on_grid, head, template_head, mask_affine, transform, prepared, settings, register,
                                refine_edge)
        ratio = float((carried > 0.5).sum()) / max(1.0, float((on_grid > 0.5).sum()))
        if CARRIED_MASK_VOLUME[0] <= ratio <= CARRIED_MASK_VOLUME[1]:
            on_grid = carried
        else:  # a head-to-head registration gone wrong: keep the affinely fitted template mask
            warnings = (f"{side} image: the brain mask carried onto the head has {ratio:.2f}x the fitted template "
                        "mask's volume; skull stripped with the template mask instead (check qc.png)",)
    mask = on_grid > 0.5
    return replace(prepared, **{f"{side}_g": normalised(head * mask, settings)}, brain_mask_g=mask, warnings=warnings)


def native_brain_mask(stripped: PreparedPair, side: str, head: Volume) -> np.ndarray:
    """The brain mask ``stripped``'s ``side`` head was stripped with on the model grid
    (:func:`strip_for_network`), carried back onto the head's own voxels (``head``: that image):
    the brain fraction of each voxel, float32."""
    transform = np.linalg.inv(stripped.matrix) if side == "moving" else None  # moving world -> fixed world
    return resample_to_grid(stripped.brain_mask_g.astype(np.float32), stripped.grid.affine, Grid(head.shape, head.affine),
                            world_transform=transform)


def _carried_mask(on_grid: np.ndarray, head: np.ndarray, template_head: np.ndarray, template_affine: np.ndarray,
                  transform: np.ndarray | None, prepared: PreparedPair, settings: PreprocessSettings,
                  register: GridRegister, refine_edge: bool) -> np.ndarray:
    """The template's brain fraction ``on_grid`` deformed with the template head onto ``head``
    (both on the model grid), its edge refined unless the template matches the head."""
    import torch

    from dccnn_deploy.metrics import ncc
    from dccnn_deploy.ops.morphology import dilate
    from dccnn_deploy.ops.warp import warp_gridsample
    from dccnn_deploy.preprocess.brain_mask import EDGE_BAND_MM, refine_brain_mask

    template_g = resample_to_grid(np.asarray(template_head, dtype=np.float32), template_affine, prepared.grid,
                                  world_transform=transform)
    template_g = normalised(template_g, settings)
    forward = register(template_g, head)
    on_grid = warp_gridsample(torch.from_numpy(on_grid)[None, None], forward, padding="zeros")[0, 0].numpy()
    if not refine_edge:
        return on_grid
    deformed = warp_gridsample(torch.from_numpy(template_g)[None, None], forward)[0, 0].numpy()
    around = dilate(torch.from_numpy(on_grid > 0.5), 3).numpy()
    if ncc(deformed, head, around) >= TEMPLATE_MATCH_NCC:
        return on_grid
    return refine_brain_mask(on_grid, head, max(1, round(EDGE_BAND_MM / settings.spacing_mm)))
