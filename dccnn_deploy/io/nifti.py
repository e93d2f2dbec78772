"""nibabel access: open/read with one-line errors, build NIfTI headers, save volumes atomically.

Supported files: ``.nii``, ``.nii.gz`` (NIfTI-1) and ``.mgz``/``.mgh`` (FreeSurfer MGH). The
affine is always nibabel's ``img.affine``: voxel index -> RAS world mm (sform, else qform).
Written NIfTI files carry the same affine in sform and qform (code 1, scanner) and mm units.

``.nii.gz`` files are compressed with ISA-L (``isal``, about 10x faster than zlib at a similar
ratio; zlib's ``gzip`` when it is not installed) at :data:`GZIP_LEVEL`, except displacement
fields, whose float32 bytes barely compress (stored gzip blocks, :func:`stores_uncompressed`);
the gzip header has no name and no time stamp, so the files are reproducible. The content is
what nibabel writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

try:  # ISA-L's gzip: the same format, compressed about 10x faster than zlib
    from isal.igzip import IGzipFile as _GzipFile
except ImportError:  # pragma: no cover - isal is a dependency; zlib keeps working without it
    from gzip import GzipFile as _GzipFile

from dccnn_deploy.io.atomic import atomic_write
from dccnn_deploy.io.errors import InputError
from dccnn_deploy.io.stored_gzip import StoredGzipWriter

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: gzip level of written ``.nii.gz`` images (1: fastest); displacement fields are stored
GZIP_LEVEL = 1
MGH_SUFFIXES = (".mgz", ".mgh")


def image_format(path: str | os.PathLike) -> str | None:
    """``"nifti"``, ``"mgh"`` or ``None`` from the file name (case-insensitive)."""
    name = Path(path).name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(MGH_SUFFIXES):
        return "mgh"
    return None


def _require_format(path: str | os.PathLike) -> str:
    fmt = image_format(path)
    if fmt is None:
        raise InputError.at(path, "unsupported file type (expected .nii, .nii.gz, .mgz or .mgh)")
    return fmt


def open_image(path: str | os.PathLike) -> nib.spatialimages.SpatialImage:
    """``nib.load`` (header only) with :class:`InputError` for missing/unsupported/unreadable files."""
    p = Path(path)
    if not p.exists():
        raise InputError.at(p, "no such file")
    if not p.is_file():
        raise InputError.at(p, "not a regular file")
    _require_format(p)
    try:
        with _quiet_nibabel():  # header fixes are checked below, not printed
            img = nib.load(p, mmap=False)
    except Exception as exc:  # nibabel/gzip raise many types; all mean "not a usable image"
        raise InputError.at(p, f"not a NIfTI/MGH image ({exc})") from exc
    if isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        check_pixdim(p, type(img.header))
    return img


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's header-fix log lines (our errors are one line)."""
    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_pixdim(path: Path, header_class: type) -> None:
    """:class:`InputError` when the file's own voxel sizes (``pixdim[1..3]``) are 0 or not finite.

    nibabel silently replaces a 0 pixdim with 1 mm when loading, and ITK/ANTs read the voxel
    size from pixdim, so such a header has no trustworthy voxel size: read it unfixed here.
    """
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(path) as f:
            raw = header_class.from_fileobj(f, check=False)
    except Exception as exc:  # noqa: BLE001 - the header read just succeeded once
        raise InputError.at(path, f"cannot read the NIfTI header ({exc})") from exc
    ndim = int(min(max(raw["dim"][0], 0), 3))
    pixdim = np.asarray(raw["pixdim"][1 : 1 + ndim], dtype=np.float64)
    if not (np.isfinite(pixdim).all() and (np.abs(pixdim) > 0).all()):
        raise InputError.at(path, f"voxel size (pixdim) {pixdim.tolist()} in the header is zero or not finite")


def read_array(
    img: nib.spatialimages.SpatialImage, path: str | os.PathLike, dtype: np.dtype | type | None = None
) -> np.ndarray:
    """Read the whole (scaled) data array now, so truncated/corrupt files fail here.

    ``dtype`` (a float type): the stored numbers are scaled by the header's slope and intercept in
    that type. nibabel scales in float64, which for a scaled int16 1 mm image costs ~0.2-0.5 s of
    fresh memory (8 bytes a voxel) that is cast straight back to float32.
    """
    try:
        proxy = img.dataobj
        if dtype is not None and nib.is_proxy(proxy) and hasattr(proxy, "get_unscaled"):
            raw = np.asarray(proxy.get_unscaled())
            if np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating):
                data = raw.astype(dtype)
                slope, inter = float(proxy.slope), float(proxy.inter)
                if slope != 1.0:
                    data *= data.dtype.type(slope)
                if inter != 0.0:
                    data += data.dtype.type(inter)
                return data
        return np.asarray(proxy)
    except Exception as exc:
        raise InputError.at(path, f"cannot read image data, file truncated or corrupt ({exc})") from exc


