"""Build a TensorRT-RTX (default) or TensorRT engine from an exported ONNX graph.

TensorRT-RTX builds ahead of time without a GPU once the target compute capabilities are
named (SM75, SM80, SM86, SM89, SM120, SM121; no SM90, so no H100/H200). Its networks are
strongly typed: precision comes from the ONNX file (export with ``fp16=True``), there is no FP16
builder flag. Full TensorRT builds for the local GPU and honours ``fp16`` as a builder flag.
Next to the engine goes ``<engine>.json``: grid, units, I/O, versions, targets.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import onnx

from dccnn_deploy.checkpoint import file_sha256
from dccnn_deploy.runtime.backends import import_tensorrt

Flavor = Literal["rtx", "tensorrt"]


@dataclass
class EngineReport:
    """What :func:`build_engine` wrote: engine and sidecar paths, build time (s), size (bytes)."""

    engine_path: Path
    sidecar_path: Path
    seconds: float
    size_bytes: int
    info: dict[str, Any]


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> Any:
    """Parse ``onnx_path`` into a new network; the parser's errors become one RuntimeError."""
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    return network


def _configure(
    trt: Any, builder: Any, flavor: str, fp16: bool, workspace_gb: float, targets: Sequence[str]
) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if flavor == "rtx":
        unknown = [t for t in targets if t not in trt.ComputeCapability.__members__]
        if unknown or not targets:
            raise ValueError(
                f"compute capabilities {list(targets)}: choose from "
                f"{[n for n in trt.ComputeCapability.__members__ if n.startswith('SM')]}"
            )
        config.num_compute_capabilities = len(targets)
        for i, name in enumerate(targets):
            config.set_compute_capability(trt.ComputeCapability.__members__[name], i)
    elif fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    return config


def _io(network: Any) -> dict[str, dict[str, Any]]:
    """``{name: {"shape": [...], "dtype": "..."}}`` of the network's inputs and outputs."""
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    tensors += [network.get_output(i) for i in range(network.num_outputs)]
    return {t.name: {"shape": list(t.shape), "dtype": str(t.dtype).split(".")[-1].lower()} for t in tensors}


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    flavor: Flavor = "rtx",
    fp16: bool = False,
    workspace_gb: float = 4.0,
    compute_capabilities: Sequence[str] = ("SM89",),
) -> EngineReport:
    """Build ``engine_path`` (+ ``<engine_path>.json``) from ``onnx_path``.

    ``flavor="rtx"`` uses ``tensorrt_rtx`` and ``compute_capabilities``; ``"tensorrt"`` uses
    ``tensorrt`` for the local GPU. ``fp16`` sets TensorRT's FP16 flag; for RTX it is recorded
    only (export the ONNX with ``fp16=True`` instead). Raises
    :class:`~dccnn_deploy.runtime.backends.BackendUnavailable` when the module is absent.
    """
    trt = import_tensorrt(flavor)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    targets = tuple(compute_capabilities) if flavor == "rtx" else ("local GPU",)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    start = time.perf_counter()
    network = _parse(trt, builder, logger, onnx_path)
    config = _configure(trt, builder, flavor, fp16, workspace_gb, targets)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT ({trt.__name__} {trt.__version__}) failed to build {onnx_path}")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    seconds = time.perf_counter() - start

    onnx_meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    info = {
        "flavor": flavor,
        "tensorrt_module": trt.__name__,
        "tensorrt_version": trt.__version__,
        "targets": list(targets),
        "fp16_flag": bool(fp16),
        "precision": onnx_meta.get("precision", "unknown"),
        "grid_shape": onnx_meta.get("grid_shape", "unknown"),
        "axis_order": onnx_meta.get("axis_order", "D,H,W"),
        "displacement_units": onnx_meta.get("displacement_units", "voxel"),
        "io": _io(network),
        "onnx_file": onnx_path.name,
        "onnx_sha256": file_sha256(onnx_path),
        "onnx_metadata": onnx_meta,
        "build_seconds": round(seconds, 3),
    }
    sidecar = engine_path.with_name(engine_path.name + ".json")
    sidecar.write_text(json.dumps(info, indent=2, sort_keys=True))
    return EngineReport(engine_path, sidecar, seconds, engine_path.stat().st_size, info)
