"""Static checks of an exported graph: ONNX checker, shape inference and a TensorRT op audit.

``TENSORRT_ONNX_OPS`` is the set of operators marked supported ("Y") in onnx-tensorrt's
``docs/operators.md`` (TensorRT 10.0 table, opsets 9-20; TensorRT-RTX uses the same parser).
Per-op restrictions of that table (e.g. Resize modes, GridSample "4-D input only") are not
checked here; the TensorRT build is the final word.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import onnx

TENSORRT_ONNX_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
    EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
    HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization
    LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
    NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
    RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
    ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan
    Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
    Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile
    TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)

#: Supported by TensorRT but not wanted in a deployment graph: control flow (the cascade must
#: unroll into one static graph) and GridSample (opt-in, ``allow_gridsample=True``).
FORBIDDEN_OPS: frozenset[str] = frozenset({"Loop", "If", "Scan", "GridSample"})


class AuditError(RuntimeError):
    """An exported graph failed the checker, shape inference or the op audit."""


@dataclass
class AuditReport:
    """Outcome of :func:`audit_model`: ``offending_ops`` empty and ``static_outputs`` true = pass."""

    op_histogram: dict[str, int]
    offending_ops: list[str]
    output_shapes: dict[str, list[int | str]] = field(default_factory=dict)

    @property
    def static_outputs(self) -> bool:
        return all(all(isinstance(d, int) and d > 0 for d in s) for s in self.output_shapes.values())

    @property
    def passed(self) -> bool:
        return not self.offending_ops and self.static_outputs


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """All nodes of ``graph``, including those of subgraphs (Loop/If/Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _nodes(sub)


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """``{op_type: count}`` over the whole graph, most frequent first."""
    return dict(Counter(n.op_type for n in _nodes(model.graph)).most_common())


def audit_ops(model: onnx.ModelProto, allow_gridsample: bool = False) -> list[str]:
    """Op types TensorRT's ONNX parser would reject or that we forbid (sorted, unique).

    Non-default domains (custom ops) are reported as ``domain::Op``.
    """
    forbidden = FORBIDDEN_OPS - ({"GridSample"} if allow_gridsample else set())
    bad = set()
    for node in _nodes(model.graph):
        if node.domain not in ("", "ai.onnx"):
            bad.add(f"{node.domain}::{node.op_type}")
        elif node.op_type not in TENSORRT_ONNX_OPS or node.op_type in forbidden:
            bad.add(node.op_type)
    return sorted(bad)


def _shape(value: onnx.ValueInfoProto) -> list[int | str]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def audit_model(model: onnx.ModelProto | str | Path, allow_gridsample: bool = False) -> AuditReport:
    """Full ONNX checker, strict shape inference and :func:`audit_ops` on one model.

    Raises :class:`AuditError` when the checker or shape inference fails; op problems are
    returned in the report (``report.passed``).
    """
    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    try:
        onnx.checker.check_model(proto, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise AuditError(f"ONNX checker / shape inference failed: {err}") from err
    return AuditReport(
        op_histogram=op_histogram(proto),
        offending_ops=audit_ops(proto, allow_gridsample),
        output_shapes={o.name: _shape(o) for o in inferred.graph.output},
    )
