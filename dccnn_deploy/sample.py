"""The bundled sample pair (``dccnn demo``): Colin27 moved in scanner space -> ICBM 2009a, 2 mm."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "sample"
SAMPLE_MOVING = SAMPLE_DIR / "colin27_brain_2mm.nii.gz"
SAMPLE_FIXED = SAMPLE_DIR / "icbm2009a_brain_2mm.nii.gz"


def sample_pair() -> tuple[Path, Path]:
    """``(moving, fixed)`` paths of the bundled pair (licences in ``SAMPLE_DIR / "LICENSE.txt"``)."""
    return SAMPLE_MOVING, SAMPLE_FIXED
