"""``dccnn register MOVING FIXED -o OUT``: one registration with a progress display."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from dccnn_deploy.cli.common import console, user_errors
from dccnn_deploy.io import InputError
from dccnn_deploy.models import default_model_path
from dccnn_deploy.registration import RegisterOptions, register_files


def options_from_cli(
    model: Optional[Path], backend: str, device: str, refine: int | str, no_affine: bool, overwrite: bool,
    moving_labels: Optional[Path] = None, fixed_labels: Optional[Path] = None,
    grid: Optional[str] = None, spacing: Optional[float] = None, similarity: str = "auto",
) -> RegisterOptions:
    """RegisterOptions with the shipped default model when ``--model`` is not given."""
    chosen = model if model is not None else default_model_path()
    extra = {}
    if grid:
        try:
            shape = tuple(int(n) for n in grid.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 8:
            raise InputError(f"--grid {grid!r}: expected three sizes >= 8, e.g. 80,96,112")
        extra["grid_shape"] = shape
    if spacing is not None:
        if spacing <= 0:
            raise InputError(f"--spacing {spacing}: must be > 0 mm")
        extra["spacing_mm"] = float(spacing)
    return RegisterOptions(
        model=str(chosen) if chosen else None, backend=backend, device=device, refine=refine, similarity=similarity,
        affine=not no_affine, overwrite=overwrite,
        moving_labels=str(moving_labels) if moving_labels else None,
        fixed_labels=str(fixed_labels) if fixed_labels else None,
        **extra,
    )


def summary_table(report: dict) -> Table:
    """The key figures of one report.json as a Rich table."""
    table = Table(title="registration summary")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("affine", justify="right")
    table.add_column("final", justify="right")
    sim = report["similarity"]
    for key, name in (("ncc", "NCC"), ("local_ncc", "local NCC (9³)"), ("ssim", "SSIM")):
        table.add_row(name, *(f"{sim[s][key]:.4f}" for s in ("before", "after_affine", "after")))
    if "labels" in report:
        lab = report["labels"]
        table.add_row("Dice (mean)", "", f"{lab['after_affine']['dice_mean']:.4f}", f"{lab['after']['dice_mean']:.4f}")
        table.add_row("HD95 mm (mean)", "", f"{lab['after_affine']['hd95_mean_mm']:.2f}", f"{lab['after']['hd95_mean_mm']:.2f}")
    fields = report["fields"]
    table.add_row("% J<=0 fwd / inv", "", "", f"{fields['folding_percent_forward']:.4f} / {fields['folding_percent_inverse']:.4f}")
    if "inverse_consistency_voxels" in fields:
        table.add_row("inverse consistency (vox)", "", "", f"{fields['inverse_consistency_voxels']['mean']:.4f}")
    table.add_row("time (s)", "", f"{report['seconds'].get('affine', 0):.1f}", f"{report['seconds']['total']:.1f}")
    return table


def register(
    moving: Path = typer.Argument(..., help="Moving image (.nii, .nii.gz, .mgz)."),
    fixed: Path = typer.Argument(..., help="Fixed image (.nii, .nii.gz, .mgz)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder."),
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint (.pt) or exported .onnx; default: the shipped model."),
    backend: str = typer.Option("torch", help="torch | onnxruntime | tensorrt."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    refine: str = typer.Option(
        "0", help="Instance optimisation after the network: a preset (fast, accurate) or an iteration count (0: none)."
    ),
    similarity: str = typer.Option("auto", help="Refine similarity: lncc | mind | ngf | auto (mind when contrasts differ)."),
    moving_labels: Optional[Path] = typer.Option(None, help="Label map of the moving image."),
    fixed_labels: Optional[Path] = typer.Option(None, help="Label map of the fixed image (Dice/HD95)."),
    no_affine: bool = typer.Option(False, "--no-affine", help="Skip affine pre-alignment (already aligned)."),
    grid: Optional[str] = typer.Option(None, help="Model grid D,H,W without a model (default 80,96,112)."),
    spacing: Optional[float] = typer.Option(None, help="Model grid spacing in mm without a model (default 2)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Register MOVING to FIXED: moved images, forward/inverse ITK warps, Jacobian, QC, report."""
    with user_errors():
        opts = options_from_cli(
            model, backend, device, refine, no_affine, overwrite, moving_labels, fixed_labels, grid, spacing,
            similarity,
        )
        with console.status("registering") as status:
            report = register_files(moving, fixed, out, opts, progress=lambda msg: status.update(msg))
    console.print(summary_table(report))
    console.print(f"outputs in [bold]{out}[/] (QC: {out / 'qc.png'})")
