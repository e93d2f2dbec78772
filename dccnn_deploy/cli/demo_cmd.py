"""``dccnn demo``: register the bundled real brain pair and say where the results are."""

from __future__ import annotations

from pathlib import Path

import typer

from dccnn_deploy.cli.common import console, user_errors
from dccnn_deploy.cli.register_cmd import options_from_cli, summary_table
from dccnn_deploy.registration import register_files

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "sample"
SAMPLE_MOVING = SAMPLE_DIR / "colin27_brain_2mm.nii.gz"
SAMPLE_FIXED = SAMPLE_DIR / "icbm2009a_brain_2mm.nii.gz"
FALLBACK_REFINE = 80


def demo(
    out: Path = typer.Option(Path("dccnn-demo"), "-o", "--out", help="Output folder."),
    refine: int = typer.Option(-1, help="Refinement iterations (default: none with a model, 80 without)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier demo's outputs."),
) -> None:
    """Register Colin27 (moved in scanner space) to the ICBM 2009a template, both bundled."""
    with user_errors():
        opts = options_from_cli(None, "torch", "cpu", max(refine, 0), False, overwrite)
        if opts.model is None and refine < 0:
            console.print(f"no trained default model in this install: refining from the identity ({FALLBACK_REFINE} iterations)")
            opts.refine = FALLBACK_REFINE
        console.print(f"moving: {SAMPLE_MOVING.name}  fixed: {SAMPLE_FIXED.name}  (licences: {SAMPLE_DIR / 'LICENSE.txt'})")
        with console.status("registering") as status:
            report = register_files(SAMPLE_MOVING, SAMPLE_FIXED, out, opts, progress=lambda m: status.update(m))
    console.print(summary_table(report))
    console.print(f"outputs in [bold]{out}[/]; look at [bold]{out / 'qc.png'}[/]")
