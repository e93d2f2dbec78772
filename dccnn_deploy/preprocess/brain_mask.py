"""Is there a skull? and a brain mask for a head, from the bundled template head and its mask.

A skull-stripped brain holds about 1.1-1.9 L of tissue, a head with skull (scalp, skull, neck)
about 3-5 L, so the volume brighter than a tenth of the robust intensity range tells them apart
(measured on Colin27, ICBM 2009c T1/T2, ROBEX's and pycortex S1's heads: brains 1.7-1.9 L,
heads 2.9-4.5 L; the threshold is 2.4 L). A head's brain mask is the bundled ICBM 2009c brain
mask (dccnn_deploy/data/template, 3 mm) carried through an affine registration of the template
head to the image (mutual information, so a T2 head works too), fitted a second time on the head's
voxels near the first fit's brain only. That mask is only as good as an
affine fit of another anatomy (brain-mask Dice about 0.9); enough to stop the skull from pulling
a brain into the shape of a head. The pipeline then deforms the template head onto the head and
moves the mask's edge onto the image's own brain edge (:func:`refine_brain_mask`), as ANTs'
``antsBrainExtraction.sh`` refines its template mask with a tissue segmentation.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from dccnn_deploy.io.image import voxel_spacing
from dccnn_deploy.preprocess.grid import Grid, resample_to_grid

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "data" / "template"
TEMPLATE_HEAD = "icbm2009c_t1_head_3mm.nii.gz"
#: the template's T2 head (same grid): deformed onto a T2 head in place of the T1 head, whose
#: contrast the network does not translate (synthetic ICBM T2 head -> ICBM brain: docs/benchmarks.md)
TEMPLATE_T2_HEAD = "icbm2009c_t2_head_3mm.nii.gz"
TEMPLATE_MASK = "icbm2009c_brain_mask_3mm.nii.gz"
HEAD_LITRES = 2.4  # tissue volume above which an image is a head with skull
#: half-width (mm) of the shell around a carried brain mask's edge that :func:`refine_brain_mask`
#: re-decides (Colin27 head on the 2 mm model grid: mask Dice against its BET mask 0.963 -> 0.977
#: at 4 mm, 0.974 at 2 mm, 0.975 at 6 mm; docs/method.md)
EDGE_BAND_MM = 4.0
#: smoothing (voxels) of the re-decided mask before it is thresholded: no one-voxel spurs
EDGE_SMOOTHING = 0.7
#: intensity bins of the inner and outer shells' histograms
EDGE_BINS = 32
#: an intensity bin holding less than this share of the inner shell is not brain (bright CSF in a
#: T2 head that neither shell samples well)
EDGE_RARE = 0.01
TISSUE_LEVEL = 0.1  # "tissue": above this fraction of the robust [0, 1] intensity range

#: the second template fit reads only the head's voxels within this distance (mm) of the first fit's
#: brain mask: the face, neck and shoulders, which the template does not share with every head, no
#: longer pull the fit (ROBEX's head at 1.5 mm: carried mask Dice against its own mask 0.842 ->
#: 0.898 / 0.917 / 0.912 / 0.928 at 6 / 10 / 15 / 20 mm; Colin27 0.943 -> 0.936-0.941; final head <->
#: brain Dice ROBEX +0.06-0.08, Colin27 / ICBM within 0.0003; docs/benchmarks.md)
TEMPLATE_REGION_MM = 20.0

# template head + affine, image (D, H, W) in [0, 1] + affine, and a region of the image's voxels
# (bool, same shape) or None -> 4x4 image world -> template world
Register = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


def tissue_litres(normalised: np.ndarray, affine: np.ndarray) -> float:
    """Volume (litres) of the voxels of a ``[0, 1]`` image above :data:`TISSUE_LEVEL`."""
    voxel_ml = float(np.prod(voxel_spacing(affine))) / 1000.0
    return float(np.count_nonzero(np.asarray(normalised) > TISSUE_LEVEL)) * voxel_ml / 1000.0


def has_skull(normalised: np.ndarray, affine: np.ndarray) -> bool:
    """Whether a ``[0, 1]`` image shows a head with skull rather than a skull-stripped brain."""
    return tissue_litres(normalised, affine) > HEAD_LITRES


@lru_cache(maxsize=1)
def load_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bundled template: head in ``[0, 1]``, brain fraction in ``[0, 1]`` (float32), affine."""
    import nibabel as nib

    head = nib.load(str(TEMPLATE_DIR / TEMPLATE_HEAD))
    mask = nib.load(str(TEMPLATE_DIR / TEMPLATE_MASK))
    return _to_unit(head), _to_unit(mask), np.asarray(head.affine, dtype=np.float64)


@lru_cache(maxsize=1)
def load_template_t2() -> np.ndarray:
    """The bundled template's T2 head in ``[0, 1]`` (float32), on :func:`load_template`'s grid."""
    import nibabel as nib

    return _to_unit(nib.load(str(TEMPLATE_DIR / TEMPLATE_T2_HEAD)))


