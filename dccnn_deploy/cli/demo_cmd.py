"""``dccnn demo``: register the bundled real brain pair and say where the results are."""

from __future__ import annotations

from pathlib import Path

import typer

from dccnn_deploy.cli.common import console, user_errors
from dccnn_deploy.cli.register_cmd import options_from_cli, run_and_report
from dccnn_deploy.sample import SAMPLE_DIR, SAMPLE_FIXED, SAMPLE_MOVING

FALLBACK_REFINE = 80


def demo(
    out: Path = typer.Option(Path("dccnn-demo"), "-o", "--out", help="Output folder."),
    refine: int = typer.Option(-1, help="Refinement iterations (default: none with a model, 80 without)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier demo's outputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    as_json: bool = typer.Option(False, "--json", help="Print the report (report.json) on stdout."),
) -> None:
    """Register Colin27 (moved in scanner space) to the ICBM 2009a template, both bundled."""
    from dccnn_deploy.models import default_model_path

    with user_errors():
        say = (lambda _m: None) if quiet or as_json else (lambda m: console.print(m, soft_wrap=True, highlight=False))
        iterations = refine
        if default_model_path() is None and refine < 0:
            say(f"no trained default model in this install: refining from the identity ({FALLBACK_REFINE} iterations)")
            iterations = FALLBACK_REFINE
        opts = options_from_cli(None, None, "cpu", max(iterations, 0), False, overwrite)
        say(f"moving: {SAMPLE_MOVING.name}  fixed: {SAMPLE_FIXED.name}  (licences: {SAMPLE_DIR / 'LICENSE.txt'})")
        run_and_report(SAMPLE_MOVING, SAMPLE_FIXED, out, opts, quiet, as_json)
