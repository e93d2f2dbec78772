"""The final-result sanity check (issue 15): a registration that makes the images less alike than
no registration, a deformable step that undoes the affine stage, or an unrelated (noise) image
is flagged; a good registration is not. Synthetic phantoms on small grids."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import save_nifti
from dccnn_deploy.cli.app import app
from dccnn_deploy.preprocess.grid import model_grid
from dccnn_deploy.preprocess.intensity import normalise_intensity
from dccnn_deploy.registration.prepare import PreparedPair
from dccnn_deploy.registration.sanity import RESULT_PREFIX
from dccnn_deploy.registration.sanity_final import final_similarity, final_warnings
from phantoms import CENTRE, grid_points, phantom

GRID = model_grid((40, 44, 36), 3.5, CENTRE)
runner = CliRunner()


def _image(shift_mm: float) -> np.ndarray:
    """The phantom on :data:`GRID`, its content moved by ``shift_mm`` along R."""
    return normalise_intensity(phantom(grid_points(GRID) + np.array([shift_mm, 0.0, 0.0])))


def _pair(unaligned_shift_mm: float) -> PreparedPair:
    """Fixed phantom; the affine stage left 1 mm; without registration ``unaligned_shift_mm``."""
    return PreparedPair(GRID, np.eye(4), _image(1.0), _image(0.0), _image(unaligned_shift_mm))


def _shift(voxels: float) -> torch.Tensor:
    return torch.full((1, 3, *GRID.shape), float(voxels))


@pytest.fixture(scope="module")
def pair() -> PreparedPair:
    return _pair(12.0)


def test_good_registration_does_not_warn(pair):
    mi = final_similarity(pair, pair.moving_g)  # no deformable step: final = affine
    assert mi["affine"] == mi["final"] > mi["none"] > 0.2
    assert final_warnings(mi) == []
    mi = final_similarity(pair, pair.warped(_shift(0.1)))  # a deformable step that barely moves
    assert final_warnings(mi) == []


@pytest.mark.parametrize("field", ["shift", "random"])
def test_result_below_no_registration_warns(pair, field):
    forward = _shift(5.0) if field == "shift" else 6.0 * torch.randn(1, 3, *GRID.shape, generator=torch.Generator().manual_seed(0))
    mi = final_similarity(pair, pair.warped(forward))
    assert mi["final"] < mi["none"]
    (warning,) = final_warnings(mi)
    assert "less similar than no registration" in warning and f"{mi['final']:.3f} < {mi['none']:.3f}" in warning


def test_deformable_step_undoing_the_affine_warns():
    far = _pair(30.0)  # no registration is far off: a 7 mm deformable error stays above it
    mi = final_similarity(far, far.warped(_shift(2.0)))
    assert mi["none"] < mi["final"] < mi["affine"]
    (warning,) = final_warnings(mi)
    assert "deformable step lowered" in warning


def test_unrelated_image_warns():
    noise = np.random.default_rng(0).uniform(0.0, 1.0, GRID.shape).astype(np.float32)
    mi = final_similarity(PreparedPair(GRID, np.eye(4), noise, _image(0.0), noise), noise)
    assert any(w.startswith("result: the registered images share almost no structure") for w in final_warnings(mi))


def test_values_in_report_and_strict_exits_3(study, tmp_path):
    """A noise image registered to the phantom: report.json ``sanity`` and ``warnings``, one
    console line, exit code 3 with ``--strict``; the phantom pair itself raises no final warning."""
    out = tmp_path / "good"
    res = runner.invoke(app, ["register", str(study["moving"]), str(study["fixed"]), "-o", str(out),
                              "--model", str(study["model"]), "--no-affine", "--strict"])
    report = json.loads((out / "report.json").read_text())
    mi = report["sanity"]["mutual_information"]
    assert set(mi) == {"none", "affine", "final", "chance"} and mi["final"] > 0.2, mi
    assert not final_warnings(mi) and res.exit_code == 0, res.output

    header = nib.load(str(study["moving"]))  # the moving image's box: no field-of-view warning
    noise = np.random.default_rng(1).uniform(0, 100, header.shape).astype(np.float32)
    img = save_nifti(tmp_path / "noise.nii.gz", noise, header.affine)
    out = tmp_path / "noise"
    res = runner.invoke(app, ["register", str(img), str(study["fixed"]), "-o", str(out), "--model", str(study["model"]),
                              "--no-affine", "--strict"])
    assert res.exit_code == 3, res.output
    assert "warning:" in res.output and "share almost no structure" in res.output
    warnings = json.loads((out / "report.json").read_text())["warnings"]
    assert any("share almost no structure" in w for w in warnings)
    # the final-result check alone (its MI may also fall just under no registration's: a second line of it)
    assert all(w.startswith(RESULT_PREFIX) for w in warnings) and len(warnings) <= 2, warnings
    assert f"{len(warnings)} warning(s) and --strict" in res.output
