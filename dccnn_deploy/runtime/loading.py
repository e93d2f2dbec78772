"""Open a trained network for registration: a checkpoint (.pt), an ONNX file or a TensorRT engine.

Each kind carries the model grid (shape, spacing) and normalisation the pipeline must use: checkpoint
metadata, ONNX ``metadata_props`` or the engine's sidecar JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dccnn_deploy.checkpoint import file_sha256, load_model
from dccnn_deploy.preprocess.settings import PreprocessSettings
from dccnn_deploy.io import InputError
from dccnn_deploy.runtime.backends import (
    INPUT_NAMES, OUTPUT_NAMES, PRECISIONS, Backend, OnnxRuntimeBackend, TensorRTBackend, TorchBackend,
)

#: which backend each file kind runs on
KIND_BACKENDS = {".pt": ("torch",), ".onnx": ("onnxruntime",), ".engine": ("tensorrt",)}


@dataclass
class Network:
    """A runnable network and what it expects of its inputs (grid, normalisation).
    ``fit_divisor``: the network takes any grid whose sizes are multiples of it (a checkpoint in
    torch), so the pipeline may fit the grid to the images; None: only ``settings.grid_shape``
    (an exported graph or engine of static shape)."""

    backend: Backend
    settings: PreprocessSettings
    path: str
    sha256: str
    fit_divisor: int | None = None

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return self.settings.grid_shape

    @property
    def spacing_mm(self) -> float:
        return self.settings.spacing_mm


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


def check_precision(precision: str, backend: str, path: str | Path | None = None) -> None:
    """One-line :class:`InputError` unless ``precision`` is one of
    :data:`~dccnn_deploy.runtime.backends.PRECISIONS` that ``backend`` can run (``bf16``: torch only)."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and backend != "torch":
        message = f"--precision bf16 needs the torch backend (this is {backend})"
        raise InputError.at(Path(path), message) if path is not None else InputError(message)


def open_network(path: str | Path, backend: str = "torch", device: str = "cpu", precision: str = "auto") -> Network:
    """The network in ``path`` on ``backend`` (the file kind must suit the backend);
    ``precision``: see :data:`~dccnn_deploy.runtime.backends.PRECISIONS` (``bf16`` only with
    the torch backend; exported graphs and engines keep the precision they were built with)."""
    p = Path(path)
    check_precision(precision, backend, p)
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
        return Network(TorchBackend(bundle.model, device, precision=precision), bundle.settings, str(p), bundle.sha256,
                       fit_divisor=bundle.model.config.divisor)
    if kind == ".onnx":
        try:
            ort_backend = OnnxRuntimeBackend(p, device)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own error types
            if type(exc).__name__ == "BackendUnavailable":
                raise
            raise InputError.at(p, f"ONNX Runtime cannot load it ({type(exc).__name__})") from None
        check_onnx_contract(ort_backend.session, p)
        return Network(ort_backend, PreprocessSettings.from_metadata(ort_backend.metadata, p), str(p), file_sha256(p))
    sidecar = p.with_name(p.name + ".json")
    if not sidecar.is_file():
        raise InputError.at(p, f"engine sidecar {sidecar.name} not found (written by dccnn build-engine)")
    info = json.loads(sidecar.read_text())
    settings = PreprocessSettings.from_metadata({**info.get("onnx_metadata", {}), "grid_shape": info.get("grid_shape")}, p)
    return Network(TensorRTBackend(p, device), settings, str(p), file_sha256(p))
