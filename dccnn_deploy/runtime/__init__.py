"""Inference backends (PyTorch, ONNX Runtime, TensorRT) behind one ``Backend`` interface."""

from dccnn_deploy.runtime.backends import (
    BACKENDS,
    Backend,
    BackendUnavailable,
    OnnxRuntimeBackend,
    TensorRTBackend,
    TorchBackend,
    make_backend,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailable",
    "OnnxRuntimeBackend",
    "TensorRTBackend",
    "TorchBackend",
    "make_backend",
]
