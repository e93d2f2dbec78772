"""End-to-end registration through the CLI on phantom heads: outputs, ITK interop, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import save_nifti
from dccnn_deploy.cli.app import app
from dccnn_deploy.preprocess.grid import Grid
from dccnn_deploy.registration.outputs import DEFAULT_FILES
from phantoms import grid_points

runner = CliRunner()


@pytest.fixture(scope="module")
def registered(study, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reg") / "out"
    result = runner.invoke(
        app,
        ["register", str(study["moving"]), str(study["fixed"]), "-o", str(out), "--grid", "32,32,32",
         "--spacing", "4.5", "--refine", "40", "--moving-labels", str(study["moving_labels"]), "--fixed-labels", str(study["fixed_labels"])],
    )
    assert result.exit_code == 0, result.output
    return out


def test_outputs_written_and_report_complete(registered):
    assert sorted(p.name for p in registered.iterdir()) == sorted(DEFAULT_FILES + ("moved_labels.nii.gz",))
    assert not [p for p in registered.iterdir() if p.name.startswith(".")]  # staging removed
    report = json.loads((registered / "report.json").read_text())
    for key in ("version", "backend", "seconds", "peak_rss_mb", "similarity", "fields", "labels", "affine"):
        assert key in report
    sim = report["similarity"]
    assert sim["after_affine"]["ncc"] > sim["before"]["ncc"] + 0.05
    assert sim["after"]["ncc"] >= sim["after_affine"]["ncc"] - 0.01
    assert report["fields"]["folding_percent_forward"] < 0.01
    for written in ("written_forward", "written_inverse"):  # both written warps were checked
        assert report["fields"][written]["folded_voxels_left"] == 0
    assert report["labels"]["after"]["dice_mean"] > 0.8
    assert report["labels"]["after"]["dice_mean"] >= report["labels"]["after_affine"]["dice_mean"] - 0.01


def test_warp_files_follow_itk_convention(registered):
    img = nib.load(str(registered / "fwd_warp.nii.gz"))
    assert img.shape == (44, 48, 40, 1, 3)
    assert img.get_data_dtype() == np.float32
    assert img.header.get_intent()[0] == "vector"


def test_simpleitk_applies_our_warp_like_moved(study, registered):
    sitk = pytest.importorskip("SimpleITK")
    moving = sitk.ReadImage(str(study["moving"]), sitk.sitkFloat64)
    fixed = sitk.ReadImage(str(study["fixed"]), sitk.sitkFloat64)
    field = sitk.ReadImage(str(registered / "fwd_warp.nii.gz"), sitk.sitkVectorFloat64)
    out = sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(field), sitk.sitkLinear, 0.0)
    ours = nib.load(str(registered / "moved.nii.gz")).get_fdata()
    theirs = sitk.GetArrayFromImage(out).transpose(2, 1, 0)  # sitk arrays are z, y, x
    inner = (slice(3, -3),) * 3
    corr = np.corrcoef(ours[inner].ravel(), theirs[inner].ravel())[0, 1]
    assert corr > 0.99
    # the affine alone, through SimpleITK's reader, lands the moving image close too
    tx = sitk.ReadTransform(str(registered / "affine.txt"))
    aff = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0)).transpose(2, 1, 0)
    assert np.corrcoef(aff[inner].ravel(), theirs[inner].ravel())[0, 1] > 0.95


def test_forward_and_inverse_warps_compose_to_identity(registered):
    from dccnn_deploy.io import load_itk_displacement
    from dccnn_deploy.transform import sample_at

    d_f, a_f = load_itk_displacement(registered / "fwd_warp.nii.gz")
    d_i, a_i = load_itk_displacement(registered / "inv_warp.nii.gz")
    pts = grid_points(Grid(d_f.shape[:3], a_f))
    mapped = pts + d_f  # fixed -> moving world
    mapped_t = torch.from_numpy(np.ascontiguousarray(mapped.transpose(3, 0, 1, 2)))[None].float()
    back = mapped + np.stack([sample_at(d_i[..., k], a_i, mapped_t) for k in range(3)], axis=-1)
    inner = (slice(6, -6),) * 3
    err = np.linalg.norm(back - pts, axis=-1)[inner]
    moved_by = np.linalg.norm(d_f, axis=-1)[inner]
    assert moved_by.mean() > 3.0  # a real transform (affine + deformation) ...
    assert np.median(err) < 0.5 and np.percentile(err, 95) < 1.5  # ... undone by the inverse (mm)


def test_apply_reproduces_moved_and_warps_labels(study, registered, tmp_path):
    out = tmp_path / "applied.nii.gz"
    res = runner.invoke(app, ["apply", str(registered / "fwd_warp.nii.gz"), str(study["moving"]), "-o", str(out)])
    assert res.exit_code == 0, res.output
    a = nib.load(str(out)).get_fdata()
    b = nib.load(str(registered / "moved.nii.gz")).get_fdata()
    assert np.abs(a - b).max() < 1e-3
    lab = tmp_path / "labels.nii.gz"
    res = runner.invoke(app, ["apply", str(registered / "fwd_warp.nii.gz"), str(study["moving_labels"]), "-o", str(lab), "--labels"])
    assert res.exit_code == 0, res.output
    assert np.array_equal(nib.load(str(lab)).get_fdata(), nib.load(str(registered / "moved_labels.nii.gz")).get_fdata())
    res = runner.invoke(app, ["apply", str(registered / "fwd_warp.nii.gz"), str(study["moving"]), "-o", str(out)])
    assert res.exit_code != 0 and "exists" in res.output


def test_evaluate_table_and_csv(study, registered, tmp_path):
    csv_path = tmp_path / "dice.csv"
    res = runner.invoke(app, ["evaluate", str(registered / "moved_labels.nii.gz"), str(study["fixed_labels"]), "-o", str(csv_path)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["label"] for r in rows] == ["1", "2", "3", "mean"]
    assert 0.5 < float(rows[-1]["dice"]) <= 1.0
    same = runner.invoke(app, ["evaluate", str(study["fixed_labels"]), str(study["fixed_labels"])])
    assert same.exit_code == 0 and "1.0000" in same.output


def test_existing_outputs_are_not_overwritten(study, registered):
    before = (registered / "moved.nii.gz").stat().st_mtime_ns
    res = runner.invoke(app, ["register", str(study["moving"]), str(study["fixed"]), "-o", str(registered), "--model", str(study["model"])])
    assert res.exit_code == 2 and "exists" in res.output
    assert (registered / "moved.nii.gz").stat().st_mtime_ns == before


# --------------------------------------------------------------------------- bad input

def _bad_inputs(root: Path, good: Path) -> dict[str, Path]:
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    bad = {}
    bad["missing"] = root / "missing.nii.gz"
    (root / "text.nii.gz").write_text("not an image")
    bad["not_nifti"] = root / "text.nii.gz"
    raw = good.read_bytes()
    (root / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    bad["truncated"] = root / "truncated.nii.gz"
    bad["two_d"] = save_nifti(root / "flat.nii.gz", np.ones((20, 20), np.float32), aff)
    bad["four_d"] = save_nifti(root / "multi.nii.gz", np.ones((10, 10, 10, 3), np.float32), aff)
    nan = np.ones((10, 10, 10), np.float32)
    nan[2, 2, 2] = np.nan
    bad["nan"] = save_nifti(root / "nan.nii.gz", nan, aff)
    bad["zeros"] = save_nifti(root / "zeros.nii.gz", np.zeros((10, 10, 10), np.float32), aff)
    header = nib.Nifti1Header()
    header.set_data_shape((10, 10, 10))
    header.set_data_dtype(np.float32)
    header.set_sform(np.diag([2.0, 0.0, 2.0, 1.0]), code=1)
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.float32), None, header), str(root / "zerovox.nii.gz"))
    bad["zero_voxel"] = root / "zerovox.nii.gz"
    return bad


@pytest.mark.parametrize("case", ["missing", "not_nifti", "truncated", "two_d", "four_d", "nan", "zeros", "zero_voxel"])
def test_bad_moving_image_one_line_error_no_outputs(study, tmp_path, case):
    bad = _bad_inputs(tmp_path, study["fixed"])[case]
    out = tmp_path / "out"
    res = runner.invoke(app, ["register", str(bad), str(study["fixed"]), "-o", str(out), "--model", str(study["model"])])
    assert res.exit_code == 2, res.output
    message = res.stderr.strip()
    assert "\n" not in message and bad.name in message
    assert not out.exists() or not any(out.iterdir())


def test_unreadable_checkpoint(study, tmp_path):
    ckpt = tmp_path / "broken.pt"
    ckpt.write_bytes(b"\x80\x04garbage")
    out = tmp_path / "out"
    res = runner.invoke(app, ["register", str(study["moving"]), str(study["fixed"]), "-o", str(out), "--model", str(ckpt)])
    assert res.exit_code == 2 and "broken.pt" in res.stderr and "\n" not in res.stderr.strip()
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture
def no_default_model(monkeypatch):
    monkeypatch.setattr("dccnn_deploy.models.default_model_path", lambda: None)


@pytest.fixture(scope="module", autouse=True)
def _no_default_model_for_module():
    """The module's registrations run refine-only unless they pass --model."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("dccnn_deploy.models.default_model_path", lambda: None)
        yield


