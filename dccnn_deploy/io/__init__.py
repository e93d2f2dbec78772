"""The I/O layer: the only place files are read or written.

Volumes (NIfTI/MGH) with validation and one-line :class:`InputError` messages, atomic
no-clobber output, ITK/ANTs displacement-field and affine interop, and background writes.
The names below load their submodule on first use (PEP 562), so the nibabel-free parts
(``errors``, ``atomic``: what checkpoints need) import on machines without nibabel.
"""

from dccnn_deploy.io.errors import InputError, OutputExistsError
from dccnn_deploy.io.atomic import atomic_write, check_outputs_free

_LAZY = {
    "Volume": "image",
    "as_volume": "image",
    "load_volume": "image",
    "save_image": "nifti",
    "save_volume": "nifti",
    "volume_image": "nifti",
    "itk_displacement_image": "itk_transforms",
    "load_itk_affine": "itk_transforms",
    "load_itk_composite": "itk_transforms",
    "load_itk_displacement": "itk_transforms",
    "save_itk_affine": "itk_transforms",
    "save_itk_composite": "itk_transforms",
    "save_itk_displacement": "itk_transforms",
    "voxel_displacement_to_world": "itk_transforms",
    "world_to_voxel_displacement": "itk_transforms",
    "BackgroundWriter": "writer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"dccnn_deploy.io.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dccnn_deploy.io' has no attribute {name!r}")


__all__ = ["InputError", "OutputExistsError", "atomic_write", "check_outputs_free", *_LAZY]
