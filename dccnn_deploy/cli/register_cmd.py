"""``dccnn register MOVING FIXED -o OUT``: one registration (a thin layer over the Python API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from dccnn_deploy.cli.common import StageProgress, console, user_errors
from dccnn_deploy.io.errors import InputError

if TYPE_CHECKING:
    from concurrent.futures import Future

    from rich.table import Table

    from dccnn_deploy.io.image import Volume

    from dccnn_deploy.registration.pipeline import RegisterOptions
from dccnn_deploy.cli.guard import claimed_output, report_warnings


def options_from_cli(
    model: Optional[Path], backend: Optional[str], device: str, refine: int | str, no_affine: bool, overwrite: bool,
    moving_labels: Optional[Path] = None, fixed_labels: Optional[Path] = None,
    grid: Optional[str] = None, spacing: Optional[float] = None, outputs: Optional[str] = None,
    similarity: str = "auto", passes: Optional[int] = None, precision: str = "auto",
) -> "RegisterOptions":
    """RegisterOptions from the command line; the model is resolved as the API does (the shipped
    default when ``--model`` is not given, none with ``--model none``). Checked at once."""
    from dccnn_deploy.models import resolve_model
    from dccnn_deploy.registration.pipeline import RegisterOptions
    from dccnn_deploy.runtime.collector import resume_collection

    resume_collection()  # torch and the pipeline are imported: freeze them, collect from here on
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
    opts = RegisterOptions(
        model=resolve_model(str(model) if model is not None else None), backend=backend, device=device,
        precision=precision, refine=refine, similarity=similarity, passes=passes, affine=not no_affine, overwrite=overwrite,
        moving_labels=str(moving_labels) if moving_labels else None,
        fixed_labels=str(fixed_labels) if fixed_labels else None,
        outputs=outputs, **extra,
    )
    opts.check()
    return opts


#: heap a registration's arrays take (bytes per voxel of the two images, plus the network's and
#: the affine stage's): Colin27 -> ICBM 2009c at 1 mm (15.6 M voxels) faulted in ~650 MB
HEAP_BYTES_PER_VOXEL = 32
HEAP_BYTES_BASE = 128 << 20


def heap_estimate(*volumes: "Volume") -> int:
    """Heap bytes that registering ``volumes`` (moving, fixed) is expected to touch."""
    return HEAP_BYTES_BASE + HEAP_BYTES_PER_VOXEL * sum(int(v.data.size) for v in volumes)


def read_inputs(moving: Path, fixed: Path) -> "Future[tuple[Volume, Volume]]":
    """Read and check the two images on a thread, started before the pipeline (and torch) is
    imported: decompressing them overlaps the ~1.5-2 s of one core that importing torch takes.
    The same thread then faults in the heap the registration will need
    (:func:`~dccnn_deploy.runtime.allocator.prefault_heap`), still beside the import."""
    from concurrent.futures import ThreadPoolExecutor

    from dccnn_deploy.io.image import load_volume
    from dccnn_deploy.runtime.allocator import prefault_heap

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dccnn-read")
    try:
        reading = pool.submit(lambda: (load_volume(moving), load_volume(fixed)))
        pool.submit(lambda: reading.exception() is None and prefault_heap(heap_estimate(*reading.result())))
        return reading
    finally:
        pool.shutdown(wait=False)


def input_handling(report: dict) -> list[str]:
    """What the pipeline did to the inputs before the network (report.json), one phrase each:
    an inverted bright background, a head stripped, one image mapped into the other's contrast, both
    cut to their common field of view, a refinement."""
    done = [f"{side} image: bright background, registered inverted" for side in report.get("bright_background_inverted") or []]
    done += [f"{side} head stripped for the network" for side in report.get("network_input_stripped") or []]
    contrast = report.get("contrast") or {}
    if contrast.get("mapped"):
        side = contrast.get("mapped_image", "moving")
        done.append(f"contrasts differ: the {side} image mapped into the other's contrast ({contrast.get('map')})")
    view = report.get("field_of_view") or {}
    if view.get("cut_to_common_view"):
        shares = {side: view.get(f"{side}_tissue_outside_other_view", 0.0) for side in ("moving", "fixed")}
        side = max(shares, key=shares.get)
        done.append(f"{100 * shares[side]:.0f} % of the {side} image's tissue outside the other's field of view: "
                    "both cut to the common view for the network")
    if report.get("refine"):
        done.append(f"refined ({report['refine']['preset']}, {report['refine']['similarity']})")
    return done


def summary_table(report: dict) -> "Table":
    """The key figures of one report.json as a Rich table; its caption says how the inputs were
    handled (:func:`input_handling`)."""
    from rich.table import Table

    table = Table(title="registration summary", caption="; ".join(input_handling(report)) or None)
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("affine", justify="right")
    table.add_column("final", justify="right")
    sim = report["similarity"]
    for key, name in (("ncc", "NCC"), ("local_ncc", "local NCC (9³)"), ("ssim", "SSIM")):
        table.add_row(name, *(f"{sim[s][key]:.4f}" for s in ("before", "after_affine", "after")))
    mi = report.get("sanity", {}).get("mutual_information")
    if mi:  # the measure that reads across contrasts (T2 against T1: NCC can fall while MI rises)
        table.add_row("mutual information", *(f"{mi[s]:.4f}" for s in ("none", "affine", "final")))
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


def run_and_report(moving, fixed, out: Path, opts: "RegisterOptions", quiet: bool, as_json: bool) -> dict:
    """Register, write the outputs, and tell the user: a summary table, the report as JSON
    (``as_json``, on stdout; progress on stderr), or nothing but errors (``quiet``)."""
    from dccnn_deploy.registration.pipeline import register_files

    with StageProgress(quiet=quiet, to_stderr=as_json) as progress:
        report = register_files(moving, fixed, out, opts, progress=progress)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=float))
    elif not quiet:
        console.print(summary_table(report))
        qc = out / "qc.png"
        console.print(f"outputs in [bold]{out}[/]" + (f"; look at [bold]{qc}[/]" if qc.is_file() else ""))
    return report


def register(
    moving: Path = typer.Argument(..., help="Moving image (.nii, .nii.gz, .mgz)."),
    fixed: Path = typer.Argument(..., help="Fixed image (.nii, .nii.gz, .mgz)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder."),
    model: Optional[Path] = typer.Option(
        None, "--model", help="Checkpoint (.pt), .onnx or .engine; default: the shipped model; 'none': no network."
    ),
    backend: Optional[str] = typer.Option(None, help="torch | onnxruntime | tensorrt (default: from the model file)."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    precision: str = typer.Option(
        "auto", help="Torch network arithmetic: auto (bfloat16 convolutions on CPUs with native bfloat16), fp32, bf16."
    ),
    refine: str = typer.Option(
        "auto", help="Instance optimisation after the network: auto (a short one only when the contrasts differ), a preset (fast: 1 network pass + refine; accurate) or an iteration count (0: none)."
    ),
    similarity: str = typer.Option("auto", help="Refine similarity: lncc | mind | ngf | auto (mind when contrasts differ)."),
    passes: Optional[int] = typer.Option(
        None, help="Network passes, all run (default: the refine preset's, else up to the model's recommendation, ending at the first that no longer improves the local NCC; 1 when contrasts still differ after mapping)."
    ),
    moving_labels: Optional[Path] = typer.Option(None, help="Label map of the moving image."),
    fixed_labels: Optional[Path] = typer.Option(None, help="Label map of the fixed image (Dice/HD95)."),
    no_affine: bool = typer.Option(False, "--no-affine", help="Skip affine pre-alignment (already aligned)."),
    grid: Optional[str] = typer.Option(None, help="Model grid D,H,W without a model (default 80,96,112)."),
    spacing: Optional[float] = typer.Option(None, help="Model grid spacing in mm without a model (default 2)."),
    outputs: Optional[str] = typer.Option(
        None, help="Comma list of outputs to write: default (moved, fwd_warp, inv_warp, affine, qc, report; moved_labels with labels), all, or names, e.g. default,jacobian,fwd_transform; see the README."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    as_json: bool = typer.Option(False, "--json", help="Print the report (report.json) on stdout."),
    strict: bool = typer.Option(False, "--strict", help="Exit with code 3 when the geometry checks warn."),
) -> None:
    """Register MOVING to FIXED: moved image, forward/inverse ITK warps, affine, QC, report (--outputs all: also the .h5 composites, Jacobian, inverse-moved image)."""
    with user_errors():
        reading = read_inputs(moving, fixed)
        opts = options_from_cli(
            model, backend, device, refine, no_affine, overwrite, moving_labels, fixed_labels, grid, spacing, outputs,
            similarity, passes, precision,
        )
        moving_volume, fixed_volume = reading.result()
        with claimed_output(out, overwrite):
            report = run_and_report(moving_volume, fixed_volume, out, opts, quiet, as_json)
    report_warnings(report.get("warnings", []), strict)
