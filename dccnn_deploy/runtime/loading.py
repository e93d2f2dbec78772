"""Open a trained network for registration: a checkpoint (.pt), an ONNX file or a TensorRT engine.

Each kind carries the model grid (shape, spacing) the pipeline must resample to: checkpoint
metadata, ONNX ``metadata_props`` or the engine's sidecar JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dccnn_deploy.checkpoint import DEFAULT_SPACING_MM, file_sha256, load_model
from dccnn_deploy.io import InputError
from dccnn_deploy.runtime.backends import (
    INPUT_NAMES, OUTPUT_NAMES, Backend, OnnxRuntimeBackend, TensorRTBackend, TorchBackend,
)

#: which backend each file kind runs on
KIND_BACKENDS = {".pt": ("torch",), ".onnx": ("onnxruntime",), ".engine": ("tensorrt",)}


@dataclass
class Network:
    """A runnable network and the grid it expects."""

    backend: Backend
    grid_shape: tuple[int, int, int]
    spacing_mm: float
    path: str
    sha256: str


def _grid_from(meta: dict, path: Path) -> tuple[tuple[int, int, int], float]:
    try:
        shape = tuple(int(n) for n in str(meta["grid_shape"]).strip("[]() ").split(","))
        spacing = meta.get("spacing", meta.get("spacing_mm", "unknown"))
        spacing_mm = DEFAULT_SPACING_MM if spacing in ("unknown", None) else float(str(spacing).split(",")[0])
    except (KeyError, ValueError) as exc:
        raise InputError.at(path, f"no usable grid_shape/spacing metadata ({exc})") from None
    if len(shape) != 3:
        raise InputError.at(path, f"grid_shape metadata {meta['grid_shape']!r} is not 3-D")
    return shape, spacing_mm


def check_onnx_contract(session, path: Path) -> None:
    """:class:`InputError` unless the ONNX graph takes ``moving``/``fixed`` and gives
    ``forward_displacement``/``inverse_displacement``, all rank 5 (N, C, D, H, W)."""
    for kind, args, wanted in (("inputs", session.get_inputs(), INPUT_NAMES), ("outputs", session.get_outputs(), OUTPUT_NAMES)):
        have = {a.name: a for a in args}
        missing = [n for n in wanted if n not in have]
        if missing:
            raise InputError.at(path, f"not a dccnn export: graph {kind} are {sorted(have)}, expected {list(wanted)}")
        for name in wanted:
            rank = len(have[name].shape or ())
            if rank != 5:
                raise InputError.at(path, f"not a dccnn export: {kind[:-1]} {name!r} has rank {rank}, expected 5 (N,C,D,H,W)")


def open_network(path: str | Path, backend: str = "torch", device: str = "cpu") -> Network:
    """The network in ``path`` on ``backend`` (the file kind must suit the backend)."""
    p = Path(path)
    kind = p.suffix.lower()
    if kind not in KIND_BACKENDS:
        raise InputError.at(p, f"unknown model file type {kind!r} (.pt checkpoint, .onnx or .engine)")
    if backend not in KIND_BACKENDS[kind]:
        hint = {"onnxruntime": "export one with `dccnn export CKPT -o model.onnx`",
                "tensorrt": "build one with `dccnn build-engine model.onnx -o model.engine`"}.get(backend, "")
        raise InputError.at(p, f"backend {backend!r} cannot run a {kind} file; {hint}".rstrip("; "))
    if not p.is_file():
        raise InputError.at(p, "model file not found")
    if kind == ".pt":
        bundle = load_model(p)
        return Network(TorchBackend(bundle.model, device), bundle.grid_shape, bundle.spacing_mm, str(p), bundle.sha256)
    if kind == ".onnx":
        try:
            ort_backend = OnnxRuntimeBackend(p, device)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own error types
            if type(exc).__name__ == "BackendUnavailable":
                raise
            raise InputError.at(p, f"ONNX Runtime cannot load it ({type(exc).__name__})") from None
        check_onnx_contract(ort_backend.session, p)
        shape, spacing = _grid_from(ort_backend.metadata, p)
        return Network(ort_backend, shape, spacing, str(p), file_sha256(p))
    sidecar = p.with_name(p.name + ".json")
    if not sidecar.is_file():
        raise InputError.at(p, f"engine sidecar {sidecar.name} not found (written by dccnn build-engine)")
    info = json.loads(sidecar.read_text())
    shape, spacing = _grid_from({**info.get("onnx_metadata", {}), "grid_shape": info.get("grid_shape")}, p)
    return Network(TensorRTBackend(p, device), shape, spacing, str(p), file_sha256(p))
