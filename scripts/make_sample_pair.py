"""Build the bundled demo pair (dccnn_deploy/data/sample) from the fetched real brains.

usage: python scripts/make_sample_pair.py [BRAINS_DIR]
Colin27 brain (mricron-data, BSD-3) and the ICBM 2009a brain template (nilearn, BSD; MNI
licence: free use with the copyright notice), each resampled to 2 mm RAS over its brain's
bounding box and stored as uint8. Colin27's header is then moved by a rigid transform
(12 degrees about an oblique axis, 14 mm shift), as a scanner-space image would be, so the
demo exercises the affine pre-alignment too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from dccnn_deploy.io import load_volume, save_volume
from dccnn_deploy.preprocess.grid import bounding_grid, resample_to_grid
from dccnn_deploy.preprocess.intensity import normalise_intensity

SOURCES = {
    "colin27_brain_2mm.nii.gz": "mricron/ch2bet.nii.gz",
    "icbm2009a_brain_2mm.nii.gz": "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
}
MOVED_HEADER = "colin27_brain_2mm.nii.gz"
OUT = Path(__file__).resolve().parents[1] / "dccnn_deploy" / "data" / "sample"


def scanner_motion() -> np.ndarray:
    """A rigid world transform: 12 degrees about (1, 2, 0.5), translation (8, -10, 6) mm."""
    axis = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(12.0)
    m = np.eye(4)
    m[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    m[:3, 3] = [8.0, -10.0, 6.0]
    return m


def main(brains: Path) -> None:
    for name, rel in SOURCES.items():
        vol = load_volume(brains / rel)
        idx = np.argwhere(vol.data > 0)
        corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], float)
        lo, hi = idx.min(0), idx.max(0)
        world = (vol.affine[:3, :3] @ (lo + corners * (hi - lo)).T).T + vol.affine[:3, 3]
        grid = bounding_grid(world, 2.0, margin_mm=6.0)
        data = normalise_intensity(resample_to_grid(vol.data, vol.affine, grid))
        affine = scanner_motion() @ grid.affine if name == MOVED_HEADER else grid.affine
        save_volume(OUT / name, np.rint(data * 255).astype(np.uint8), affine, overwrite=True)
        print(name, grid.shape, (OUT / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.home() / ".cache/dccnn/brains")
