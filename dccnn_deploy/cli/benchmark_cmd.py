"""``dccnn benchmark``: every available backend and precision, one table (and CSV)."""

from __future__ import annotations

import csv
import math
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from dccnn_deploy.checkpoint import load_model
from dccnn_deploy.cli.common import console, user_errors
from dccnn_deploy.io import atomic_write


def _available_cuda() -> bool:
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        return False


def benchmark(
    checkpoint: Path = typer.Argument(..., help="Trained checkpoint (.pt)."),
    repeats: int = typer.Option(3, help="Timed runs per backend (median reported)."),
    fp16: bool = typer.Option(True, "--fp16/--no-fp16", help="Also export and time an fp16 ONNX."),
    engine: Optional[Path] = typer.Option(None, help="A TensorRT engine to include (needs a GPU)."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write the table as CSV."),
) -> None:
    """Latency (median), peak RSS, max |Δ| vs torch and tissue-class Dice of torch / ONNX Runtime (CPU, CUDA) / TensorRT."""
    from dccnn_deploy.cli.export_cmd import bundled_pair_on_grid
    from dccnn_deploy.export import export_onnx
    from dccnn_deploy.runtime.backends import cpu_has_native_bf16
    from dccnn_deploy.runtime.benchmark import benchmark as run_all

    with user_errors():
        bundle = load_model(checkpoint)
        with tempfile.TemporaryDirectory() as tmp, console.status("exporting and timing backends"):
            runs = [(checkpoint, "torch", "cpu", "fp32")]
            if cpu_has_native_bf16():  # what `dccnn register` runs here (--precision auto)
                runs.append((checkpoint, "torch", "cpu", "bf16"))
            onnx32 = Path(tmp) / "fp32.onnx"
            export_onnx(bundle.model, bundle.grid_shape, onnx32)
            runs.append((onnx32, "onnxruntime", "cpu", "fp32"))
            if fp16:
                onnx16 = Path(tmp) / "fp16.onnx"
                export_onnx(bundle.model, bundle.grid_shape, onnx16, fp16=True)
                runs.append((onnx16, "onnxruntime", "cpu", "fp16"))
            if _available_cuda():
                runs.append((onnx32, "onnxruntime", "cuda", "fp32"))
            if engine is not None:
                runs.append((engine, "tensorrt", "cuda", "engine"))
            rows = run_all(runs, *bundled_pair_on_grid(bundle.settings), repeats)
        if csv_out is not None:
            def write(tmp_path: Path) -> None:
                with open(tmp_path, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
                    w.writeheader()
                    w.writerows(asdict(r) for r in rows)

            atomic_write(csv_out, write, overwrite=True)
    table = Table(title=f"benchmark: {checkpoint.name}, grid {bundle.grid_shape}, {repeats} runs")
    table.add_column("backend", no_wrap=True)
    for col in ("precision", "median s", "peak MB", "max |Δ| vox", "tissue Dice", "note"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.backend, r.precision, "-" if math.isnan(r.median_seconds) else f"{r.median_seconds:.2f}",
                      "-" if math.isnan(r.peak_rss_mb) else f"{r.peak_rss_mb:.0f}",
                      "-" if r.max_abs_vs_torch is None else f"{r.max_abs_vs_torch:.1e}",
                      "-" if r.tissue_dice is None else f"{r.tissue_dice:.4f}", r.note)
    console.print(table)