def test_no_model_and_no_refine_is_an_error(study, tmp_path, no_default_model):
    res = runner.invoke(app, ["register", str(study["moving"]), str(study["fixed"]), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--refine" in res.output


# ------------------------------------------------------------------------------- batch

def test_batch_reports_failures_resumes_and_shards(study, tmp_path):
    (tmp_path / "bad.nii.gz").write_text("garbage")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "moving,fixed,moving_labels,fixed_labels\n"
        f"{study['moving']},{study['fixed']},{study['moving_labels']},{study['fixed_labels']}\n"
        f"bad.nii.gz,{study['fixed']},,\n"
    )
    out = tmp_path / "study_out"
    args = ["batch", "--pairs", str(pairs), "-o", str(out), "--model", str(study["model"])]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "bad.nii.gz" in rows[1]["error"]
    assert float(rows[0]["dice_final"]) > 0.7
    page = (out / "report.html").read_text()
    assert "bad.nii.gz" in page and rows[0]["pair"] in page
    res = runner.invoke(app, args + ["--shard", "1/2"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "summary-shard-1-of-2.csv").open()))
    assert [r["status"] for r in rows] == ["done before"]
    rows = list(csv.DictReader((out / "summary.csv").open()))  # the study summary keeps every pair
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert runner.invoke(app, args + ["--shard", "3/2"]).exit_code == 2
