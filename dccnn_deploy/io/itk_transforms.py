"""ITK / ANTs interoperability: displacement fields and affine transforms.

Conventions
-----------
* Our fields are ``(3, D, H, W)`` in voxel units of their grid (channel k displaces array
  axis k, see :mod:`dccnn_deploy.ops.warp`). With the grid's voxel->RAS affine ``A`` the
  world displacement is ``A[:3, :3] @ u`` (RAS mm), stored here as ``(D, H, W, 3)``.
* ITK/ANTs work in LPS world mm: ``LPS = diag(-1, -1, 1) RAS``.
* An ITK transform maps points of the FIXED (output) space to the MOVING (input) space:
  resampling gives ``out(x) = moving(T(x))`` - the same pull-back as our ``warp``.
* Displacement field files (as ANTs writes them): NIfTI, shape ``X x Y x Z x 1 x 3``,
  float32, intent code 1007 (``NIFTI_INTENT_VECTOR``), vectors in LPS mm; the header affine is
  the ordinary NIfTI (RAS) affine of the fixed grid - ITK converts it to LPS itself.
  ``T(x) = x + d(x)``. On reading, intent 1006 (``NIFTI_INTENT_DISPVECT``) is also accepted;
  its vectors are taken as RAS, as ITK >= 5.4 does (it flips them to LPS when reading).
* Affine files: ``AffineTransform_double_3_3`` in LPS mm, either ITK text
  (``#Insight Transform File V1.0``; ``.txt``/``.tfm``) or MATLAB v4 ``.mat`` as ANTs writes it
  (``AffineTransform_double_3_3``: 12x1 = 9 matrix entries row-major + translation;
  ``fixed``: 3x1 centre ``c``). The point map is ``T(x) = M (x - c) + t + c``. Our side is a
  4x4 RAS matrix mapping fixed-space points to moving-space points.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import scipy.io

from dccnn_deploy.io.atomic import atomic_write
from dccnn_deploy.io.errors import InputError
from dccnn_deploy.io.image import check_affine
from dccnn_deploy.io.nifti import nifti_image, open_image, read_array, write_image

INTENT_DISPVECT, INTENT_VECTOR = 1006, 1007
_FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])
AFFINE_TYPE = "AffineTransform_double_3_3"
_AFFINE_TYPES = (AFFINE_TYPE, "AffineTransform_float_3_3",
                 "MatrixOffsetTransformBase_double_3_3", "MatrixOffsetTransformBase_float_3_3")
_TEXT_SUFFIXES = (".txt", ".tfm")


# --- displacement fields ---------------------------------------------------------------------

def voxel_displacement_to_world(disp_vox: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(3, D, H, W)`` voxel displacement on a grid with ``affine`` -> ``(D, H, W, 3)`` RAS mm."""
    disp_vox = np.asarray(disp_vox)
    if disp_vox.ndim != 4 or disp_vox.shape[0] != 3:
        raise ValueError(f"expected a (3, D, H, W) displacement, got shape {disp_vox.shape}")
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    return np.einsum("ij,j...->...i", linear, disp_vox).astype(np.float32)


