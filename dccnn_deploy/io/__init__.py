"""The I/O layer: the only place files are read or written.

Volumes (NIfTI/MGH) with validation and one-line :class:`InputError` messages, atomic
no-clobber output, and ITK/ANTs displacement-field and affine interop.
"""

from dccnn_deploy.io.errors import InputError, OutputExistsError
from dccnn_deploy.io.atomic import atomic_write, check_outputs_free
from dccnn_deploy.io.image import Volume, as_volume, load_volume
from dccnn_deploy.io.nifti import save_image, save_volume, volume_image
from dccnn_deploy.io.itk_transforms import (
    load_itk_affine,
    itk_displacement_image,
    load_itk_composite,
    load_itk_displacement,
    save_itk_affine,
    save_itk_composite,
    save_itk_displacement,
    voxel_displacement_to_world,
    world_to_voxel_displacement,
)

__all__ = [
    "InputError",
    "OutputExistsError",
    "atomic_write",
    "check_outputs_free",
    "Volume",
    "as_volume",
    "load_volume",
    "save_image",
    "save_volume",
    "volume_image",
    "itk_displacement_image",
    "save_itk_composite",
    "load_itk_composite",
    "load_itk_affine",
    "load_itk_displacement",
    "save_itk_affine",
    "save_itk_displacement",
    "voxel_displacement_to_world",
    "world_to_voxel_displacement",
]
