"""Export DCCNN-LSTM-Reg to one static ONNX graph (TorchScript exporter, ``dynamo=False``).

Graph contract: inputs ``moving``, ``fixed`` ``(1, 1, D, H, W)`` float32 (normalised volumes on
the model grid); outputs ``forward_displacement``, ``inverse_displacement`` ``(1, 3, D, H, W)``
float32, voxel units, channel k = array axis k (D, H, W), ``warp(x, u)(p) = x(p + u(p))``.
The whole scales x steps cascade is unrolled by tracing (no Loop/If). ``fp16=True`` runs the
feature U-Net and the cascade's gate convolutions in half precision (weights and activations)
and keeps sampling coordinates, flat indices (int64), displacements and the homotopy in
float32 (:func:`to_mixed_fp16`); the graph's inputs and outputs stay float32.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import onnx
import torch
import torch.nn.functional as F
from torch import nn
from torch.onnx import symbolic_helper, symbolic_opset11

import dccnn_deploy
from dccnn_deploy.export.audit import AuditError, audit_model
from dccnn_deploy.model.dccnn import DCCNNLSTMReg
from dccnn_deploy.runtime.backends import INPUT_NAMES, OUTPUT_NAMES

ExportSampler = Literal["gather", "gridsample"]

#: Native 5-D GridSample exists from opset 20 on; the gather warp needs only opset 17.
DEFAULT_OPSET: dict[str, int] = {"gather": 17, "gridsample": 20}
#: Keys every export carries; "unknown" unless given in ``metadata``.
CALLER_METADATA_KEYS = ("spacing", "normalisation", "source_checkpoint_sha256", "inference_passes")
PRECISION_NOTE = "fp16 (U-Net and cascade convolutions; sampling, displacements, homotopy fp32)"


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote: file, settings, time (s), size (bytes), op histogram."""

    path: Path
    grid_shape: tuple[int, int, int]
    opset: int
    sampler: str
    fp16: bool
    seconds: float
    size_bytes: int
    op_histogram: dict[str, int]
    metadata: dict[str, str] = field(default_factory=dict)


class DisplacementGraph(nn.Module):
    """Traceable wrapper: ``(moving, fixed)`` ``(1, 1, *grid)`` float32 -> ``(forward, inverse)``
    ``(1, 3, *grid)`` float32.

    Pads the inputs to the model's divisor with constant (Python int) pads and crops the output,
    so every shape in the traced graph is static.
    """

    def __init__(self, model: DCCNNLSTMReg, grid_shape: tuple[int, int, int]):
        super().__init__()
        self.model = model
        self.grid_shape = tuple(int(n) for n in grid_shape)
        self.pads: list[int] = []
        for n in reversed(self.grid_shape):  # F.pad order: last axis first
            self.pads += [0, (-n) % model.config.divisor]

    def _prepare(self, volume: torch.Tensor) -> torch.Tensor:
        return F.pad(volume, self.pads) if any(self.pads) else volume

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(self._prepare(moving), self._prepare(fixed))
        d, h, w = self.grid_shape
        return out.forward[:, :, :d, :h, :w], out.inverse[:, :, :d, :h, :w]


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """``value`` (tensor, list or tuple of tensors) with floating tensors cast to ``dtype``."""
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_floats(v, dtype) for v in value)
    return value.to(dtype) if torch.is_tensor(value) and value.is_floating_point() else value


