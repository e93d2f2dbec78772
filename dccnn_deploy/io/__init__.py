"""The I/O layer: the only place files are read or written.

Volumes (NIfTI/MGH) with validation and one-line :class:`InputError` messages, atomic
no-clobber output, and ITK/ANTs displacement-field and affine interop.
"""

from dccnn_deploy.io.errors import InputError, OutputExistsError
from dccnn_deploy.io.atomic import atomic_write, check_outputs_free
from dccnn_deploy.io.image import Volume, load_volume
from dccnn_deploy.io.nifti import save_volume
from dccnn_deploy.io.itk_transforms import (
    load_itk_affine,
    load_itk_displacement,
    save_itk_affine,
    save_itk_displacement,
    voxel_displacement_to_world,
    world_to_voxel_displacement,
)
from dccnn_deploy.io.writer import BackgroundWriter

__all__ = [
    "BackgroundWriter",
    "InputError",
    "OutputExistsError",
    "atomic_write",
    "check_outputs_free",
    "Volume",
    "load_volume",
    "save_volume",
    "load_itk_affine",
    "load_itk_displacement",
    "save_itk_affine",
    "save_itk_displacement",
    "voxel_displacement_to_world",
    "world_to_voxel_displacement",
]
