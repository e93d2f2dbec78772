"""Latency, peak memory and parity of every available backend (``dccnn benchmark``).

Each backend runs in its own child process (``python -m dccnn_deploy.runtime.benchmark``) so
its peak RSS is its own; outputs are compared with the torch backend's, as displacements and as
the tissue-class Dice of the forward field (:func:`~dccnn_deploy.metrics.class_dice`).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class BenchmarkRow:
    backend: str
    precision: str
    median_seconds: float
    peak_rss_mb: float
    max_abs_vs_torch: float | None
    tissue_dice: float | None = None
    note: str = ""


def _child(model: str, backend: str, device: str, inputs: str, outputs: str, repeats: int, precision: str) -> dict:
    """Runs in the child: open, warm up, time ``repeats`` runs, save the displacements. The torch
    backend runs at ``precision`` (``fp32`` / ``bf16``); exported files keep their own."""
    from dccnn_deploy.runtime.loading import open_network

    data = np.load(inputs)
    net = open_network(model, backend, device, precision if backend == "torch" else "auto")
    net.backend.run(data["moving"], data["fixed"])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fwd, inv = net.backend.run(data["moving"], data["fixed"])
        times.append(time.perf_counter() - start)
    np.savez(outputs, forward=fwd, inverse=inv)
    return {"median_seconds": float(np.median(times)), "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM (ru_maxrss would include the parent's peak before exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_backend(model: Path, backend: str, device: str, moving: np.ndarray, fixed: np.ndarray,
                repeats: int, workdir: Path, precision: str = "fp32") -> tuple[dict, dict]:
    """(timing dict, outputs npz) of one backend in a child process; raises RuntimeError on failure."""
    inputs = workdir / "inputs.npz"
    if not inputs.exists():
        np.savez(inputs, moving=moving, fixed=fixed)
    outputs = workdir / f"{backend}-{device}-{precision}-{Path(model).stem}.npz"
    args = json.dumps([str(model), backend, device, str(inputs), str(outputs), repeats, precision])
    res = subprocess.run([sys.executable, "-m", "dccnn_deploy.runtime.benchmark", args], capture_output=True, text=True)
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines() or ["failed"]
        raise RuntimeError(lines[-1])
    return json.loads(res.stdout.strip().splitlines()[-1]), dict(np.load(outputs))


def benchmark(runs: list[tuple[Path, str, str, str]], moving: np.ndarray, fixed: np.ndarray, repeats: int) -> list[BenchmarkRow]:
    """``runs``: (model file, backend, device, precision label); the first must be torch at
    ``fp32`` (the reference); a torch run's label is its precision (``fp32`` / ``bf16``)."""
    from dccnn_deploy.metrics import class_dice  # here, not at import: the timed children stay lean
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for model, backend, device, precision in runs:
            try:
                timing, out = run_backend(model, backend, device, moving, fixed, repeats, Path(tmp), precision)
            except RuntimeError as exc:
                rows.append(BenchmarkRow(f"{backend}-{device}", precision, float("nan"), float("nan"), None, note=str(exc)))
                continue
            if reference is None:
                reference = out
            diff = max(float(np.abs(out[k] - reference[k]).max()) for k in ("forward", "inverse"))
            rows.append(BenchmarkRow(f"{backend}-{device}", precision, timing["median_seconds"], timing["peak_rss_mb"],
                                     diff, class_dice(out["forward"], moving, fixed)))
    return rows


if __name__ == "__main__":
    print(json.dumps(_child(*json.loads(sys.argv[1]))))
