"""``dccnn export`` (checkpoint -> verified static ONNX) and ``dccnn build-engine`` (ONNX -> TensorRT)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from dccnn_deploy.checkpoint import load_model
from dccnn_deploy.cli.common import console, fail, refuse_existing, user_errors

if TYPE_CHECKING:
    from dccnn_deploy.preprocess.settings import PreprocessSettings

FP16_DICE_TOLERANCE = 0.005


def bundled_pair_on_grid(settings: "PreprocessSettings") -> tuple[np.ndarray, np.ndarray]:
    """The bundled real brains prepared as `dccnn register` prepares them (verification inputs)."""
    from dccnn_deploy.io import load_volume
    from dccnn_deploy.preprocess.affine import register_affine
    from dccnn_deploy.registration.pipeline import prepare_pair
    from dccnn_deploy.sample import SAMPLE_FIXED, SAMPLE_MOVING

    moving, fixed = load_volume(SAMPLE_MOVING), load_volume(SAMPLE_FIXED)
    matrix = register_affine(moving.data, moving.affine, fixed.data, fixed.affine).matrix
    prepared = prepare_pair(moving, fixed, matrix, settings)
    return prepared.moving_g, prepared.fixed_g


def export(
    checkpoint: Path = typer.Argument(..., help="Trained checkpoint (.pt)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output .onnx file."),
    sampler: str = typer.Option("gather", help="gather (opset 17, TensorRT-safe) | gridsample (opset 20, opt-in)."),
    fp16: bool = typer.Option(False, "--fp16", help="fp16 weights/activations; coordinates stay fp32."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Compare ONNX Runtime with PyTorch on a real pair."),
    tolerance: float = typer.Option(0.01, help="Largest |displacement difference| (voxels) accepted for fp32."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
) -> None:
    """Unroll the cascade into one static ONNX graph, audit its ops for TensorRT, verify it."""
    from dccnn_deploy.export import export_onnx
    from dccnn_deploy.export.verify import verify_onnx

    with user_errors():
        refuse_existing(out, overwrite)
        bundle = load_model(checkpoint)
        meta = {"spacing": str(bundle.spacing_mm), "normalisation": str(bundle.metadata.get("normalisation")),
                "source_checkpoint_sha256": bundle.sha256,
                "inference_passes": str(bundle.metadata.get("inference_passes", 1))}
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(f"exporting {bundle.grid_shape} ({sampler}{', fp16' if fp16 else ''})")
            report = export_onnx(bundle.model, bundle.grid_shape, out, sampler=sampler, fp16=fp16, metadata=meta)
            progress.update(task, description="exported, ops audited for TensorRT", completed=1, total=1)
            parity = None
            if verify:
                vtask = progress.add_task("verifying with ONNX Runtime on the bundled real pair")
                bundle.model.sampler = sampler
                parity = verify_onnx(out, bundle.model, *bundled_pair_on_grid(bundle.settings))
                progress.update(vtask, completed=1, total=1)
    table = Table(title="export")
    for col in ("file", "size (MB)", "ops", "nodes", "opset", "max |Δ| vs torch (vox)"):
        table.add_column(col, justify="right")
    table.add_row(str(out), f"{report.size_bytes / 1e6:.2f}", str(len(report.op_histogram)),
                  str(sum(report.op_histogram.values())), str(report.opset),
                  f"{parity.max_abs:.2e}" if parity else "not verified")
    console.print(table)
    if parity is not None:  # also as one line: a narrow terminal may cut the table's cells
        console.print(f"ONNX Runtime vs PyTorch on the bundled pair: max |Δ| {parity.max_abs:.2e} voxel; tissue-class "
                      f"Dice {parity.reference_dice:.4f} → {parity.candidate_dice:.4f} (Δ {parity.dice_change:.4f})",
                      soft_wrap=True)
    if parity is not None and fp16 and parity.dice_change > FP16_DICE_TOLERANCE:
        console.print(f"[yellow]warning:[/] fp16 changes the tissue-class Dice by {parity.dice_change:.4f} "
                      f"(> {FP16_DICE_TOLERANCE}); prefer the fp32 export for this model")
    if parity is not None and not fp16 and parity.max_abs > tolerance:
        fail(f"{out}: ONNX Runtime differs from PyTorch by {parity.max_abs:.3g} voxel (> {tolerance})", code=1)


def build_engine(
    onnx_path: Path = typer.Argument(..., help="Exported .onnx."),
    out: Path = typer.Option(..., "-o", "--out", help="Output .engine (a .engine.json sidecar is written too)."),
    flavor: str = typer.Option("tensorrt", help="tensorrt (this GPU) | rtx (TensorRT for RTX, ahead of time)."),
    target: str = typer.Option("SM89", help="rtx: compute capabilities, comma-separated (SM75...SM121)."),
    fp16: bool = typer.Option(False, "--fp16", help="TensorRT fp16 flag (rtx: export with --fp16 instead)."),
    workspace: float = typer.Option(4.0, help="Builder workspace (GB)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing engine."),
) -> None:
    """Build a TensorRT engine from an exported ONNX model."""
    from dccnn_deploy.export.tensorrt_build import build_engine as build

    with user_errors():
        refuse_existing(out, overwrite)
        if not onnx_path.is_file():
            fail(f"{onnx_path}: not found")
        with console.status(f"building a {flavor} engine from {onnx_path.name}"):
            report = build(onnx_path, out, flavor=flavor, fp16=fp16, workspace_gb=workspace,
                           compute_capabilities=tuple(t.strip() for t in target.split(",")))
    table = Table(title="engine")
    for col in ("file", "size (MB)", "TensorRT", "targets", "build (s)"):
        table.add_column(col)
    table.add_row(str(out), f"{report.size_bytes / 1e6:.1f}", f"{report.info['tensorrt_module']} {report.info['tensorrt_version']}",
                  ",".join(report.info["targets"]), f"{report.seconds:.1f}")
    console.print(table)