class HalfPrecision(nn.Module):
    """Runs ``module`` in float16 between float32 boundaries (Cast in, Cast out)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.half()

    def forward(self, *args: Any) -> Any:
        return _cast_floats(self.module(*_cast_floats(args, torch.float16)), torch.float32)


def to_mixed_fp16(net: DCCNNLSTMReg) -> DCCNNLSTMReg:
    """Half-precision islands in place: the feature U-Net and every cascade convolution.

    Sampling coordinates, flat indices, displacements, the LSTM memory and the homotopy (its
    Jacobian and Gaussian) stay float32, so fp16 rounding never touches a coordinate.
    """
    net.unet = HalfPrecision(net.unet)
    for blocks in net.blocks:
        for block in blocks:
            block.gates = HalfPrecision(block.gates)
    return net


def _pad_symbolic(g, input, padding, mode, value):
    """``aten::pad`` with constant pads -> ``Pad`` with a constant ``pads`` initializer.

    torch's default builds the pads with ConcatFromSequence/Reshape/Transpose, which the
    exporter's shape inference does not fold: every shape downstream becomes dynamic and the
    depthwise Gaussian convolution of the homotopy then fails to export.
    """
    try:
        pads = symbolic_helper._parse_arg(padding, "is")
    except Exception:  # non-constant pads: keep torch's own symbolic
        return symbolic_opset11.pad(g, input, padding, mode, value)
    mode_name = symbolic_helper._parse_arg(mode, "s")
    onnx_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}.get(mode_name)
    rank = symbolic_helper._get_tensor_rank(input)
    if onnx_mode is None or rank is None:
        return symbolic_opset11.pad(g, input, padding, mode, value)
    pads = list(pads) + [0] * (2 * rank - len(pads))  # torch: (last_begin, last_end, ...)
    onnx_pads = pads[0::2][::-1] + pads[1::2][::-1]  # ONNX: (begins..., ends...), axis order
    pads_const = g.op("Constant", value_t=torch.tensor(onnx_pads, dtype=torch.int64))
    if onnx_mode != "constant":
        return g.op("Pad", input, pads_const, mode_s=onnx_mode)
    fill = symbolic_helper._if_scalar_type_as(symbolic_helper._maybe_get_scalar(value), input)
    if symbolic_helper._is_none(fill):
        return g.op("Pad", input, pads_const, mode_s="constant")
    return g.op("Pad", input, pads_const, fill, mode_s="constant")


@contextmanager
def static_pad_symbolic(opset: int) -> Iterator[None]:
    """Use :func:`_pad_symbolic` for ``aten::pad`` during one export."""
    torch.onnx.register_custom_op_symbolic("aten::pad", _pad_symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::pad", opset)


def export_metadata(
    model: DCCNNLSTMReg, grid_shape: tuple[int, int, int], sampler: str, fp16: bool, opset: int,
    extra: dict[str, str],
) -> dict[str, str]:
    """``metadata_props`` of an export: the graph contract plus the caller's ``extra`` entries."""
    meta = {
        "grid_shape": ",".join(str(n) for n in grid_shape),
        "axis_order": "D,H,W",
        "displacement_units": "voxel",
        "displacement_convention": (
            "warp(x,u)(p)=x(p+u(p)); channel k displaces array axis k; forward lives on the fixed "
            "grid (warp(moving, forward) ~ fixed), inverse on the moving grid"
        ),
        "inputs": "moving,fixed: (1,1,D,H,W) float32, normalised, on the model grid",
        "outputs": "forward_displacement,inverse_displacement: (1,3,D,H,W) float32 voxels",
        "precision": PRECISION_NOTE if fp16 else "fp32",
        "sampler": sampler,
        "opset": str(opset),
        "model_config": json.dumps(model.config.to_dict(), sort_keys=True),
        "dccnn_deploy_version": dccnn_deploy.__version__,
        **{key: "unknown" for key in CALLER_METADATA_KEYS},
    }
    meta.update({str(k): str(v) for k, v in extra.items()})
    return meta


def _trace_to_onnx(net: DisplacementGraph, path: Path, opset: int) -> None:
    shape = (1, 1, *net.grid_shape)
    gen = torch.Generator().manual_seed(0)
    example = (torch.rand(shape, generator=gen), torch.rand(shape, generator=gen))
    with static_pad_symbolic(opset), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            net, example, str(path), dynamo=False, do_constant_folding=True, opset_version=opset,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
        )


def export_onnx(
    model: DCCNNLSTMReg,
    grid_shape: tuple[int, int, int],
    path: str | Path,
    opset: int | None = None,
    sampler: ExportSampler = "gather",
    fp16: bool = False,
    metadata: dict[str, str] | None = None,
) -> ExportReport:
    """Write ``model`` at ``grid_shape`` (D, H, W) to ``path`` and audit it.

    ``opset`` defaults to 17 (gather) / 20 (gridsample, opt-in: native 5-D GridSample).
    ``metadata`` adds or overrides ``metadata_props`` (expected: spacing, normalisation,
    source_checkpoint_sha256). ``model`` is not modified. Raises :class:`AuditError` (after
    writing the file) when the graph fails the checker or holds ops TensorRT would refuse.
    """
    if sampler not in DEFAULT_OPSET:
        raise ValueError(f"sampler must be one of {sorted(DEFAULT_OPSET)}, got {sampler!r}")
    opset = DEFAULT_OPSET[sampler] if opset is None else int(opset)
    if opset < DEFAULT_OPSET[sampler]:
        raise ValueError(f"sampler {sampler!r} needs opset >= {DEFAULT_OPSET[sampler]}, got {opset}")
    grid_shape = tuple(int(n) for n in grid_shape)
    if len(grid_shape) != 3 or min(grid_shape) < 2:
        raise ValueError(f"grid_shape must be (D, H, W) with sizes >= 2, got {grid_shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    net = copy.deepcopy(model).cpu().eval().float()
    net.sampler = sampler
    start = time.perf_counter()
    _trace_to_onnx(DisplacementGraph(to_mixed_fp16(net) if fp16 else net, grid_shape), path, opset)

    proto = onnx.load(str(path))
    meta = export_metadata(net, grid_shape, sampler, fp16, opset, metadata or {})
    onnx.helper.set_model_props(proto, meta)
    proto.doc_string = "DCCNN-LSTM-Reg: (moving, fixed) -> (forward, inverse) displacement, voxels"
    onnx.save(proto, str(path))
    seconds = time.perf_counter() - start

    audit = audit_model(proto, allow_gridsample=sampler == "gridsample")
    if not audit.passed:
        raise AuditError(
            f"{path}: ops TensorRT would refuse {audit.offending_ops}, "
            f"output shapes {audit.output_shapes}"
        )
    return ExportReport(
        path=path, grid_shape=grid_shape, opset=opset, sampler=sampler, fp16=fp16,
        seconds=seconds, size_bytes=path.stat().st_size, op_histogram=audit.op_histogram,
        metadata=meta,
    )
