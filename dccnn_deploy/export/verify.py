"""Parity and latency of an exported graph against the PyTorch model (or any two backends).

Besides the largest displacement difference, each comparison reports how much the
difference matters for a registration: the mean Dice of three intensity classes of the moving
image warped onto the fixed image's classes (a label-free proxy of CSF / grey / white matter
on T1), with the reference's and the candidate's forward field. ``--fp16`` export targets a
Dice change of at most 0.005.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dccnn_deploy.metrics import class_dice
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
    reference_dice: float = float("nan")
    candidate_dice: float = float("nan")

    @property
    def dice_change(self) -> float:
        """|Dice(candidate) - Dice(reference)| of the tissue-class proxy (see module doc)."""
        return abs(self.candidate_dice - self.reference_dice)

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
        reference_dice=class_dice(ref_fwd, moving, fixed),
        candidate_dice=class_dice(cand_fwd, moving, fixed),
    )


def verify_onnx(
    onnx_path: str | Path, model, moving: np.ndarray, fixed: np.ndarray, repeats: int = 1,
    device: str = "cpu",
) -> VerifyReport:
    """ONNX Runtime (``device``) on ``onnx_path`` vs ``model`` in PyTorch on the CPU.

    ``model`` runs with its current sampler; inputs are ``(D, H, W)`` float32 on the export grid.
    """
    return compare_backends(
        TorchBackend(model, "cpu", precision="fp32"), OnnxRuntimeBackend(onnx_path, device), moving, fixed, repeats
    )
