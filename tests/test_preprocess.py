"""World grids, resampling, intensity normalisation and the affine pre-alignment."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from dccnn_deploy.ops.warp import warp_gridsample
from dccnn_deploy.preprocess import grid as grid_module
from dccnn_deploy.preprocess.affine import register_affine
from dccnn_deploy.preprocess.grid import (
    FIT_MARGIN_MM,
    Grid,
    apply_affine,
    displacement_between,
    fitted_model_grid,
    foreground_corners,
    model_grid,
    resample_to_grid,
)
from dccnn_deploy.io import Volume
from dccnn_deploy.preprocess.background import bright_background, with_dark_background
from dccnn_deploy.preprocess.intensity import foreground_mask, normalise_intensity
from phantoms import CENTRE, grid_points, lia_affine, phantom, rotation

@pytest.fixture(scope="module")
def fixed_head() -> tuple[np.ndarray, Grid]:
    grid = model_grid((48, 48, 48), 3.0, CENTRE + np.array([2.0, 3.0, -1.0]))
    return phantom(grid_points(grid)), grid


# ----------------------------------------------------------------------------- grids


def test_model_grid_is_ras_centred():
    grid = model_grid((10, 12, 9), (2.0, 1.5, 3.0), (5.0, -7.0, 1.0))
    np.testing.assert_allclose(grid.centre_world(), [5.0, -7.0, 1.0])
    np.testing.assert_allclose(grid.spacing, [2.0, 1.5, 3.0])
    np.testing.assert_allclose(grid.affine[:3, :3], np.diag([2.0, 1.5, 3.0]))
    assert grid == Grid((10, 12, 9), grid.affine.copy()) and hash(grid) == hash(Grid((10, 12, 9), grid.affine))


def test_fitted_model_grid_shortens_only_axes_the_foreground_leaves_room_on():
    """A skull-stripped brain (134 x 164 x 130 mm) in the default 80 x 96 x 112 grid of 2 mm: only S
    is shortened, to a multiple of the network's divisor, centred on the brain, with the margin."""
    mask = np.zeros((70, 85, 68), dtype=bool)
    mask[1:-1, 1:-1, 1:-1] = True
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-69.0, -86.0, -55.0)
    corners = foreground_corners(mask, affine)
    np.testing.assert_allclose(corners.min(0), [-67.0, -84.0, -53.0])
    np.testing.assert_allclose(corners.max(0), [67.0, 80.0, 77.0])
    grid = fitted_model_grid((80, 96, 112), 2.0, (0.0, 0.0, 0.0), corners, 16)
    assert grid.shape == (80, 96, 96)
    np.testing.assert_allclose(grid.centre_world(), [0.0, 0.0, 12.0])  # kept, kept, the box's centre
    lo, hi = grid.corners_world().min(0), grid.corners_world().max(0)
    assert lo[2] <= -53.0 - FIT_MARGIN_MM and hi[2] >= 77.0 + FIT_MARGIN_MM
    # a head fills the grid: nothing shortened, the centre stays where it was
    head = fitted_model_grid((80, 96, 112), 2.0, (1.0, 2.0, 3.0), corners * 1.6, 16)
    assert head == model_grid((80, 96, 112), 2.0, (1.0, 2.0, 3.0))


def test_resample_identity_reproduces_input(fixed_head):
    data, grid = fixed_head
    out = resample_to_grid(data, grid.affine, grid)
    assert out.shape == data.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, data, atol=1e-5)
    labels = (data * 10).astype(np.int16)
    np.testing.assert_array_equal(resample_to_grid(labels, grid.affine, grid, order=0), labels)


