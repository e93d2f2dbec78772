"""Fields of view: which world points an image covers, and both network images cut to the part of
the model grid both cover when one image lacks part of the other's tissue."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

import dccnn_deploy as dd
from dccnn_deploy.io import Volume
from dccnn_deploy.preprocess.grid import Grid, grid_in_field_of_view, in_field_of_view, model_grid
from dccnn_deploy.registration.field_of_view import FOV_UNCOVERED_SHARE, common_field_of_view
from phantoms import CENTRE, grid_points, phantom, rotation


def test_a_field_of_view_reaches_half_a_voxel_beyond_the_outer_centres():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # voxel i sits at 2 i mm
    x = np.array([-1.1, -0.9, 0.9, 1.1, 18.9, 19.1])
    points = np.stack([x, np.full_like(x, 4.0), np.full_like(x, 4.0)], -1)
    assert in_field_of_view(points, (10, 10, 10), affine).tolist() == [False, True, True, True, True, False]
    shift = np.eye(4)
    shift[0, 3] = 10.0  # the points' world -> the image's world
    assert in_field_of_view(points - [10.0, 0, 0], (10, 10, 10), affine, shift).tolist() == [False, True, True, True, True, False]


def test_a_grid_s_coverage_is_that_of_its_voxel_centres():
    affine = np.eye(4)
    affine[:3, :3] = rotation((1.0, 2.0, 0.5), 20.0) * 3.0
    affine[:3, 3] = (-20.0, 5.0, 10.0)
    grid = model_grid((12, 10, 14), 4.0, CENTRE)
    inside = grid_in_field_of_view(grid, (16, 18, 12), affine)
    assert inside.shape == grid.shape and 0 < inside.sum() < inside.size
    assert np.array_equal(inside, in_field_of_view(grid_points(grid), (16, 18, 12), affine))


def _phantom_on(grid: Grid) -> Volume:
    return Volume(phantom(grid_points(grid)), grid.affine)


def test_both_images_are_cut_only_when_one_lacks_part_of_the_other():
    grid = model_grid((40, 44, 36), 3.0, CENTRE)
    whole = _phantom_on(grid)
    image = whole.data / whole.data.max()
    view, info = common_field_of_view(image, image, grid, whole, whole, np.eye(4))
    assert view is None and info == {"moving_tissue_outside_other_view": 0.0, "fixed_tissue_outside_other_view": 0.0,
                                     "cut_to_common_view": False}
    top = Volume(whole.data[:, :, 14:], grid.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 14], [0, 0, 0, 1.0]]))
    cut = np.where(grid_in_field_of_view(grid, top.shape, top.affine), image, 0.0)
    for moving, fixed, moving_g, fixed_g, short in ((top, whole, cut, image, "fixed"), (whole, top, image, cut, "moving")):
        view, info = common_field_of_view(moving_g, fixed_g, grid, moving, fixed, np.eye(4))
        assert info["cut_to_common_view"] and info[f"{short}_tissue_outside_other_view"] > FOV_UNCOVERED_SHARE
        assert info[f"{({'moving', 'fixed'} - {short}).pop()}_tissue_outside_other_view"] == 0.0
        assert not view[:, :, :14].any() and view[:, :, 14:].all()


@pytest.fixture(scope="module")
def cut_moving(study, tmp_path_factory):
    """The study's moving image without its last third of slices along its last voxel axis."""
    img = nib.load(str(study["moving"]))
    data = np.asarray(img.dataobj, dtype=np.float32)
    keep = 2 * data.shape[2] // 3
    path = tmp_path_factory.mktemp("fov") / "cut.nii.gz"
    nib.save(nib.Nifti1Image(data[:, :, :keep], img.affine), str(path))
    return path


def test_the_network_sees_only_what_both_images_show(study, cut_moving, monkeypatch):
    import dccnn_deploy.registration.pipeline as pipeline

    seen = []
    original = pipeline._network_fields

    def spy(network, moving_g, fixed_g, *args, **kwargs):
        seen.append((moving_g, fixed_g))
        return original(network, moving_g, fixed_g, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_network_fields", spy)
    whole = dd.register(study["moving"], study["fixed"], model=study["model"])
    assert whole.metrics["field_of_view"]["cut_to_common_view"] is False
    seen.clear()
    result = dd.register(cut_moving, study["fixed"], model=study["model"])
    view = result.metrics["field_of_view"]
    assert view["cut_to_common_view"] and view["fixed_tissue_outside_other_view"] > FOV_UNCOVERED_SHARE
    moving_view = grid_in_field_of_view(result.prepared.grid, nib.load(str(cut_moving)).shape,
                                        nib.load(str(cut_moving)).affine, result.transform.affine)
    moving_g, fixed_g = seen[0]
    assert not fixed_g[~moving_view].any() and not moving_g[~moving_view].any()
    assert (result.prepared.fixed_g[~moving_view] > 0.1).any()  # the fixed image has tissue there
    assert result.metrics["fields"]["folding_percent_forward"] < 0.01
