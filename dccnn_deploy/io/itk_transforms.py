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
* Composite files (``.h5``, ITK ``HDF5TransformIO``, as ``antsRegistration`` writes
  ``Composite.h5``): ``/TransformGroup/0`` is ``CompositeTransform_double_3_3``, then one group per
  transform in ITK's queue order (the LAST is applied FIRST to a point), each with
  ``TransformType``, ``TransformParameters`` and ``TransformFixedParameters``. An affine has the
  12 + 3 parameters above; a ``DisplacementFieldTransform_float_3_3`` has the LPS-mm vectors of
  its field flattened with x fastest, and 18 fixed parameters: size (3), origin (3, LPS),
  spacing (3), direction (9, LPS, row-major). Outside its grid a field displaces by zero.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import nibabel as nib
import numpy as np

try:  # ISA-L's zlib streams: the deflate format HDF5's gzip filter reads, compressed ~5x faster
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is a dependency; zlib keeps working without it
    import zlib as _zlib

from dccnn_deploy.io.atomic import atomic_write
from dccnn_deploy.io.errors import InputError
from dccnn_deploy.io.image import check_affine, voxel_spacing
from dccnn_deploy.io.nifti import GZIP_LEVEL, nifti_image, open_image, read_array, save_image

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
    return save_image(path, itk_displacement_image(disp_ras_mm, affine), overwrite)


def _checked_field(disp_ras_mm: np.ndarray) -> np.ndarray:
    disp = np.asarray(disp_ras_mm, dtype=np.float32)
    if disp.ndim != 4 or disp.shape[-1] != 3:
        raise ValueError(f"expected a (D, H, W, 3) displacement, got shape {disp.shape}")
    return disp


def itk_displacement_image(disp_mm: np.ndarray, affine: np.ndarray, lps: bool = False) -> nib.Nifti1Image:
    """The NIfTI image :func:`save_itk_displacement` writes, in memory (X x Y x Z x 1 x 3, LPS).

    ``disp_mm`` ``(D, H, W, 3)``: RAS mm, or already LPS with ``lps`` (kept as it is: no copy)."""
    disp = _checked_field(disp_mm)
    img = nifti_image((disp if lps else _flip_ras_lps(disp))[:, :, :, None, :], affine)
    img.header.set_intent("vector")
    return img


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
    """MATLAB v4, as ITK's MatlabTransformIO (and ANTs) write it: per variable a header of five
    little-endian int32 (type 0 = double full matrix, rows, columns, no imaginary part, name
    length with its NUL), the name, then the values as float64 in column order. Written here
    (the same bytes as ``scipy.io.savemat(..., format="4")``): importing scipy.io costs ~0.2 s."""
    with open(path, "wb") as f:
        for name, values in ((AFFINE_TYPE, params), ("fixed", np.zeros(3))):
            column = np.asarray(values, dtype="<f8").reshape(-1)
            label = name.encode("ascii") + b"\0"
            f.write(np.array([0, column.size, 1, 0, len(label)], dtype="<i4").tobytes() + label + column.tobytes())


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
        from scipy.io import loadmat

        content = loadmat(path)
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


# --- composite transforms (.h5) ----------------------------------------------------------------

COMPOSITE_TYPE = "CompositeTransform_double_3_3"
FIELD_TYPE = "DisplacementFieldTransform_float_3_3"
#: elements per HDF5 chunk of a field's parameters (1 MiB of float32), compressed in parallel
FIELD_CHUNK = 1 << 18
#: One step of a composite: a 4x4 RAS fixed->moving matrix, or a field ``(disp_ras_mm, grid_affine)``.
CompositeStep = Union[np.ndarray, tuple[np.ndarray, np.ndarray]]


