"""Which model a registration uses: the one place the CLI and the Python API resolve it.

The shipped default model, ``dccnn-default.pt``, is kept once in git, in ``models/`` of the source
tree; building a wheel copies ``models/*.pt`` and their cards into the package data
(``dccnn_deploy/data/models/``, see ``setup.py``), so an installed package finds it there.
``$DCCNN_MODELS`` can name another folder that holds one. The backend follows the model file's kind unless one is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

from dccnn_deploy.io.errors import InputError

DEFAULT_MODEL_NAME = "dccnn-default.pt"
#: ``--model none`` / ``model=False``: no network (refinement from the identity).
NO_MODEL = "none"
#: backend of each model file kind, and every backend there is
KIND_BACKENDS = {".pt": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt"}
BACKENDS = ("torch", "onnxruntime", "tensorrt")


def model_dirs() -> list[Path]:
    """Where shipped models are looked for: $DCCNN_MODELS, the package data, the source tree."""
    here = Path(__file__).resolve().parent
    dirs = [here / "data" / "models", here.parent / "models"]
    if os.environ.get("DCCNN_MODELS"):
        dirs.insert(0, Path(os.environ["DCCNN_MODELS"]))
    return dirs


def default_model_path() -> Path | None:
    """The default checkpoint, or None when no trained model ships with this install."""
    for d in model_dirs():
        candidate = d / DEFAULT_MODEL_NAME
        if candidate.is_file():
            return candidate
    return None


def resolve_model(model: str | os.PathLike | bool | None) -> str | None:
    """The model file to use: ``None`` -> the shipped default (None when there is none);
    ``False`` or ``"none"`` -> None (no network); anything else -> that path (checked when opened)."""
    if model is False or (isinstance(model, str) and model.lower() == NO_MODEL):
        return None
    if model is None or model is True:
        found = default_model_path()
        return str(found) if found else None
    if not isinstance(model, (str, os.PathLike)):
        raise InputError(f"model: expected a path to a .pt, .onnx or .engine file, got {type(model).__name__}")
    return os.fspath(model)


def resolve_backend(model: str | os.PathLike, backend: str | None) -> str:
    """``backend``, or the one that runs ``model``'s file kind when it is None/``"auto"``.

    Unknown backend names raise a one-line :class:`InputError`.
    """
    if backend not in (None, "auto") and backend not in BACKENDS:
        raise InputError(f"--backend {backend!r}: unknown backend; choose one of {', '.join(BACKENDS)}")
    if backend in (None, "auto"):
        kind = Path(model).suffix.lower()
        if kind not in KIND_BACKENDS:
            raise InputError.at(model, f"unknown model file type {kind!r} (.pt checkpoint, .onnx or .engine)")
        return KIND_BACKENDS[kind]
    return backend
