"""The I/O layer: volume round trips, one-line input errors, atomic output, ITK/ANTs interop.

The interop tests resample with SimpleITK and compare against our own resampling of the same
world-space transform, on grids with different, oblique, flipped, anisotropic affines.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from dccnn_deploy.io import (
    InputError,
    OutputExistsError,
    atomic_write,
    check_outputs_free,
    load_itk_affine,
    load_itk_displacement,
    load_volume,
    save_itk_affine,
    save_itk_displacement,
    save_volume,
    voxel_displacement_to_world,
    world_to_voxel_displacement,
)
from dccnn_deploy.io.nifti import stores_uncompressed
from dccnn_deploy.io.stored_gzip import BLOCK, StoredGzipWriter
from dccnn_deploy.ops import warp_gridsample

sitk = pytest.importorskip("SimpleITK")

FIXED_SHAPE = (20, 24, 18)
MOVING_SHAPE = (30, 28, 30)
LIA = np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # columns: i -> L, j -> I, k -> A


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from angles in degrees about x, y, z."""
    a, b, c = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def grid_affine(shape, linear: np.ndarray, centre) -> np.ndarray:
    """Voxel->RAS affine with ``linear`` whose volume centre lands on ``centre`` (mm)."""
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(centre) - linear @ ((np.asarray(shape) - 1) / 2)
    return affine


FIXED_AFFINE = grid_affine(FIXED_SHAPE, rotation(10, -5, 7) @ LIA @ np.diag([1.2, 1.0, 1.5]), (3.0, -2.0, 5.0))
MOVING_AFFINE = grid_affine(MOVING_SHAPE, rotation(-6, 12, -9) @ np.diag([1.1, 1.3, 1.1]), (4.0, -1.0, 4.0))


def world_points(shape, affine) -> np.ndarray:
    """RAS mm coordinates of every voxel centre, ``(*shape, 3)``."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def pattern(x: np.ndarray) -> np.ndarray:
    """A smooth world-space test image with ~10 mm structure in every direction."""
    return (np.sin(0.55 * x[..., 0] + 0.2) * np.cos(0.45 * x[..., 1] - 0.1)
            + 0.7 * np.sin(0.5 * x[..., 2] + 0.3 * x[..., 0]) + 2.0).astype(np.float32)


def world_field(x: np.ndarray) -> np.ndarray:
    """A smooth RAS displacement (mm) of a few mm, different in every component."""
    return np.stack([
        2.5 * np.sin(0.15 * x[..., 1] + 0.2 * x[..., 2]),
        -2.0 * np.cos(0.12 * x[..., 0] - 0.1 * x[..., 2]),
        1.5 * np.sin(0.1 * (x[..., 0] + x[..., 1]) + 0.4),
    ], axis=-1).astype(np.float32)


def sample_world(volume, affine, points: np.ndarray):
    """Trilinear sample of ``volume`` at RAS ``points``; returns values and an interior mask."""
    inv = np.linalg.inv(affine)
    ijk = points @ inv[:3, :3].T + inv[:3, 3]
    coords = np.moveaxis(ijk, -1, 0)
    values = map_coordinates(volume, coords, order=1, mode="constant", cval=0.0)
    inside = np.all([(c >= 1) & (c <= n - 2) for c, n in zip(coords, volume.shape)], axis=0)
    return values, inside


def sitk_resample(moving_path, fixed_path, transform) -> np.ndarray:
    """SimpleITK linear resampling of ``moving`` onto ``fixed``, in nibabel (i, j, k) order."""
    moving, fixed = sitk.ReadImage(str(moving_path)), sitk.ReadImage(str(fixed_path))
    out = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture
def pair(tmp_path):
    """Moving and fixed images on different grids, saved and reloaded (float32 affines)."""
    mov_path, fix_path = tmp_path / "moving.nii.gz", tmp_path / "fixed.nii"
    save_volume(mov_path, pattern(world_points(MOVING_SHAPE, MOVING_AFFINE)), MOVING_AFFINE)
    save_volume(fix_path, pattern(world_points(FIXED_SHAPE, FIXED_AFFINE)), FIXED_AFFINE)
    return load_volume(mov_path), load_volume(fix_path)


# --- volumes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz", "a.mgz"])
def test_volume_round_trip(tmp_path, name):
    data = pattern(world_points(FIXED_SHAPE, FIXED_AFFINE))
    save_volume(tmp_path / name, data, FIXED_AFFINE)
    vol = load_volume(tmp_path / name)
    assert vol.data.dtype == np.float32 and vol.shape == FIXED_SHAPE
    np.testing.assert_allclose(vol.data, data, rtol=1e-6)
    np.testing.assert_allclose(vol.affine, FIXED_AFFINE, atol=1e-4)
    np.testing.assert_allclose(vol.spacing, [1.2, 1.0, 1.5], atol=1e-5)
    assert vol.path == str(tmp_path / name)


@pytest.mark.parametrize("name", ["s.nii", "s.nii.gz"])
@pytest.mark.parametrize("stored", [np.int16, np.uint8, np.float64])
def test_scaled_image_reads_as_nibabel_scales_it(tmp_path, name, stored):
    """Scaled in float32 by read_array: within one float32 rounding of nibabel's float64 scaling."""
    raw = np.random.default_rng(1).integers(0, 250, size=FIXED_SHAPE).astype(stored)
    img = nib.Nifti1Image(raw, FIXED_AFFINE)
    img.header.set_slope_inter(0.0014885, 48.776)
    nib.save(img, tmp_path / name)
    expected = np.asarray(nib.load(tmp_path / name).dataobj)  # float64
    vol = load_volume(tmp_path / name)
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, expected, rtol=3e-7, atol=0)