def _itk_grid_parameters(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """ITK image geometry of a NIfTI grid: size, origin, spacing, direction (LPS), 18 values."""
    a = _FLIP4 @ np.asarray(affine, dtype=np.float64)
    spacing = voxel_spacing(affine)
    return np.concatenate([np.asarray(shape[:3], np.float64), a[:3, 3], spacing, (a[:3, :3] / spacing).ravel()])


def _itk_field_parameters(disp: np.ndarray) -> np.ndarray:
    """A ``(D, H, W, 3)`` RAS field as ITK's flat LPS vectors, x fastest: the values of
    ``_flip_ras_lps(disp).transpose(2, 1, 0, 3).ravel()``, built one component at a time (a
    Fortran-ordered field, as the pipeline makes them, is read contiguously; ~10x faster)."""
    out = np.empty((disp.shape[0] * disp.shape[1] * disp.shape[2], 3), dtype=np.float32)
    for k, sign in enumerate(np.diag(_FLIP4)[:3]):
        np.multiply(disp[..., k].ravel(order="F"), np.float32(sign), out=out[:, k])
    return out.ravel()


def _composite_groups(steps: Sequence[CompositeStep]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    groups = []
    for step in steps:
        if isinstance(step, tuple):
            disp, affine = step
            disp = _checked_field(disp)
            groups.append((FIELD_TYPE, _itk_field_parameters(disp), _itk_grid_parameters(disp.shape, affine)))
        else:
            groups.append((AFFINE_TYPE, _ras_to_itk_params(step), np.zeros(3)))
    return groups


def _shuffled_deflate(chunk: np.ndarray) -> bytes:
    """One chunk as HDF5's shuffle then deflate filters store it: a zlib stream (ISA-L) of the
    bytes regrouped by significance (all first bytes, then all second bytes, ...)."""
    return _zlib.compress(chunk.view(np.uint8).reshape(-1, chunk.itemsize).T.tobytes(), GZIP_LEVEL)


def _write_compressed(group, name: str, data: np.ndarray) -> None:
    """A 1-D dataset with HDF5's standard shuffle + gzip filters (what ITK and h5py read), its
    chunks compressed by ISA-L in threads (which release the GIL) and stored as they are
    (``write_direct_chunk``): the same content as h5py's own gzip, about 5x less CPU."""
    from concurrent.futures import ThreadPoolExecutor

    from dccnn_deploy.io.writer import default_workers  # the writer imports this module

    n = data.size
    size = max(1, min(FIELD_CHUNK, n))
    dset = group.create_dataset(name, shape=(n,), dtype=data.dtype, chunks=(size,), compression="gzip",
                                compression_opts=GZIP_LEVEL, shuffle=True)

    def chunk(start: int) -> np.ndarray:
        part = data[start : start + size]
        return part if part.size == size else np.concatenate([part, np.zeros(size - part.size, data.dtype)])

    starts = range(0, n, size)
    with ThreadPoolExecutor(default_workers(), thread_name_prefix="dccnn-h5") as pool:
        for start, blob in zip(starts, pool.map(lambda s: _shuffled_deflate(chunk(s)), starts)):
            dset.id.write_direct_chunk((start,), blob)


def save_itk_composite(path: str | os.PathLike, steps: Sequence[CompositeStep], overwrite: bool = False) -> Path:
    """Write an ITK HDF5 composite transform (fixed -> moving points, as resampling uses it).

    ``steps`` in ITK's queue order: the last is applied first. Each is a 4x4 RAS matrix (an
    ``AffineTransform_double_3_3``) or ``(disp_ras_mm (D, H, W, 3), grid_affine)`` (a
    displacement field on that grid, stored float32 and gzip-compressed).
    """
    import h5py  # only this writer needs it

    groups = _composite_groups(steps)
    text = h5py.string_dtype("ascii")

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("HDFVersion", data=[h5py.version.hdf5_version.encode()], dtype=text)
            root = f.create_group("TransformGroup")
            root.create_group("0").create_dataset("TransformType", data=[COMPOSITE_TYPE.encode()], dtype=text)
            for i, (kind, params, fixed) in enumerate(groups, start=1):
                g = root.create_group(str(i))
                g.create_dataset("TransformType", data=[kind.encode()], dtype=text)
                if kind == FIELD_TYPE:
                    _write_compressed(g, "TransformParameters", params.astype(np.float32))
                else:
                    g.create_dataset("TransformParameters", data=params.astype(np.float64))
                g.create_dataset("TransformFixedParameters", data=fixed.astype(np.float64))

    return atomic_write(path, write, overwrite)


_FIELD_TYPES = ("DisplacementFieldTransform_float_3_3", "DisplacementFieldTransform_double_3_3")


def _ras_grid_affine(fixed: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """Inverse of :func:`_itk_grid_parameters`: 18 ITK values -> (shape, NIfTI RAS affine)."""
    shape = tuple(int(round(v)) for v in fixed[:3])
    lps = np.eye(4)
    lps[:3, :3] = fixed[9:18].reshape(3, 3) * fixed[6:9]
    lps[:3, 3] = fixed[3:6]
    return shape, _FLIP4 @ lps


def load_itk_composite(path: str | os.PathLike) -> list[CompositeStep]:
    """Read an ITK HDF5 transform (a composite of affines and displacement fields, or one of them).

    Returns the steps in ITK's queue order (the last is applied first), in the form
    :func:`save_itk_composite` takes. Other transform types raise :class:`InputError`.
    """
    import h5py

    p = Path(path)
    if not p.is_file():
        raise InputError.at(p, "no such file")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise InputError.at(p, f"not an HDF5 transform file ({exc})") from None
    with f:
        if "TransformGroup" not in f:
            raise InputError.at(p, "no TransformGroup: not an ITK HDF5 transform")
        group = f["TransformGroup"]
        keys = sorted(group, key=int)
        kinds = [group[k]["TransformType"][0].decode() for k in keys]
        if kinds and kinds[0].startswith("CompositeTransform"):
            keys, kinds = keys[1:], kinds[1:]
        steps: list[CompositeStep] = []
        for key, kind in zip(keys, kinds):
            g = group[key]
            params, fixed = np.asarray(g["TransformParameters"][()]), np.asarray(g["TransformFixedParameters"][()])
            if kind in _AFFINE_TYPES:
                steps.append(_itk_params_to_ras(_checked(params, 12, "parameters", p), _checked(fixed, 3, "fixed parameters", p)))
            elif kind in _FIELD_TYPES:
                shape, affine = _ras_grid_affine(_checked(fixed, 18, "fixed parameters", p))
                vectors = _checked(params, int(np.prod(shape)) * 3, "field parameters", p)
                disp = vectors.reshape(shape[2], shape[1], shape[0], 3).transpose(2, 1, 0, 3)
                steps.append((_flip_ras_lps(disp).astype(np.float32), affine))
            else:
                raise InputError.at(p, f"unsupported transform {kind!r} (affines and displacement fields only)")
    if not steps:
        raise InputError.at(p, "no transform in the file")
    return steps
