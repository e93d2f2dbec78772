"""Loading and validating 3-D MRI volumes (``.nii``, ``.nii.gz``, ``.mgz``, ``.mgh``).

A :class:`Volume` is the array in file order (array axis k = voxel index k of the affine)
plus the 4x4 voxel -> RAS mm affine. Images are float32; label maps are int32.
Every problem with an input file raises :class:`~dccnn_deploy.io.errors.InputError`
with a one-line message that names the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dccnn_deploy.io.errors import InputError
from dccnn_deploy.io.nifti import open_image, read_array

Kind = Literal["image", "labels"]


@dataclass
class Volume:
    """A 3-D volume: ``data`` (float32 image or int32 labels) and its voxel->RAS ``affine``."""

    data: np.ndarray
    affine: np.ndarray
    path: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis (norms of the affine's columns)."""
        return voxel_spacing(self.affine)


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Norms of the first three columns of ``affine`` (mm per voxel along each axis)."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def check_affine(affine: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Return ``affine`` as float64 4x4; :class:`InputError` if non-finite, zero-size or singular."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise InputError.at(path, "invalid voxel-to-world affine (non-finite values)")
    spacing = voxel_spacing(a)
    if not (spacing > 0).all():
        raise InputError.at(path, f"zero voxel size in the affine (spacing {np.round(spacing, 4).tolist()})")
    if abs(np.linalg.det(a[:3, :3] / spacing)) < 1e-6:
        raise InputError.at(path, "singular voxel-to-world affine (degenerate axes)")
    return a


def spatial_shape(shape: tuple[int, ...], path: str | os.PathLike) -> tuple[int, int, int]:
    """The 3-D shape of a 3-D (or single-volume 4-D) image; :class:`InputError` otherwise."""
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) < 3 or (len(shape) == 3 and min(shape) < 2):
        raise InputError.at(path, f"2-D image (shape {tuple(shape)}), a 3-D volume is required")
    if len(shape) == 4:
        raise InputError.at(path, f"4-D image with {shape[3]} volumes (shape {shape}), expected one 3-D volume")
    if len(shape) > 4:
        raise InputError.at(path, f"{len(shape)}-D image (shape {tuple(shape)}), expected one 3-D volume")
    return tuple(int(n) for n in shape)


def _as_labels(data: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Integer label map (int32); float files must hold (near-)integer values."""
    if np.issubdtype(data.dtype, np.integer):
        values = data
    else:
        values = np.rint(data.astype(np.float64))
        if np.abs(values - data).max(initial=0.0) > 1e-3:
            raise InputError.at(path, "label map has non-integer values")
    info = np.iinfo(np.int32)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise InputError.at(path, "label values do not fit in int32")
    return values.astype(np.int32)


def load_volume(path: str | os.PathLike, kind: Kind = "image") -> Volume:
    """Load and validate a 3-D image (float32) or label map (int32).

    Raises :class:`InputError` for a missing, unsupported, unreadable or truncated file, a
    2-D/4-D(several volumes)/5-D image, NaN/Inf values, an all-zero image (``kind="image"``),
    non-integer labels, and a non-finite, zero-size or singular affine.
    """
    if kind not in ("image", "labels"):
        raise ValueError(f"kind must be 'image' or 'labels', got {kind!r}")
    img = open_image(path)
    shape = spatial_shape(tuple(img.shape), path)
    affine = check_affine(img.affine, path)
    data = read_array(img, path, np.float32 if kind == "image" else None)
    return as_volume(data.reshape(shape), affine, path, kind)


def as_volume(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike, kind: Kind = "image") -> Volume:
    """Validate an in-memory array + affine as :func:`load_volume` does (``path`` names it in errors)."""
    if kind not in ("image", "labels"):
        raise ValueError(f"kind must be 'image' or 'labels', got {kind!r}")
    data = np.asarray(data)
    data = data.reshape(spatial_shape(tuple(data.shape), path))
    affine = check_affine(affine, path)
    if not np.issubdtype(data.dtype, np.number) and data.dtype != bool:
        raise InputError.at(path, f"image data of type {data.dtype} is not numeric")
    if not np.isfinite(data).all():
        raise InputError.at(path, "image contains NaN or Inf values")
    if kind == "labels":
        data = _as_labels(data, path)
    else:
        data = data.astype(np.float32, copy=False)
        if not data.any():
            raise InputError.at(path, "image is all zeros")
    return Volume(data=data, affine=affine, path=os.fspath(path))
