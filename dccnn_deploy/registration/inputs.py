"""What the Python API accepts as an image: a path, a nibabel image, ``(array, affine)`` or a Volume."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np

from dccnn_deploy.io import InputError, Volume, as_volume, load_volume

if TYPE_CHECKING:
    import nibabel as nib

#: An image given to :func:`dccnn_deploy.register` or :meth:`RegistrationResult.apply`.
ImageLike = Union[str, os.PathLike, "nib.spatialimages.SpatialImage", tuple[np.ndarray, np.ndarray], Volume]


def to_volume(image: Any, kind: Literal["image", "labels"] = "image", name: str = "image") -> Volume:
    """Validate ``image`` as a :class:`Volume` (float32 image or int32 labels, RAS affine).

    ``name`` labels in-memory inputs in error messages (files are named by their path).
    """
    if isinstance(image, Volume):
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_volume(image, kind=kind)
    if isinstance(image, tuple) and len(image) == 2:
        data, affine = image
        return as_volume(np.asarray(data), np.asarray(affine), f"<{name} array>", kind)
    if hasattr(image, "dataobj") and hasattr(image, "affine"):  # any nibabel spatial image
        label = image.get_filename() if hasattr(image, "get_filename") and image.get_filename() else f"<{name}>"
        if image.affine is None:
            raise InputError.at(label, "image has no affine")
        return as_volume(np.asarray(image.dataobj), image.affine, label, kind)
    raise InputError(
        f"{name}: expected a file path, a nibabel image or an (array, affine) pair, got {type(image).__name__}"
    )