def nifti_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A NIfTI-1 image with ``affine`` in both sform and qform (code 1) and mm units."""
    affine = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


#: NIfTI intents of a displacement field (ITK writes ``vector``; 1007 and 1006)
FIELD_INTENTS = ("vector", "displacement vector")


def stores_uncompressed(img: nib.spatialimages.SpatialImage) -> bool:
    """Whether ``img`` is a floating-point displacement field (NIfTI intent vector, ``X x Y x Z x
    1 x 3``), whose bytes barely compress: its ``.nii.gz`` holds them in stored deflate blocks
    (:class:`~dccnn_deploy.io.stored_gzip.StoredGzipWriter`: a valid gzip file, no compression)."""
    return (isinstance(img, nib.Nifti1Image) and img.header.get_intent()[0] in FIELD_INTENTS
            and np.issubdtype(img.get_data_dtype(), np.floating))


def write_image(img: nib.spatialimages.SpatialImage, path: str | os.PathLike) -> None:
    """``nib.save(img, path)``, with ``.nii.gz`` compressed through :data:`_GzipFile` (ISA-L), or
    stored in gzip blocks uncompressed when :func:`stores_uncompressed`."""
    if not (isinstance(img, nib.Nifti1Image) and str(path).lower().endswith(".nii.gz")):
        nib.save(img, path)
        return
    with open(path, "wb") as raw:
        if stores_uncompressed(img):
            gz = StoredGzipWriter(raw)
        else:
            gz = _GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=raw, mtime=0)
        with gz:
            img.to_file_map({"image": nib.FileHolder(fileobj=gz)})


def label_dtype(data: np.ndarray) -> type:
    """``int16`` when every label fits, else ``int32``."""
    info = np.iinfo(np.int16)
    if data.size == 0 or (data.min() >= info.min and data.max() <= info.max):
        return np.int16
    return np.int32


def _cast(data: np.ndarray, dtype) -> np.ndarray:
    """Cast for saving; ``dtype=None`` keeps integer data as labels and floats as float32."""
    data = np.asarray(data)
    integer_input = np.issubdtype(data.dtype, np.integer) or data.dtype == bool
    if dtype is None:
        dtype = label_dtype(data) if integer_input else np.float32
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        rounded = data if integer_input else np.rint(data)
        info = np.iinfo(dtype)
        if rounded.size and (rounded.min() < info.min or rounded.max() > info.max):
            raise ValueError(f"values out of range for {dtype}")
        return rounded.astype(dtype, copy=False)
    return data.astype(dtype, copy=False)


def save_volume(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    overwrite: bool = False,
    dtype=None,
) -> Path:
    """Write a 3-D array with its voxel->RAS ``affine`` to .nii/.nii.gz/.mgz/.mgh, atomically.

    ``dtype=None``: integer (label) arrays as int16/int32 (:func:`label_dtype`), others float32.
    An explicit integer ``dtype`` rounds float data. Refuses an existing ``path`` unless
    ``overwrite`` (:class:`~dccnn_deploy.io.errors.OutputExistsError`).
    """
    return save_image(path, volume_image(data, affine, dtype, _require_format(path)), overwrite)


def volume_image(data: np.ndarray, affine: np.ndarray, dtype=None, fmt: str = "nifti") -> nib.spatialimages.SpatialImage:
    """The image :func:`save_volume` writes (``fmt``: ``"nifti"`` or ``"mgh"``), in memory."""
    if np.ndim(data) != 3:
        raise ValueError(f"save_volume expects a 3-D array, got shape {np.shape(data)}")
    array = _cast(data, dtype)
    if fmt == "nifti":
        return nifti_image(array, affine)
    return nib.MGHImage(array, np.asarray(affine, dtype=np.float64))


def save_image(path: str | os.PathLike, img: nib.spatialimages.SpatialImage, overwrite: bool = False) -> Path:
    """Write a nibabel image atomically (the one place images are written; ``.nii.gz`` via ISA-L)."""
    return atomic_write(path, lambda tmp: write_image(img, tmp), overwrite)
