"""Checkpoints: one safe format for training, registration and export.

A checkpoint is a ``torch.save``d dict of tensors and plain values only, loaded with
``torch.load(weights_only=True)`` (never arbitrary unpickling):

* ``format``: ``"dccnn-deploy/1"``; ``model_config``: :class:`ModelConfig` as a dict;
* ``state_dict``: the network's weights;
* ``metadata``: ``grid_shape`` (D, H, W), ``spacing_mm``, ``normalisation`` (dict),
  ``code_version``, and anything else training records (validation figures, data, steps);
* training state when saved by the trainer (``optimizer``, ``step``, ``rng``, ``train_config``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dccnn_deploy import __version__
from dccnn_deploy.config import ModelConfig
from dccnn_deploy.io.atomic import atomic_write
from dccnn_deploy.io.errors import InputError
from dccnn_deploy.model import DCCNNLSTMReg
from dccnn_deploy.preprocess.settings import DEFAULT_GRID, DEFAULT_PERCENTILES, DEFAULT_SPACING_MM, PreprocessSettings

FORMAT = "dccnn-deploy/1"


@dataclass
class ModelBundle:
    """A network ready to run plus what the pipeline needs to feed it."""

    model: DCCNNLSTMReg
    grid_shape: tuple[int, int, int]
    spacing_mm: float
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    sha256: str | None = None

    @property
    def settings(self) -> PreprocessSettings:
        """Grid and normalisation the network expects (from the checkpoint's metadata)."""
        return PreprocessSettings.from_metadata(self.metadata, self.path or "checkpoint")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_metadata(grid_shape=DEFAULT_GRID, spacing_mm: float = DEFAULT_SPACING_MM) -> dict[str, Any]:
    return {
        "grid_shape": [int(n) for n in grid_shape],
        "spacing_mm": float(spacing_mm),
        "normalisation": {"method": "percentile", "lower": DEFAULT_PERCENTILES[0], "upper": DEFAULT_PERCENTILES[1]},
        "code_version": __version__,
    }


def save_checkpoint(
    path: str | os.PathLike,
    model: DCCNNLSTMReg,
    metadata: dict[str, Any],
    overwrite: bool = False,
    **training_state: Any,
) -> Path:
    """Write a checkpoint atomically (``training_state``: optimizer, step, rng, train_config...)."""
    payload = {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata),
        **training_state,
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), overwrite=overwrite)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dict, loaded safely; :class:`InputError` naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise InputError.at(p, "checkpoint not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
        raise InputError.at(
            p, f"unreadable checkpoint: corrupt, not a torch file, or holds more than tensors ({type(exc).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError.at(p, f"not a dccnn-deploy checkpoint (expected format {FORMAT!r})")
    return payload


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ModelBundle:
    """Build the network of a checkpoint with its weights, in eval mode."""
    payload = read_checkpoint(path)
    try:
        model = DCCNNLSTMReg(ModelConfig.from_dict(payload["model_config"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError.at(path, f"checkpoint does not match the network ({exc})") from None
    meta = {**default_metadata(), **payload.get("metadata", {})}
    return ModelBundle(
        model=model.to(device).eval(),
        grid_shape=tuple(int(n) for n in meta["grid_shape"]),
        spacing_mm=float(meta["spacing_mm"]),
        metadata=meta,
        path=str(path),
        sha256=file_sha256(path),
    )


RELEASE_KEYS = ("format", "model_config", "state_dict", "metadata", "train_config")


def release_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False, **metadata: Any
) -> Path:
    """Write ``src`` without its training state (optimizer, RNG, scaler, sampler) to ``dst``.

    Keeps the weights, the model and training configs and the metadata (plus ``metadata``
    given here and ``released_from``: the source's SHA-256): what registration and export need,
    and how the model was made. Atomic; ``OutputExistsError`` unless ``overwrite``.
    """
    payload = {k: v for k, v in read_checkpoint(src).items() if k in RELEASE_KEYS}
    payload["metadata"] = {**payload.get("metadata", {}), **metadata, "released_from": file_sha256(src)}
    return atomic_write(dst, lambda tmp: torch.save(payload, tmp), overwrite=overwrite)