@pytest.mark.parametrize("name", ["l.nii.gz", "l.mgz"])
@pytest.mark.parametrize("top, on_disk", [(300, np.int16), (70000, np.int32)])
def test_labels_round_trip(tmp_path, name, top, on_disk):
    labels = np.random.default_rng(0).integers(0, top, size=FIXED_SHAPE)
    save_volume(tmp_path / name, labels, FIXED_AFFINE)
    assert nib.load(tmp_path / name).get_data_dtype().newbyteorder("=") == on_disk
    vol = load_volume(tmp_path / name, kind="labels")
    assert vol.data.dtype == np.int32
    np.testing.assert_array_equal(vol.data, labels)


def test_single_volume_4d_is_squeezed_and_float_labels_rounded(tmp_path):
    data = np.ones(FIXED_SHAPE + (1,), np.float32) * 3.0000001
    nib.save(nib.Nifti1Image(data, FIXED_AFFINE), tmp_path / "one.nii.gz")
    vol = load_volume(tmp_path / "one.nii.gz", kind="labels")
    assert vol.shape == FIXED_SHAPE and vol.data.dtype == np.int32 and (vol.data == 3).all()


def _zero_voxel_size(path):
    header = nib.Nifti1Header()
    header.set_data_shape(FIXED_SHAPE)
    header.set_data_dtype(np.float32)
    header.set_sform(np.diag([1.0, 0.0, 2.0, 1.0]), code=1)
    nib.save(nib.Nifti1Image(np.ones(FIXED_SHAPE, np.float32), None, header), path)


