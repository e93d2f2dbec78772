"""dccnn export / build-engine / benchmark, and the onnxruntime backend inside dccnn register."""

from __future__ import annotations

import importlib.util

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from dccnn_deploy.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(study, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    res = runner.invoke(app, ["export", str(study["model"]), "-o", str(path)])
    assert res.exit_code == 0, res.output
    assert "max |Δ|" in res.output
    return path


def test_export_refuses_to_overwrite(study, exported):
    res = runner.invoke(app, ["export", str(study["model"]), "-o", str(exported), "--no-verify"])
    assert res.exit_code == 2 and "exists" in res.output


def test_onnxruntime_backend_registers_like_torch(study, exported, tmp_path):
    outs = {}
    for backend, model in (("torch", study["model"]), ("onnxruntime", exported)):
        out = tmp_path / backend
        res = runner.invoke(app, ["register", str(study["moving"]), str(study["fixed"]), "-o", str(out),
                                  "--model", str(model), "--backend", backend, "--precision", "fp32" if backend == "torch" else "auto"])
        assert res.exit_code == 0, res.output
        outs[backend] = out
    for name in ("moved.nii.gz", "fwd_warp.nii.gz", "inv_warp.nii.gz"):
        a = nib.load(str(outs["torch"] / name)).get_fdata()
        b = nib.load(str(outs["onnxruntime"] / name)).get_fdata()
        assert np.abs(a - b).max() < 1e-3, name


def test_backend_and_model_kind_must_match(study, tmp_path):
    res = runner.invoke(app, ["register", str(study["moving"]), str(study["fixed"]), "-o", str(tmp_path / "o"),
                              "--model", str(study["model"]), "--backend", "onnxruntime"])
    assert res.exit_code == 2 and "dccnn export" in res.output


def test_benchmark_table(study, tmp_path):
    csv_path = tmp_path / "bench.csv"
    res = runner.invoke(app, ["benchmark", str(study["model"]), "--repeats", "1", "--no-fp16", "--csv", str(csv_path)])
    assert res.exit_code == 0, res.output
    text = csv_path.read_text()
    assert "torch-cpu" in text and "onnxruntime-cpu" in text
    rows = {line.split(",")[0]: line.split(",") for line in text.splitlines()[1:]}
    assert text.splitlines()[0].split(",")[4:6] == ["max_abs_vs_torch", "tissue_dice"]
    assert float(rows["onnxruntime-cpu"][4]) < 1e-4  # parity vs torch (voxels)
    assert 0 < float(rows["torch-cpu"][5]) <= 1
    assert abs(float(rows["onnxruntime-cpu"][5]) - float(rows["torch-cpu"][5])) < 1e-3


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="tensorrt-rtx-cu12 not installed")
def test_build_rtx_engine(exported, tmp_path):
    engine = tmp_path / "tiny.engine"
    res = runner.invoke(app, ["build-engine", str(exported), "-o", str(engine), "--flavor", "rtx", "--target", "SM89"])
    assert res.exit_code == 0, res.output
    assert engine.stat().st_size > 0 and (tmp_path / "tiny.engine.json").is_file()
