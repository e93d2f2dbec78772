"""The shipped default model (``models/`` in the source tree, packaged with the wheel)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "dccnn-default.pt"


def model_dirs() -> list[Path]:
    """Where shipped models are looked for: $DCCNN_MODELS, the package, the source tree."""
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