def _truncated(path):
    data = np.random.default_rng(0).random(FIXED_SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(data, FIXED_AFFINE), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _nifti(shape, fill=1.0):
    def make(path):
        nib.save(nib.Nifti1Image(np.full(shape, fill, np.float32), np.eye(4)), path)
    return make


def _nan(path):
    data = np.ones(FIXED_SHAPE, np.float32)
    data[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(data, FIXED_AFFINE), path)


BAD_INPUTS = {
    "missing": (lambda p: None, "image", "no such file"),
    "not_image": (lambda p: p.write_text("hello, not an image"), "image", "not a NIfTI/MGH image"),
    "truncated": (_truncated, "image", "truncated"),
    "two_d": (_nifti((20, 24)), "image", "2-D"),
    "single_slice": (_nifti((20, 24, 1)), "image", "2-D"),
    "four_d": (_nifti(FIXED_SHAPE + (3,)), "image", "3 volumes"),
    "five_d": (_nifti(FIXED_SHAPE + (1, 3)), "image", "5-D"),
    "nan": (_nan, "image", "NaN"),
    "all_zero": (_nifti(FIXED_SHAPE, 0.0), "image", "all zeros"),
    "zero_voxel": (_zero_voxel_size, "image", "zero voxel size"),
    "fractional_labels": (_nifti(FIXED_SHAPE, 1.5), "labels", "non-integer"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_line_input_error(tmp_path, case):
    make, kind, problem = BAD_INPUTS[case]
    path = tmp_path / f"{case}.nii.gz"
    make(path)
    with pytest.raises(InputError) as info:
        load_volume(path, kind=kind)
    message = str(info.value)
    assert path.name in message and problem in message and "\n" not in message


def test_unsupported_suffix(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match="a.png: unsupported file type"):
        load_volume(tmp_path / "a.png")


# --- atomic output -----------------------------------------------------------------------------

def test_atomic_write_leaves_nothing_when_writer_fails(tmp_path):
    def failing(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(tmp_path / "out.nii.gz", failing)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_temp_keeps_suffix_and_refuses_existing(tmp_path):
    target = tmp_path / "out.nii.gz"
    seen = []
    atomic_write(target, lambda tmp: (seen.append(tmp), tmp.write_bytes(b"one")))
    assert seen[0].parent == tmp_path and seen[0].name.endswith("-out.nii.gz") and seen[0].name.startswith(".tmp-")
    with pytest.raises(OutputExistsError, match="out.nii.gz"):
        atomic_write(target, lambda tmp: tmp.write_bytes(b"two"))
    assert target.read_bytes() == b"one"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"two"), overwrite=True)
    assert target.read_bytes() == b"two" and list(tmp_path.iterdir()) == [target]


def test_check_outputs_free(tmp_path):
    (tmp_path / "b.nii.gz").write_bytes(b"x")
    free, taken = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    with pytest.raises(OutputExistsError, match="b.nii.gz"):
        check_outputs_free([free, taken], overwrite=False)
    check_outputs_free([free, taken], overwrite=True)
    with pytest.raises(OutputExistsError, match="directory"):
        check_outputs_free([tmp_path], overwrite=True)


def test_save_volume_refuses_existing(tmp_path):
    save_volume(tmp_path / "a.nii.gz", np.ones(FIXED_SHAPE), FIXED_AFFINE)
    with pytest.raises(OutputExistsError):
        save_volume(tmp_path / "a.nii.gz", np.zeros(FIXED_SHAPE), FIXED_AFFINE)
    assert load_volume(tmp_path / "a.nii.gz").data.min() == 1.0


# --- ITK / ANTs displacement fields ------------------------------------------------------------

def test_voxel_world_displacement_round_trip():
    u = np.random.default_rng(1).normal(size=(3, *FIXED_SHAPE)).astype(np.float32)
    world = voxel_displacement_to_world(u, FIXED_AFFINE)
    assert world.shape == (*FIXED_SHAPE, 3)
    np.testing.assert_allclose(world[2, 3, 4], FIXED_AFFINE[:3, :3] @ u[:, 2, 3, 4], rtol=1e-5)
    np.testing.assert_allclose(world_to_voxel_displacement(world, FIXED_AFFINE), u, atol=1e-5)


def test_itk_displacement_file_layout_and_round_trip(tmp_path):
    d = world_field(world_points(FIXED_SHAPE, FIXED_AFFINE))
    path = save_itk_displacement(tmp_path / "warp.nii.gz", d, FIXED_AFFINE)
    img = nib.load(path)
    assert img.shape == (*FIXED_SHAPE, 1, 3) and img.get_data_dtype() == np.float32
    assert int(img.header["intent_code"]) == 1007
    np.testing.assert_allclose(img.get_fdata()[..., 0, :], d * [-1, -1, 1], atol=1e-6)  # LPS on disk
    back, affine = load_itk_displacement(path)
    np.testing.assert_allclose(back, d, atol=1e-6)
    np.testing.assert_allclose(affine, FIXED_AFFINE, atol=1e-4)
    with pytest.raises(OutputExistsError):
        save_itk_displacement(path, d, FIXED_AFFINE)


def test_load_itk_displacement_rejects_non_fields(tmp_path):
    scalar = tmp_path / "scalar.nii.gz"
    save_volume(scalar, np.ones(FIXED_SHAPE), FIXED_AFFINE)
    with pytest.raises(InputError, match="scalar.nii.gz: not an ITK displacement field"):
        load_itk_displacement(scalar)
    wrong_intent = tmp_path / "intent.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((*FIXED_SHAPE, 1, 3), np.float32), FIXED_AFFINE), wrong_intent)
    with pytest.raises(InputError, match="intent.nii.gz: .*intent code 0"):
        load_itk_displacement(wrong_intent)


def test_displacement_matches_simpleitk(tmp_path, pair):
    """THE interop check: our world-space pull-back == ANTs/ITK applying the saved field."""
    moving, fixed = pair
    x = world_points(fixed.shape, fixed.affine)
    d = world_field(x)
    ours, inside = sample_world(moving.data, moving.affine, x + d)
    unwarped, _ = sample_world(moving.data, moving.affine, x)

    field_path = save_itk_displacement(tmp_path / "warp.nii.gz", d, fixed.affine)
    field = sitk.ReadImage(str(field_path))
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    theirs = sitk_resample(moving.path, fixed.path, transform)

    assert inside.mean() > 0.5
    assert corr(ours[inside], theirs[inside]) > 0.99
    np.testing.assert_allclose(theirs[inside], ours[inside], atol=1e-3)
    assert corr(unwarped[inside], theirs[inside]) < 0.9  # the field matters: the test can fail


def test_voxel_field_from_warp_matches_simpleitk(tmp_path):
    """Our ``warp`` with a voxel field == ITK with the field converted by our helpers."""
    vol_path = tmp_path / "vol.nii.gz"
    save_volume(vol_path, pattern(world_points(FIXED_SHAPE, FIXED_AFFINE)), FIXED_AFFINE)
    vol = load_volume(vol_path)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in FIXED_SHAPE], indexing="ij")
    u = np.stack([1.5 * np.sin(grids[1] / 4), -2.0 * np.cos(grids[2] / 5), 1.2 * np.sin(grids[0] / 3)])
    ours = warp_gridsample(torch.from_numpy(vol.data)[None, None], torch.from_numpy(u)[None])[0, 0].numpy()

    field_path = save_itk_displacement(tmp_path / "w.nii.gz", voxel_displacement_to_world(u, vol.affine), vol.affine)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(field_path)), sitk.sitkVectorFloat64))
    theirs = sitk_resample(vol_path, vol_path, transform)

    coords = np.stack(grids) + u
    inside = np.all([(c >= 1) & (c <= n - 2) for c, n in zip(coords, FIXED_SHAPE)], axis=0)
    assert corr(ours[inside], theirs[inside]) > 0.99
    np.testing.assert_allclose(theirs[inside], ours[inside], atol=1e-3)
    assert corr(vol.data[inside], theirs[inside]) < 0.9