def test_resample_between_orientations_same_world_values():
    """A linear world function is reproduced exactly by trilinear resampling from an LIA grid
    of another spacing; the phantom agrees to interpolation accuracy; LIA labels map exactly."""
    ras = model_grid((30, 34, 28), 3.0, CENTRE)
    lia = Grid((50, 44, 52), lia_affine((50, 44, 52), 2.5, CENTRE + 1.3))
    linear = lambda p: (0.3 * p[..., 0] - 0.2 * p[..., 1] + 0.5 * p[..., 2] + 7.0).astype(np.float32)  # noqa: E731
    out = resample_to_grid(linear(grid_points(lia)), lia.affine, ras)
    np.testing.assert_allclose(out, linear(grid_points(ras)), atol=2e-3)

    out = resample_to_grid(phantom(grid_points(lia)), lia.affine, ras)
    assert np.abs(out - phantom(grid_points(ras))).max() < 0.03

    # same spacing, flipped/permuted axes: every RAS voxel centre is an LIA voxel centre
    lia3 = Grid((30, 28, 34), lia_affine((30, 28, 34), 3.0, CENTRE))
    labels = (np.arange(30 * 28 * 34) % 251).reshape(30, 28, 34).astype(np.uint8)
    on_ras = resample_to_grid(labels, lia3.affine, ras, order=0)
    np.testing.assert_array_equal(on_ras, labels[::-1].transpose(0, 2, 1)[:, :, ::-1])


def test_resample_in_slabs_matches_one_pass(fixed_head, monkeypatch):
    data, grid = fixed_head
    target = Grid((31, 26, 29), lia_affine((31, 26, 29), 4.5, CENTRE - 3.0))
    world = np.eye(4)
    world[:3, :3] = 0.95 * rotation((0.2, -1.0, 0.4), 20.0)
    world[:3, 3] = (5.0, -3.0, 8.0)
    whole = resample_to_grid(data, grid.affine, target, world)
    monkeypatch.setattr(grid_module, "_CHUNK_VOXELS", 26 * 29 * 4 + 5)  # slabs of 4 rows, last of 3
    np.testing.assert_allclose(resample_to_grid(data, grid.affine, target, world), whole, atol=1e-5)
    assert np.abs(whole).max() > 0.3


def test_resample_world_transform_and_zeros_outside():
    grid = model_grid((20, 20, 20), 2.0, (0.0, 0.0, 0.0))
    data = np.ones(grid.shape, dtype=np.float32)
    shift = np.eye(4)
    shift[0, 3] = 30.0  # sample 30 mm to the right: the last 15 voxels along R fall outside
    out = resample_to_grid(data, grid.affine, grid, world_transform=shift)
    np.testing.assert_allclose(out[:5], 1.0, atol=1e-5)
    np.testing.assert_allclose(out[5:], 0.0, atol=1e-5)


def test_displacement_between_matches_resample(fixed_head):
    data, grid = fixed_head
    target = Grid((20, 24, 22), lia_affine((20, 24, 22), 4.0, CENTRE))
    world = np.eye(4)
    world[:3, :3] = rotation((1, 2, 0), 10.0)
    u = displacement_between(target, grid, world)
    assert u.shape == (1, 3, 20, 24, 22) and u.dtype == torch.float32
    via_u = warp_gridsample(torch.from_numpy(data)[None, None], u)[0, 0].numpy()
    np.testing.assert_allclose(via_u, resample_to_grid(data, grid.affine, target, world), atol=1e-4)


# ----------------------------------------------------------------------------- intensity


def test_normalise_intensity_ranges():
    rng = np.random.default_rng(0)
    data = np.zeros((20, 20, 20), dtype=np.float32)
    data[5:15, 5:15, 5:15] = rng.normal(500.0, 50.0, (10, 10, 10))
    data[10, 10, 10] = 1e5  # an outlier that the upper percentile must clip
    out = normalise_intensity(data)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.all(out[data == 0] == 0.0)  # the background stays at 0
    fg = out[5:15, 5:15, 5:15]
    assert 0.35 < np.median(fg) < 0.65  # the outlier did not squash the foreground
    assert np.mean(fg == 1.0) < 0.01 and np.mean(fg == 0.0) < 0.01
    masked = normalise_intensity(data, mask=data > 480, lower=0.0, upper=100.0)
    assert masked[data > 0].max() == 1.0 and np.mean(masked[5:15, 5:15, 5:15] == 0) > 0.3
    assert np.all(normalise_intensity(np.full((4, 4, 4), 3.0)) == 0.0)
    mask = foreground_mask(out)
    assert mask[5:15, 5:15, 5:15].mean() > 0.85 and not mask[data == 0].any()


