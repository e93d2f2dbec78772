"""Parity and latency of an exported graph against the PyTorch model (or any two backends)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dccnn_deploy.runtime.backends import Backend, OnnxRuntimeBackend, TorchBackend


@dataclass
class VerifyReport:
    """Max |candidate - reference| of each displacement (voxels) and median run times (s)."""

    reference: str
    candidate: str
    max_abs_forward: float
    max_abs_inverse: float
    reference_seconds: float
    candidate_seconds: float

    @property
    def max_abs(self) -> float:
        return max(self.max_abs_forward, self.max_abs_inverse)


def timed_run(
    backend: Backend, moving: np.ndarray, fixed: np.ndarray, repeats: int = 1
) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    """Outputs of one warm-up run of ``backend`` and the median time (s) of ``repeats`` more."""
    out = backend.run(moving, fixed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend.run(moving, fixed)
        times.append(time.perf_counter() - start)
    return out, statistics.median(times) if times else float("nan")


def compare_backends(
    reference: Backend, candidate: Backend, moving: np.ndarray, fixed: np.ndarray, repeats: int = 1
) -> VerifyReport:
    """Run both backends on ``(D, H, W)`` ``moving``/``fixed``; see :class:`VerifyReport`."""
    (ref_fwd, ref_inv), ref_s = timed_run(reference, moving, fixed, repeats)
    (cand_fwd, cand_inv), cand_s = timed_run(candidate, moving, fixed, repeats)
    return VerifyReport(
        reference=reference.name,
        candidate=candidate.name,
        max_abs_forward=float(np.abs(cand_fwd - ref_fwd).max()),
        max_abs_inverse=float(np.abs(cand_inv - ref_inv).max()),
        reference_seconds=ref_s,
        candidate_seconds=cand_s,
    )


def verify_onnx(
    onnx_path: str | Path, model, moving: np.ndarray, fixed: np.ndarray, repeats: int = 1,
    device: str = "cpu",
) -> VerifyReport:
    """ONNX Runtime (``device``) on ``onnx_path`` vs ``model`` in PyTorch on the CPU.

    ``model`` runs with its current sampler; inputs are ``(D, H, W)`` float32 on the export grid.
    """
    return compare_backends(
        TorchBackend(model, "cpu"), OnnxRuntimeBackend(onnx_path, device), moving, fixed, repeats
    )