# --- ITK / ANTs affine transforms ----------------------------------------------------------------

MATRIX = np.eye(4)
MATRIX[:3, :3] = rotation(4, -8, 6) @ np.diag([1.05, 0.95, 1.0])
MATRIX[:3, 3] = [2.0, -3.0, 1.5]


@pytest.mark.parametrize("name", ["affine.txt", "affine.mat"])
def test_affine_matches_simpleitk(tmp_path, pair, name):
    moving, fixed = pair
    x = world_points(fixed.shape, fixed.affine)
    ours, inside = sample_world(moving.data, moving.affine, x @ MATRIX[:3, :3].T + MATRIX[:3, 3])
    unmoved, _ = sample_world(moving.data, moving.affine, x)

    path = save_itk_affine(tmp_path / name, MATRIX)
    theirs = sitk_resample(moving.path, fixed.path, sitk.ReadTransform(str(path)))

    assert inside.mean() > 0.5
    assert corr(ours[inside], theirs[inside]) > 0.99
    np.testing.assert_allclose(theirs[inside], ours[inside], atol=1e-3)
    assert corr(unmoved[inside], theirs[inside]) < 0.9
    np.testing.assert_allclose(load_itk_affine(path), MATRIX, atol=1e-12)
    with pytest.raises(OutputExistsError):
        save_itk_affine(path, MATRIX)


