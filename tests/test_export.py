"""ONNX export, audit, ONNX Runtime parity, runtime backends and the TensorRT-RTX build."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dccnn_deploy import DCCNNLSTMReg
from dccnn_deploy.export import FORBIDDEN_OPS, audit_model, audit_ops, export_onnx
from dccnn_deploy.export.verify import verify_onnx
from dccnn_deploy.metrics import class_dice, tissue_classes
from dccnn_deploy.runtime import BackendUnavailable, OnnxRuntimeBackend, make_backend
from dccnn_deploy.runtime.backends import import_tensorrt
from conftest import lively_model

GRID = (16, 20, 24)
CHECKPOINT_SHA = "0" * 64


def _pair(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)


@pytest.fixture(scope="module")
def model() -> DCCNNLSTMReg:
    """Small random model whose gates are scaled up so displacements reach ~1 voxel."""
    return lively_model(0, sampler="gather")


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    meta = {"source_checkpoint_sha256": CHECKPOINT_SHA, "spacing": "1.5,1.5,1.5"}
    return export_onnx(model, GRID, path, metadata=meta)


def test_export_passes_audit_and_full_checker(exported):
    report = audit_model(exported.path)  # checker(full_check=True) + strict shape inference
    assert report.passed, report.offending_ops
    assert report.output_shapes == {
        "forward_displacement": [1, 3, *GRID],
        "inverse_displacement": [1, 3, *GRID],
    }
    assert not FORBIDDEN_OPS & set(exported.op_histogram)
    assert exported.opset == 17 and exported.op_histogram["Gather"] > 0


def test_graph_io_and_metadata(exported):
    proto = onnx.load(str(exported.path))
    assert [i.name for i in proto.graph.input] == ["moving", "fixed"]
    assert [o.name for o in proto.graph.output] == ["forward_displacement", "inverse_displacement"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["grid_shape"] == "16,20,24"
    assert meta["displacement_units"] == "voxel" and meta["axis_order"] == "D,H,W"
    assert meta["source_checkpoint_sha256"] == CHECKPOINT_SHA and meta["spacing"] == "1.5,1.5,1.5"
    assert meta["normalisation"] == "unknown"  # not given: present but marked
    assert json.loads(meta["model_config"])["scales"] == 3


def test_onnxruntime_matches_torch(exported, model):
    moving, fixed = _pair(GRID)
    report = verify_onnx(exported.path, model, moving, fixed)
    print(f"\nORT vs torch max|d| = {report.max_abs:.2e} voxel")
    assert report.max_abs < 1e-4


def test_export_pads_grid_not_divisible(model, tmp_path):
    grid = (15, 18, 22)  # the model pads to multiples of 4 and crops again
    report = export_onnx(model, grid, tmp_path / "odd.onnx")
    moving, fixed = _pair(grid, seed=1)
    assert verify_onnx(report.path, model, moving, fixed).max_abs < 1e-4


def test_fp16_export_runs_and_stays_close(model, tmp_path):
    report = export_onnx(model, GRID, tmp_path / "fp16.onnx", fp16=True)
    proto = onnx.load(str(report.path))
    f32 = onnx.TensorProto.FLOAT
    assert all(v.type.tensor_type.elem_type == f32 for v in [*proto.graph.input, *proto.graph.output])
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    moving, fixed = _pair(GRID)
    diff = verify_onnx(report.path, model, moving, fixed).max_abs
    print(f"\nfp16 ORT vs fp32 torch max|d| = {diff:.2e} voxel")
    assert diff < 2e-2


def test_gridsample_export_is_flagged_unless_opted_in(model, tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, GRID, tmp_path / "gs17.onnx", sampler="gridsample", opset=17)
    report = export_onnx(model, GRID, tmp_path / "gs.onnx", sampler="gridsample")
    proto = onnx.load(str(report.path))
    assert report.opset == 20
    assert audit_ops(proto) == ["GridSample"]
    assert audit_ops(proto, allow_gridsample=True) == []


def test_audit_flags_control_flow_unsupported_and_custom_ops():
    nodes = [
        onnx.helper.make_node("If", ["c"], ["y"]),
        onnx.helper.make_node("Unique", ["x"], ["u"]),
        onnx.helper.make_node("Relu", ["x"], ["r"]),
        onnx.helper.make_node("Foo", ["x"], ["f"], domain="com.example"),
    ]
    proto = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [], []))
    assert audit_ops(proto) == ["If", "Unique", "com.example::Foo"]


def test_backends_share_one_interface(exported, model):
    moving, fixed = _pair(GRID)
    for backend in (make_backend("torch", model), make_backend("onnxruntime", exported.path)):
        fwd, inv = backend.run(moving, fixed)
        assert fwd.shape == inv.shape == (3, *GRID) and fwd.dtype == np.float32, backend.name
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("nope")
    with pytest.raises(ValueError, match="differ"):
        backend.run(moving, fixed[:-1])


def test_missing_runtimes_fail_clearly(exported, tmp_path):
    with pytest.raises(BackendUnavailable, match="CUDA GPU only"):
        make_backend("tensorrt", tmp_path / "x.engine", device="cpu")
    if not torch.cuda.is_available():  # module absent or no GPU: one clear error either way
        with pytest.raises(BackendUnavailable):
            make_backend("tensorrt", tmp_path / "x.engine", device="cuda")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
            OnnxRuntimeBackend(exported.path, device="cuda")
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(BackendUnavailable, match="tensorrt"):
            import_tensorrt("tensorrt")


def test_tensorrt_rtx_builds_sm89_engine(exported, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from dccnn_deploy.export.tensorrt_build import build_engine

    report = build_engine(exported.path, tmp_path / "small.engine", compute_capabilities=("SM89",))
    assert report.engine_path.stat().st_size > 0
    info = json.loads(report.sidecar_path.read_text())
    assert info["targets"] == ["SM89"] and info["grid_shape"] == "16,20,24"
    assert info["io"]["forward_displacement"]["shape"] == [1, 3, *GRID]
    assert set(info["io"]) == {"moving", "fixed", "forward_displacement", "inverse_displacement"}
    print(f"\nTensorRT-RTX {info['tensorrt_version']} SM89 engine: {report.seconds:.1f} s, "
          f"{report.size_bytes / 1e6:.1f} MB")


def test_tissue_class_dice_tracks_alignment():
    rng = np.random.default_rng(0)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(rng.random((1, 1, 5, 6, 7), np.float32)),
                                             size=(20, 24, 28), mode="trilinear", align_corners=True)[0, 0].numpy()
    idx = np.indices(smooth.shape).astype(np.float32)
    inside = (((idx - np.array([10, 12, 14])[:, None, None, None]) / np.array([8, 10, 11])[:, None, None, None]) ** 2).sum(0) < 1
    fixed = np.where(inside, 0.3 + 0.7 * smooth, 0.0).astype(np.float32)
    moving = np.roll(fixed, 2, axis=0)  # moving[i] = fixed[i - 2]: pulled back by u_D = +2
    assert set(np.unique(tissue_classes(fixed))) == {0, 1, 2, 3}
    zero = np.zeros((3, *fixed.shape), np.float32)
    shift = zero.copy()
    shift[0] = 2.0
    assert class_dice(zero, fixed, fixed) == pytest.approx(1.0)
    assert class_dice(shift, moving, fixed) > 0.99 > class_dice(zero, moving, fixed) + 0.1