def _to_unit(img) -> np.ndarray:
    return np.asarray(img.dataobj, dtype=np.float32) / 255.0


def template_brain_mask(normalised: np.ndarray, affine: np.ndarray, register: Register) -> np.ndarray:
    """Brain fraction ``[0, 1]`` (float32, the image's shape) of a head image in ``[0, 1]``.

    ``register(template, template_affine, image, image_affine, region)`` returns the image world ->
    template world matrix fitted on the image's voxels in ``region`` (None: all); the template's
    brain mask is sampled through it (trilinear).
    """
    return template_in_image_space(normalised, affine, register)[0]


def template_in_image_space(normalised: np.ndarray, affine: np.ndarray, register: Register
                            ) -> tuple[np.ndarray, np.ndarray]:
    """The template's brain fraction and head ``[0, 1]`` (float32, the image's shape) carried onto a
    head image through ``register`` (see :func:`template_brain_mask`): fitted on the whole image,
    then again on its voxels within :data:`TEMPLATE_REGION_MM` of the first fit's brain mask. The
    head is the template's T1 or T2 head, whichever correlates better with the image there."""
    head, mask, template_affine = load_template()
    grid = Grid(normalised.shape, affine)
    matrix = register(head, template_affine, normalised, affine, None)
    region = _around(resample_to_grid(mask, template_affine, grid, matrix) > 0.5, affine)
    matrix = register(head, template_affine, normalised, affine, region)
    head = _closer_head((head, load_template_t2()), mask, template_affine, normalised, affine, matrix)
    return resample_to_grid(mask, template_affine, grid, matrix), resample_to_grid(head, template_affine, grid, matrix)


def _closer_head(heads: tuple[np.ndarray, ...], mask: np.ndarray, template_affine: np.ndarray,
                 normalised: np.ndarray, affine: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Of the template's ``heads`` (on its grid), the one that correlates best with the image
    (through ``matrix``, image world -> template world) within :data:`TEMPLATE_REGION_MM` of the
    template's brain: compared on the template's own 3 mm grid, so only the chosen head is
    resampled onto the image's voxels."""
    from dccnn_deploy.metrics import ncc

    grid = Grid(mask.shape, template_affine)
    seen = resample_to_grid(normalised, affine, grid, world_transform=np.linalg.inv(matrix))
    around = _around(mask > 0.5, template_affine)
    return max(heads, key=lambda h: ncc(h, seen, around))


def _around(brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The voxels within :data:`TEMPLATE_REGION_MM` of ``brain`` (bool; ``affine``: its grid's)."""
    import torch

    from dccnn_deploy.ops.morphology import dilate

    radius = max(1, round(TEMPLATE_REGION_MM / float(np.mean(voxel_spacing(affine)))))
    return dilate(torch.from_numpy(brain), radius).numpy()


def refine_brain_mask(fraction: np.ndarray, image: np.ndarray, band_voxels: int) -> np.ndarray:
    """A carried brain mask (``fraction`` in ``[0, 1]``) moved onto ``image``'s own brain edge:
    the voxels within ``band_voxels`` of the mask's edge are re-decided by which of two intensity
    histograms they fit better: the mask's inner shell (``band_voxels`` to ``2 band_voxels + 1``
    inside the edge: brain) or its outer shell (as far outside: CSF, skull, scalp). The two are
    learnt from the image itself, so any contrast works (T1, T2); an intensity rare in the inner
    shell (:data:`EDGE_RARE`) is not brain. The result is smoothed, kept
    to its largest piece and its holes filled: a float32 0/1 mask of ``image``'s shape."""
    import torch
    from scipy import ndimage

    from dccnn_deploy.ops.smoothing import gaussian_smooth

    inside = np.asarray(fraction) > 0.5
    if not inside.any() or inside.all():
        return inside.astype(np.float32)
    depth = ndimage.distance_transform_edt(inside)  # inside: voxels to the edge
    height = ndimage.distance_transform_edt(~inside)  # outside: voxels to the edge
    inner = inside & (depth > band_voxels) & (depth <= 2 * band_voxels + 1)
    outer = ~inside & (height > band_voxels) & (height <= 2 * band_voxels + 1)
    unsure = np.where(inside, depth <= band_voxels, height <= band_voxels)
    values = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, EDGE_BINS + 1)
    p_in, p_out = (np.histogram(values[shell], edges)[0] / max(1, int(shell.sum())) for shell in (inner, outer))
    bins = np.clip((values * EDGE_BINS).astype(np.int64), 0, EDGE_BINS - 1)
    brain_like = p_in[bins] > np.maximum(p_out[bins], EDGE_RARE)  # not brain: what the brain rarely is
    decided = np.where(unsure, brain_like, inside).astype(np.float32)
    smooth = gaussian_smooth(torch.from_numpy(decided)[None, None], EDGE_SMOOTHING)[0, 0].numpy() > 0.5
    pieces, count = ndimage.label(smooth)
    if count > 1:
        sizes = np.bincount(pieces.ravel())[1:]
        smooth = pieces == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(smooth).astype(np.float32)