@pytest.mark.parametrize("name", ["centred.txt", "centred.mat", "centred.tfm"])
def test_load_itk_affine_with_centre_matches_simpleitk(tmp_path, name):
    """A file written by ITK itself, with a non-zero centre (FixedParameters)."""
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(rotation(5, 3, -7).ravel()))
    tx.SetTranslation((1.0, -2.0, 3.0))
    tx.SetCenter((10.0, -20.0, 5.0))
    sitk.WriteTransform(tx, str(tmp_path / name))
    matrix = load_itk_affine(tmp_path / name)
    for p_ras in ([0.0, 0.0, 0.0], [12.0, -7.0, 30.0]):
        lps = np.array(p_ras) * [-1, -1, 1]
        expected = np.array(tx.TransformPoint(tuple(lps))) * [-1, -1, 1]
        np.testing.assert_allclose(matrix[:3, :3] @ p_ras + matrix[:3, 3], expected, atol=1e-9)


def test_load_itk_affine_errors(tmp_path):
    (tmp_path / "bad.txt").write_text("#Insight Transform File V1.0\nTransform: BSplineTransform_double_3_3\n")
    with pytest.raises(InputError, match="bad.txt: expected one 3-D affine"):
        load_itk_affine(tmp_path / "bad.txt")
    with pytest.raises(InputError, match="gone.mat: no such file"):
        load_itk_affine(tmp_path / "gone.mat")
    with pytest.raises(InputError, match="x.h5: unsupported transform file type"):
        load_itk_affine(tmp_path / "x.h5")


@pytest.mark.parametrize("chunks", [[0], [1], [BLOCK - 1], [BLOCK], [BLOCK + 1], [7, BLOCK - 3, 2 * BLOCK + 5, 1, 0, 40]])
def test_stored_gzip_round_trip(tmp_path, chunks):
    """Any sequence of writes, split across block boundaries, gunzips to the same bytes."""
    rng = np.random.default_rng(len(chunks) + sum(chunks))
    parts = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in chunks]
    path = tmp_path / "x.gz"
    with open(path, "wb") as raw, StoredGzipWriter(raw) as gz:
        for p in parts:
            assert gz.write(p) == len(p)
        assert gz.tell() == sum(chunks)
    data = path.read_bytes()
    assert gzip.decompress(data) == b"".join(parts)
    assert len(data) == sum(chunks) + 18 + 5 * (sum(chunks) // BLOCK + 1)  # full blocks + the final one


def test_stored_gzip_seeks_forward_only(tmp_path):
    path = tmp_path / "x.gz"
    with open(path, "wb") as raw, StoredGzipWriter(raw) as gz:
        gz.write(b"ab")
        assert gz.seek(5) == 5 and gz.seek(1, 1) == 6
        gz.write(b"c")
        with pytest.raises(OSError, match="forward only"):
            gz.seek(2)
    assert gzip.decompress(path.read_bytes()) == b"ab" + bytes(4) + b"c"


def test_displacement_fields_are_stored_and_images_compressed(tmp_path):
    """Warps go into stored gzip blocks (float32 fields barely compress); scalar images are
    deflated; nibabel reads both back exactly."""
    field = np.random.default_rng(0).normal(size=(*FIXED_SHAPE, 3)).astype(np.float32)
    warp = save_itk_displacement(tmp_path / "warp.nii.gz", field, FIXED_AFFINE)
    assert stores_uncompressed(nib.load(warp))
    assert warp.stat().st_size > field.nbytes  # no compression at all
    np.testing.assert_array_equal(load_itk_displacement(warp)[0], field)
    image = np.zeros(FIXED_SHAPE, np.float32)
    image[2:5, 2:5, 2:5] = 1.0
    vol = save_volume(tmp_path / "vol.nii.gz", image, FIXED_AFFINE)
    assert not stores_uncompressed(nib.load(vol))
    assert vol.stat().st_size < image.nbytes / 4
    np.testing.assert_array_equal(load_volume(vol).data, image)
