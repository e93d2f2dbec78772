"""examples/cpp builds against ONNX Runtime's C++ API, runs an exported model, matches Python.

Needs cmake, a C++ compiler and an ONNX Runtime prefix (include/ + lib/) in $DCCNN_ORT_ROOT
(CI makes one with examples/cpp/fetch_ort.sh); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL
from dccnn_deploy.export import export_onnx
from dccnn_deploy.model import DCCNNLSTMReg
from dccnn_deploy.runtime.backends import OnnxRuntimeBackend

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cpp"
ORT_ROOT = Path(os.environ.get("DCCNN_ORT_ROOT", EXAMPLE / "ort"))

pytestmark = pytest.mark.skipif(
    not (ORT_ROOT / "include" / "onnxruntime_cxx_api.h").is_file() or not shutil.which("cmake"),
    reason=f"no ONNX Runtime C++ prefix at {ORT_ROOT} (run examples/cpp/fetch_ort.sh) or no cmake",
)


def test_cpp_example_matches_python(tmp_path):
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(EXAMPLE), "-B", str(build), f"-DONNXRUNTIME_ROOT={ORT_ROOT}",
                    "-DCMAKE_BUILD_TYPE=Release"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)

    torch.manual_seed(0)
    model = DCCNNLSTMReg(SMALL).eval()
    grid = (16, 20, 24)
    onnx_path = tmp_path / "small.onnx"
    export_onnx(model, grid, onnx_path)
    rng = np.random.default_rng(0)
    moving, fixed = (rng.random(grid, dtype=np.float32) for _ in range(2))
    moving.tofile(tmp_path / "moving.raw")
    fixed.tofile(tmp_path / "fixed.raw")
    run = subprocess.run(
        [str(build / "dccnn_register"), str(onnx_path), str(tmp_path / "moving.raw"), str(tmp_path / "fixed.raw"),
         str(tmp_path / "forward.raw"), str(tmp_path / "inverse.raw")],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    fwd = np.fromfile(tmp_path / "forward.raw", np.float32).reshape(3, *grid)
    inv = np.fromfile(tmp_path / "inverse.raw", np.float32).reshape(3, *grid)
    ref_fwd, ref_inv = OnnxRuntimeBackend(onnx_path).run(moving, fixed)
    assert np.abs(fwd - ref_fwd).max() < 1e-5 and np.abs(inv - ref_inv).max() < 1e-5
    with torch.no_grad():
        out = model(torch.from_numpy(moving)[None, None], torch.from_numpy(fixed)[None, None])
    assert np.abs(fwd - out.forward[0].numpy()).max() < 1e-4
    bad = subprocess.run([str(build / "dccnn_register"), str(onnx_path), str(tmp_path / "forward.raw"),
                          str(tmp_path / "fixed.raw"), str(tmp_path / "a.raw"), str(tmp_path / "b.raw")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "bytes" in bad.stderr
