"""``dccnn report``: rebuild a study's ``summary.csv`` and ``report.html`` from its pair folders."""

from __future__ import annotations

from pathlib import Path

import typer

from dccnn_deploy.cli.common import console, fail
from dccnn_deploy.registration.batch import rebuild_summary
from dccnn_deploy.registration.report_html import Thresholds, build_report

_T = Thresholds()


def report(
    out_dir: Path = typer.Argument(..., help="Study output folder written by `dccnn batch`."),
    fold_threshold: float = typer.Option(_T.fold_percent, help="Flag 'folding' above this % of voxels with J<=0."),
    min_ncc_gain: float = typer.Option(_T.min_ncc_gain, help="Flag 'low similarity gain' when final-affine NCC is below this."),
    min_local_ncc_gain: float = typer.Option(_T.min_local_ncc_gain, help="... or the local NCC gain is below this."),
    min_affine_ncc: float = typer.Option(_T.min_affine_ncc, help="Flag 'affine failure' when the affine NCC is below this (or not improved)."),
    max_inverse_consistency: float = typer.Option(_T.max_inverse_consistency, help="Flag 'inverse consistency' above this mean error (voxels)."),
) -> None:
    """Rebuild OUT_DIR/summary.csv from every pair folder (all shards) and write OUT_DIR/report.html:
    one self-contained page with every pair, its inputs, metrics, flags and QC image."""
    if not out_dir.is_dir():
        fail(f"{out_dir}: not a folder")
    if not (out_dir / "summary.csv").is_file() and not any((p / "report.json").is_file() for p in out_dir.iterdir()):
        fail(f"{out_dir}: no summary.csv and no finished pairs (*/report.json)")
    thresholds = Thresholds(fold_threshold, min_ncc_gain, min_local_ncc_gain, min_affine_ncc, max_inverse_consistency)
    rows = rebuild_summary(out_dir)
    path = build_report(out_dir, rows, thresholds=thresholds)
    console.print(str(path), highlight=False, soft_wrap=True)