def world_to_voxel_displacement(disp_world: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`voxel_displacement_to_world`: ``(D, H, W, 3)`` RAS mm -> ``(3, D, H, W)``."""
    disp_world = np.asarray(disp_world)
    if disp_world.ndim != 4 or disp_world.shape[-1] != 3:
        raise ValueError(f"expected a (D, H, W, 3) displacement, got shape {disp_world.shape}")
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64)[:3, :3])
    return np.einsum("ij,...j->i...", inverse, disp_world).astype(np.float32)


def _flip_ras_lps(vectors: np.ndarray) -> np.ndarray:
    """RAS <-> LPS for vectors on the last axis (its own inverse)."""
    return vectors * np.array([-1.0, -1.0, 1.0], dtype=vectors.dtype)


def save_itk_displacement(
    path: str | os.PathLike, disp_ras_mm: np.ndarray, affine: np.ndarray, overwrite: bool = False
) -> Path:
    """Write a ``(D, H, W, 3)`` RAS-mm displacement on the grid ``affine`` as an ITK/ANTs field."""
    disp = np.asarray(disp_ras_mm, dtype=np.float32)
    if disp.ndim != 4 or disp.shape[-1] != 3:
        raise ValueError(f"expected a (D, H, W, 3) displacement, got shape {disp.shape}")
    img = nifti_image(_flip_ras_lps(disp)[:, :, :, None, :], affine)
    img.header.set_intent("vector")
    return atomic_write(path, lambda tmp: write_image(img, tmp), overwrite)


def load_itk_displacement(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an ITK/ANTs displacement field: ``(disp_ras_mm (D, H, W, 3) float32, affine 4x4)``."""
    img = open_image(path)
    if not isinstance(img, nib.Nifti1Image):
        raise InputError.at(path, "displacement fields must be NIfTI (.nii/.nii.gz)")
    shape = tuple(img.shape)
    if len(shape) != 5 or shape[3:] != (1, 3):
        raise InputError.at(
            path, f"not an ITK displacement field (shape {shape}, expected X x Y x Z x 1 x 3)"
        )
    intent = int(img.header["intent_code"])
    if intent not in (INTENT_VECTOR, INTENT_DISPVECT):
        raise InputError.at(
            path, f"not an ITK displacement field (NIfTI intent code {intent}, expected 1007 or 1006)"
        )
    affine = check_affine(img.affine, path)
    data = read_array(img, path)[:, :, :, 0, :].astype(np.float32)
    if not np.isfinite(data).all():
        raise InputError.at(path, "displacement field contains NaN or Inf values")
    return (_flip_ras_lps(data) if intent == INTENT_VECTOR else data), affine


# --- affine transforms -----------------------------------------------------------------------

def _ras_to_itk_params(matrix_ras: np.ndarray) -> np.ndarray:
    """4x4 RAS fixed->moving matrix -> 12 ITK parameters (LPS matrix row-major, translation)."""
    m = np.asarray(matrix_ras, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise ValueError("expected a finite 4x4 matrix")
    lps = _FLIP4 @ m @ _FLIP4
    return np.concatenate([lps[:3, :3].ravel(), lps[:3, 3]])


def _itk_params_to_ras(params: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """12 ITK parameters + centre (LPS) -> 4x4 RAS fixed->moving matrix."""
    linear = params[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = linear
    lps[:3, 3] = params[9:12] + centre - linear @ centre
    return _FLIP4 @ lps @ _FLIP4


def _affine_kind(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    if name.endswith(_TEXT_SUFFIXES):
        return "text"
    if name.endswith(".mat"):
        return "mat"
    raise InputError.at(path, "unsupported transform file type (expected .txt, .tfm or .mat)")


def _write_text(path: Path, params: np.ndarray) -> None:
    numbers = " ".join(repr(float(v)) for v in params)
    path.write_text(f"#Insight Transform File V1.0\n#Transform 0\nTransform: {AFFINE_TYPE}\n"
                    f"Parameters: {numbers}\nFixedParameters: 0 0 0\n")


def _write_mat(path: Path, params: np.ndarray) -> None:
    """MATLAB v4, as ITK's MatlabTransformIO (and ANTs) write it."""
    with open(path, "wb") as f:
        scipy.io.savemat(f, {AFFINE_TYPE: params.reshape(12, 1), "fixed": np.zeros((3, 1))}, format="4")


def save_itk_affine(path: str | os.PathLike, matrix_ras: np.ndarray, overwrite: bool = False) -> Path:
    """Write a 4x4 RAS fixed->moving matrix as an ITK affine (``.txt``/``.tfm`` text or ``.mat``)."""
    write = _write_text if _affine_kind(path) == "text" else _write_mat
    params = _ras_to_itk_params(matrix_ras)
    return atomic_write(path, lambda tmp: write(tmp, params), overwrite)


def _checked(values, count: int, what: str, path) -> np.ndarray:
    """``values`` as ``count`` finite float64 numbers, else :class:`InputError`."""
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise InputError.at(path, f"bad {what} in ITK transform ({exc})") from exc
    if array.size != count or not np.isfinite(array).all():
        raise InputError.at(path, f"expected {count} finite {what} in ITK transform, got {array.size}")
    return array


def _read_text(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError.at(path, f"cannot read ITK transform ({exc})") from exc
    fields: dict[str, list[str]] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields.setdefault(key.strip(), []).append(value.strip())
    types = fields.get("Transform", [])
    if len(types) != 1 or types[0] not in _AFFINE_TYPES:
        raise InputError.at(path, f"expected one 3-D affine ITK transform, found {types or 'none'}")
    params = _checked(fields.get("Parameters", [""])[0].split(), 12, "Parameters", path)
    centre = _checked(fields.get("FixedParameters", ["0 0 0"])[0].split(), 3, "FixedParameters", path)
    return params, centre


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        content = scipy.io.loadmat(path)
    except Exception as exc:
        raise InputError.at(path, f"not a MATLAB transform file ({exc})") from exc
    keys = [k for k in _AFFINE_TYPES if k in content]
    if not keys:
        names = sorted(k for k in content if not k.startswith("__"))
        raise InputError.at(path, f"no 3-D affine ITK transform in .mat (variables {names})")
    params = _checked(content[keys[0]], 12, "parameters", path)
    centre = _checked(content.get("fixed", np.zeros(3)), 3, "fixed parameters", path)
    return params, centre


def load_itk_affine(path: str | os.PathLike) -> np.ndarray:
    """Read an ITK/ANTs affine (``.txt``/``.tfm``/``.mat``) as a 4x4 RAS fixed->moving matrix."""
    p = Path(path)
    kind = _affine_kind(p)
    if not p.is_file():
        raise InputError.at(p, "no such file")
    params, centre = _read_text(p) if kind == "text" else _read_mat(p)
    return _itk_params_to_ras(params, centre)
