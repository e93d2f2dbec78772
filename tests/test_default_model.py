"""The shipped default model: its card, the demo on it, export + verification + RTX engine build.

Skipped when no default model is installed (``models/dccnn-default.pt``).
"""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from typer.testing import CliRunner

from dccnn_deploy.checkpoint import file_sha256, load_model, read_checkpoint
from dccnn_deploy.cli.app import app
from dccnn_deploy.models import default_model_path

runner = CliRunner()
DEFAULT = default_model_path()
pytestmark = pytest.mark.skipif(DEFAULT is None, reason="no default model installed (models/dccnn-default.pt)")


@pytest.fixture(scope="module")
def exported_default(tmp_path_factory):
    """The default model exported at its grid, verified against PyTorch on the bundled real pair."""
    path = tmp_path_factory.mktemp("default") / "dccnn-default.onnx"
    res = runner.invoke(app, ["export", str(DEFAULT), "-o", str(path)])
    assert res.exit_code == 0, res.output  # exit 0: audit passed and max |Δ| < 0.01 voxel
    return path, res.output


def test_card_describes_this_file():
    card = DEFAULT.with_suffix(".md")
    assert card.is_file(), f"{card} missing"
    text = card.read_text()
    assert file_sha256(DEFAULT) in text  # the card names the exact weights it describes
    bundle = load_model(DEFAULT)
    assert "x".join(map(str, bundle.grid_shape)) in text.replace(" × ", "x").replace("×", "x")
    for heading in ("Validation", "ANTs SyN", "Reproduce"):
        assert heading in text
    ckpt = read_checkpoint(DEFAULT)
    assert "optimizer" not in ckpt and ckpt["metadata"]["training"]["step"] > 0
    assert bundle.model.config.scales == 5 and bundle.model.config.steps == 4  # the paper's 5 x 4 cascade


def test_demo_registers_with_the_default_model(tmp_path):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "-o", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["sha256"] == file_sha256(DEFAULT) and report["refine_iterations"] == 0
    sim = report["similarity"]  # Colin27 was held out of training
    assert sim["after"]["ncc"] > sim["after_affine"]["ncc"] + 0.02
    assert report["fields"]["folding_percent_forward"] < 0.01 and report["fields"]["folding_percent_inverse"] < 0.01


def test_default_model_exports_and_verifies(exported_default):
    path, output = exported_default
    assert path.stat().st_size > 1e6
    parity = re.search(r"max \|Δ\| (\d\.\d\de[-+]\d\d) voxel", output)
    assert parity and float(parity.group(1)) < 0.01


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="tensorrt-rtx-cu12 not installed")
def test_default_model_builds_an_rtx_engine(exported_default, tmp_path):
    path, _ = exported_default
    engine = tmp_path / "dccnn-default.engine"
    res = runner.invoke(app, ["build-engine", str(path), "-o", str(engine), "--flavor", "rtx", "--target", "SM89"])
    assert res.exit_code == 0, res.output
    sidecar = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert engine.stat().st_size > 1e6 and sidecar["grid_shape"] == ",".join(map(str, load_model(DEFAULT).grid_shape))
    assert sidecar["targets"] == ["SM89"]