def test_a_bright_background_is_found_in_the_corners_and_made_dark(fixed_head):
    data = fixed_head[0] * 300.0 + np.random.default_rng(0).normal(0.0, 2.0, fixed_head[0].shape).astype(np.float32)
    volume = Volume(data, fixed_head[1].affine)
    assert bright_background(data) is None and with_dark_background(volume) == (volume, False)
    inverted = data.max() - data  # a whole-image inversion: the air the brightest
    assert bright_background(inverted) == pytest.approx(data.max(), abs=5.0)
    dark, flipped = with_dark_background(Volume(inverted, volume.affine, "x.nii"))
    assert flipped and dark.path == "x.nii" and dark.data.min() >= 0.0
    assert np.corrcoef(dark.data.ravel(), data.ravel())[0, 1] > 0.999  # the original contrast back
    slab = data[:, :, 20:28]  # a thin slab: its top and bottom faces mostly tissue, its corners air
    assert np.mean(slab[:, :, 0] > 0.2 * slab.max()) > 0.5 and bright_background(slab) is None
    assert bright_background(np.full((8, 8, 8), 5.0, np.float32)) is None


# ----------------------------------------------------------------------------- affine


def _moving_case(fixed_grid: Grid, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The phantom seen through ``world``: ``moving(y) = head(world @ y)`` on an LIA 2.5 mm grid."""
    shape = (60, 58, 62)
    affine = lia_affine(shape, 2.5, apply_affine(np.linalg.inv(world), fixed_grid.centre_world()))
    points = apply_affine(world, grid_points(Grid(shape, affine)))
    return phantom(points) * 180.0, affine  # another intensity scale


def _point_error(matrix: np.ndarray, truth: np.ndarray, data: np.ndarray, grid: Grid) -> np.ndarray:
    """Distances (mm) between ``matrix`` and ``truth`` images of the fixed head's voxels."""
    points = grid_points(grid)[data > 0.3]
    return np.linalg.norm(apply_affine(matrix, points) - apply_affine(truth, points), axis=-1)


def test_register_affine_recovers_known_transform(fixed_head):
    data, grid = fixed_head
    world = np.eye(4)  # fixed world -> where the moving image shows that point's content
    world[:3, :3] = 1.05 * rotation((0.3, 1.0, 0.5), 15.0)
    world[:3, 3] = (12.0, -14.0, 9.0)
    moving, moving_affine = _moving_case(grid, world)
    truth = np.linalg.inv(world)  # fixed(x) = moving(truth @ x)
    calls = []
    result = register_affine(
        moving, moving_affine, data, grid.affine, levels=(12.0, 6.0, 3.0), progress=lambda m, f: calls.append(f)
    )
    error = _point_error(result.matrix, truth, data, grid)
    assert error.max() < 1.5 * 3.0 and error.mean() < 1.0, (error.mean(), error.max())  # 3 mm voxels
    assert result.similarity_after > max(result.similarity_before, 0.95)
    assert result.similarity_before < 0.8
    assert result.matrix.shape == (4, 4) and result.matrix.dtype == np.float64
    assert result.iterations > 0 and result.seconds > 0
    assert calls[0] == 0.0 and calls[-1] == 1.0 and calls == sorted(calls)


def test_register_rigid_givesrotation(fixed_head):
    data, grid = fixed_head
    world = np.eye(4)
    world[:3, :3] = rotation((1.0, 0.0, 0.2), -12.0)
    world[:3, 3] = (-18.0, 6.0, 10.0)
    moving, moving_affine = _moving_case(grid, world)
    result = register_affine(
        moving, moving_affine, data, grid.affine, levels=(12.0, 6.0), iterations=(60, 40), dof="rigid"
    )
    linear = result.matrix[:3, :3]
    np.testing.assert_allclose(linear @ linear.T, np.eye(3), atol=1e-6)
    error = _point_error(result.matrix, np.linalg.inv(world), data, grid)
    assert error.mean() < 1.5, error.mean()
    assert result.similarity_after > 0.95
