"""What a model expects of its inputs, read from its metadata in one place.

A checkpoint's ``metadata`` (``grid_shape``, ``spacing_mm``, ``normalisation``), an ONNX file's
``metadata_props`` (strings: ``grid_shape`` "80,96,112", ``spacing`` "2.0", ``normalisation``
the checkpoint's dict as text) and a TensorRT engine's sidecar JSON all become one
:class:`PreprocessSettings`, which registration, export verification and ``export-raw`` use.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from typing import Any, Mapping

from dccnn_deploy.io.errors import InputError

DEFAULT_GRID = (80, 96, 112)
DEFAULT_SPACING_MM = 2.0
DEFAULT_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class PreprocessSettings:
    """Model grid (shape, isotropic spacing in mm), intensity percentiles of the normalisation and
    the network passes the model recommends for images of one contrast (``inference_passes``
    metadata, 1 when absent; :mod:`dccnn_deploy.runtime.passes`)."""

    grid_shape: tuple[int, int, int] = DEFAULT_GRID
    spacing_mm: float = DEFAULT_SPACING_MM
    lower_percentile: float = DEFAULT_PERCENTILES[0]
    upper_percentile: float = DEFAULT_PERCENTILES[1]
    inference_passes: int = 1

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], source: str | os.PathLike = "model") -> "PreprocessSettings":
        """Parse checkpoint, ONNX or engine metadata. ``grid_shape`` is required; a missing spacing
        or normalisation takes the default; unusable values raise a one-line :class:`InputError`
        naming ``source``."""
        if meta.get("grid_shape") in (None, "", "unknown"):
            raise InputError.at(source, "no grid_shape metadata (the model grid is unknown)")
        try:
            shape_value = meta["grid_shape"]
            if isinstance(shape_value, str):
                shape_value = shape_value.strip("[]() ").split(",")
            shape = tuple(int(n) for n in shape_value)
            spacing = meta.get("spacing_mm", meta.get("spacing"))
            spacing_mm = DEFAULT_SPACING_MM if spacing in (None, "unknown") else float(str(spacing).split(",")[0])
            lower, upper = _percentiles(meta.get("normalisation"))
            passes = meta.get("inference_passes")
            passes = 1 if passes in (None, "", "unknown") else int(passes)
        except (TypeError, ValueError, SyntaxError) as exc:
            raise InputError.at(source, f"no usable grid_shape/spacing/normalisation metadata ({exc})") from None
        if len(shape) != 3 or min(shape) < 1 or spacing_mm <= 0:
            raise InputError.at(source, f"grid metadata {shape} x {spacing_mm} mm is not a 3-D grid")
        if passes < 1:
            raise InputError.at(source, f"inference_passes metadata {passes} must be >= 1")
        return cls(shape, spacing_mm, lower, upper, passes)


def _percentiles(value: Any) -> tuple[float, float]:
    """``{"method": "percentile", "lower": .., "upper": ..}`` (or its text) -> (lower, upper)."""
    if value in (None, "", "unknown", "None"):
        return DEFAULT_PERCENTILES
    if isinstance(value, str):
        value = ast.literal_eval(value)
    if value.get("method", "percentile") != "percentile":
        raise ValueError(f"normalisation method {value.get('method')!r} is not supported")
    return float(value.get("lower", DEFAULT_PERCENTILES[0])), float(value.get("upper", DEFAULT_PERCENTILES[1]))
