"""``dccnn batch``: register a study; resumable, shardable, one failure does not stop the rest."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from dccnn_deploy.cli.common import USER_ERRORS, console, fail, user_errors
from dccnn_deploy.cli.register_cmd import options_from_cli
from dccnn_deploy.io import atomic_write
from dccnn_deploy.registration import register_files
from dccnn_deploy.registration.report_html import build_report
from dccnn_deploy.registration.batch import Pair, pairs_from_csv, pairs_from_folder, parse_shard, shard

SUMMARY_COLUMNS = ["pair", "status", "ncc_affine", "ncc_final", "folding_percent", "inverse_consistency",
                   "dice_affine", "dice_final", "seconds", "error"]


def _row(pair: Pair, report: dict | None, error: str = "", status: str = "ok") -> dict:
    row = {c: "" for c in SUMMARY_COLUMNS}
    row.update(pair=pair.name, status=status, error=error)
    if report:
        sim, fields = report["similarity"], report["fields"]
        row.update(
            ncc_affine=f"{sim['after_affine']['ncc']:.4f}", ncc_final=f"{sim['after']['ncc']:.4f}",
            folding_percent=f"{max(fields['folding_percent_forward'], fields['folding_percent_inverse']):.4f}",
            inverse_consistency=f"{fields.get('inverse_consistency_voxels', {}).get('mean', 0.0):.4f}",
            seconds=f"{report['seconds']['total']:.1f}",
        )
        if "labels" in report:
            row.update(dice_affine=f"{report['labels']['after_affine']['dice_mean']:.4f}",
                       dice_final=f"{report['labels']['after']['dice_mean']:.4f}")
    return row


def _write_summary(path: Path, rows: list[dict]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write, overwrite=True)


def batch(
    out: Path = typer.Option(..., "-o", "--out", help="Study output folder (one sub-folder per pair)."),
    pairs: Optional[Path] = typer.Option(None, help="CSV: moving,fixed[,moving_labels,fixed_labels]."),
    moving_dir: Optional[Path] = typer.Option(None, help="Folder of moving images (with --template)."),
    template: Optional[Path] = typer.Option(None, help="Fixed image for every moving image of --moving-dir."),
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint; default: the shipped model."),
    backend: Optional[str] = typer.Option(None, help="torch | onnxruntime | tensorrt (default: from the model file)."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    refine: int = typer.Option(0, help="Instance-optimisation iterations per pair."),
    shard_spec: Optional[str] = typer.Option(None, "--shard", help="i/n: this job's share of the pairs."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo pairs that already finished."),
) -> None:
    """Register every pair of a study; finished pairs are skipped, failures reported at the end."""
    with user_errors():
        if (pairs is None) == (moving_dir is None) or (moving_dir is not None and template is None):
            fail("give either --pairs CSV, or --moving-dir DIR with --template FIXED")
        jobs = pairs_from_csv(pairs) if pairs else pairs_from_folder(moving_dir, template)
        jobs = shard(jobs, *parse_shard(shard_spec))
        out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("registering", total=len(jobs))
        for pair in jobs:
            progress.update(task, description=pair.name)
            report_path = out / pair.name / "report.json"
            if report_path.is_file() and not overwrite:
                rows.append(_row(pair, json.loads(report_path.read_text()), status="done before"))
            else:
                opts = options_from_cli(model, backend, device, refine, False, overwrite, pair.moving_labels, pair.fixed_labels)
                try:
                    rows.append(_row(pair, register_files(pair.moving, pair.fixed, out / pair.name, opts)))
                except USER_ERRORS as exc:
                    rows.append(_row(pair, None, error=" ".join(str(exc).split()), status="failed"))
                except Exception as exc:  # noqa: BLE001 - one bad pair must not stop the study
                    rows.append(_row(pair, None, error=f"{type(exc).__name__}: {' '.join(str(exc).split())}", status="failed"))
            progress.advance(task)
    _write_summary(out / "summary.csv", rows)
    report_page = build_report(out, rows)
    table = Table(title=f"batch summary ({out / 'summary.csv'})")
    for col in SUMMARY_COLUMNS:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(row[c] for c in SUMMARY_COLUMNS), style="red" if row["status"] == "failed" else None)
    console.print(table)
    console.print(f"study report: [bold]{report_page}[/]")
    failed = sum(r["status"] == "failed" for r in rows)
    if failed:
        fail(f"{failed} of {len(rows)} pairs failed (see {out / 'summary.csv'})", code=1)
