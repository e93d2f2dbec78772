"""ONNX export, graph audit, ONNX Runtime verification and TensorRT engine builds."""

from dccnn_deploy.export.audit import (
    FORBIDDEN_OPS,
    TENSORRT_ONNX_OPS,
    AuditError,
    AuditReport,
    audit_model,
    audit_ops,
    op_histogram,
)
from dccnn_deploy.export.onnx_export import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    DisplacementGraph,
    ExportReport,
    export_onnx,
    to_mixed_fp16,
)
from dccnn_deploy.export.tensorrt_build import EngineReport, build_engine
from dccnn_deploy.export.verify import VerifyReport, compare_backends, verify_onnx

__all__ = [
    "FORBIDDEN_OPS",
    "TENSORRT_ONNX_OPS",
    "AuditError",
    "AuditReport",
    "audit_model",
    "audit_ops",
    "op_histogram",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "DisplacementGraph",
    "ExportReport",
    "export_onnx",
    "to_mixed_fp16",
    "EngineReport",
    "build_engine",
    "VerifyReport",
    "compare_backends",
    "verify_onnx",
]
